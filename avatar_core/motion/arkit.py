"""ARKit-52 face units and head/eye Euler angles as captured by iPhone face-capture apps.

``ARKIT_NAMES`` are the 52 blendshape names in Apple's order, spelled as the built-in open
head spells them (camelCase: ``eyeBlinkLeft`` ... ``tongueOut``). "Left"/"Right" are the
subject's own left and right, as in ARKit.

Head and eye angles (Live Link Face ``HeadYaw, HeadPitch, HeadRoll`` and per-eye
``Yaw, Pitch, Roll``, radians) become axis-angle joint rotations in the head frame
(metres, Y up, the face looking toward +Z, +X toward the subject's left):

    R = Ry(yaw) @ Rx(pitch) @ Rz(roll)        (intrinsic Y-X-Z: heading, then pitch, then roll)

with the signs (right-hand rule about each axis):

* positive yaw   turns the face toward +X, the subject's own left;
* positive pitch turns the face down (the chin toward the chest);
* positive roll  tilts the head toward the subject's right shoulder (+X side up).

``euler_signs`` flips any of the three where a capture app disagrees (for example Live Link
Face recorded in landscape orientation is known to invert pitch and yaw).
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

ARKIT_NAMES = (
    "eyeBlinkLeft", "eyeLookDownLeft", "eyeLookInLeft", "eyeLookOutLeft", "eyeLookUpLeft",
    "eyeSquintLeft", "eyeWideLeft",
    "eyeBlinkRight", "eyeLookDownRight", "eyeLookInRight", "eyeLookOutRight", "eyeLookUpRight",
    "eyeSquintRight", "eyeWideRight",
    "jawForward", "jawLeft", "jawRight", "jawOpen",
    "mouthClose", "mouthFunnel", "mouthPucker", "mouthLeft", "mouthRight",
    "mouthSmileLeft", "mouthSmileRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthDimpleLeft", "mouthDimpleRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthPressLeft", "mouthPressRight", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)
NUM_ARKIT = len(ARKIT_NAMES)
assert NUM_ARKIT == 52

# lower-cased spelling -> our spelling (capture apps capitalise: "EyeBlinkLeft")
ARKIT_BY_LOWER: Dict[str, str] = {n.lower(): n for n in ARKIT_NAMES}


def is_arkit_space(names: Sequence[str]) -> bool:
    """True when every name is one of the 52 ARKit names (our spelling)."""
    return len(names) > 0 and all(n in ARKIT_BY_LOWER.values() for n in names)


def euler_to_axis_angle(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray,
                        signs: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Head-frame Euler angles (radians) -> axis-angle.

    Args:
        yaw, pitch, roll: [T] angles; ``signs`` multiplies them first (see the module doc).
    Returns:
        [T, 3] axis-angle of R = Ry(yaw) Rx(pitch) Rz(roll), float64.
    """
    from scipy.spatial.transform import Rotation

    angles = np.stack([np.asarray(yaw, np.float64) * signs[0],
                       np.asarray(pitch, np.float64) * signs[1],
                       np.asarray(roll, np.float64) * signs[2]], -1)
    # upper-case axes = intrinsic rotations: R = Ry(a0) @ Rx(a1) @ Rz(a2)
    return Rotation.from_euler("YXZ", angles.reshape(-1, 3)).as_rotvec().reshape(angles.shape)
