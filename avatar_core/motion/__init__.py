"""Motion in and out: FLAME parameter npz, ARKit-52 CSV, our motion file; retargeting.

    from avatar_core.motion import load_motion, retarget
    seq = load_motion("take.csv")            # or a FLAME .npz, or our own .npz
    seq = retarget(seq, avatar)              # into the avatar's expression space
    frame = avatar.animate(**seq.frame(0))   # one frame of Gaussians

Readers import lazily, so importing this package is cheap.
"""

from avatar_core.motion.load import load_motion
from avatar_core.motion.retarget import ExpressionRetargeter, landmark_basis, retarget
from avatar_core.motion.sequence import MotionSequence

__all__ = ["MotionSequence", "load_motion", "retarget", "ExpressionRetargeter", "landmark_basis"]
