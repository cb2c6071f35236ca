"""Coordinate and camera conversions between Blender and avatar_core. No bpy, numpy only.

Spaces:

* **head space** (avatar_core): metres, +Y up, the face looking toward +Z; OpenCV cameras
  (x right, y down, z forward); pixel centres at integer coordinates.
* **Blender world**: metres, +Z up, right-handed; a camera looks down its local -Z with +Y up.

An avatar's armature object carries ``HEAD_TO_BLENDER`` (+90 degrees about X) as its rotation,
so the armature's and the points object's local data are head space and the face looks toward
Blender's -Y (the front view). Any further object transform (move, rotate, uniform scale) is
applied by ``head_camera``.

Pose bones: avatar_core's pose is, per joint, an axis-angle rotation about the joint in the
head-space axes (FLAME's rest frames are the world axes). A Blender pose bone's
``matrix_basis`` rotates in its bone-local rest frame ``B`` (``bone.matrix_local``, armature =
head space), so the two are conjugates: ``R_head = B @ R_basis @ B^T``. The root bone's
location maps to avatar_core's translation: ``t = B_root @ location``.

Every function here is tested against Blender's own maths in tests/test_blender_convert.py.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from avatar_core.rotation import axis_angle_to_matrix_np, matrix_to_axis_angle_np, matrix_to_quaternion_np

# head (Y up, face +Z) -> Blender (Z up, face -Y): +90 degrees about X
HEAD_TO_BLENDER = np.array([[1.0, 0.0, 0.0],
                            [0.0, 0.0, -1.0],
                            [0.0, 1.0, 0.0]])
BLENDER_TO_HEAD = HEAD_TO_BLENDER.T
# a Blender camera's local axes (x right, y up, -z forward) -> OpenCV's (x right, y down, z forward)
BLENDER_CAM_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def head_to_blender_matrix() -> np.ndarray:
    """[4, 4] object matrix that puts head-space data upright in Blender."""
    m = np.eye(4)
    m[:3, :3] = HEAD_TO_BLENDER
    return m


def head_to_blender_points(p: np.ndarray) -> np.ndarray:
    """[..., 3] head-space points -> Blender world (for an untransformed avatar)."""
    return np.asarray(p, dtype=np.float64) @ HEAD_TO_BLENDER.T


def blender_to_head_points(p: np.ndarray) -> np.ndarray:
    """[..., 3] Blender world points -> head space (for an untransformed avatar)."""
    return np.asarray(p, dtype=np.float64) @ BLENDER_TO_HEAD.T


# ------------------------------------------------------------------------------------------------
# rigid transforms
# ------------------------------------------------------------------------------------------------
def split_similarity(m: np.ndarray) -> Tuple[np.ndarray, float]:
    """Split an object matrix [4, 4] into a rigid part [4, 4] and a uniform scale.

    Non-uniform scale is reduced to its mean (Gaussians cannot be sheared).
    """
    m = np.asarray(m, dtype=np.float64)
    a = m[:3, :3]
    u, s, vt = np.linalg.svd(a)
    r = u @ vt
    if np.linalg.det(r) < 0:  # a mirror: keep a proper rotation, fold the sign into nothing
        u[:, -1] *= -1
        r = u @ vt
    rigid = np.eye(4)
    rigid[:3, :3] = r
    rigid[:3, 3] = m[:3, 3]
    scale = float(s.mean())
    if abs(scale - 1.0) < 1e-9:  # an unscaled object: skip the rescaling work downstream
        scale = 1.0
    return rigid, scale


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a rigid [4, 4] transform."""
    out = np.eye(4)
    r = m[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ m[:3, 3]
    return out


def opencv_viewmat(camera_matrix_world: np.ndarray) -> np.ndarray:
    """World-to-camera OpenCV view matrix [4, 4] of a Blender camera object's ``matrix_world``.

    Scale on the camera object is ignored (Blender ignores it for projection too).
    """
    rigid, _ = split_similarity(camera_matrix_world)
    view = rigid_inverse(rigid)  # world -> Blender camera axes
    out = np.eye(4)
    out[:3, :] = BLENDER_CAM_TO_OPENCV @ view[:3, :]
    return out


def head_camera(viewmat_world: np.ndarray, object_matrix_world: np.ndarray) -> Tuple[np.ndarray, float]:
    """The view matrix in an avatar's head space and the avatar's uniform scale.

    A head-space point ``p`` is at ``M_obj @ (s p)`` in the world (``M_obj`` rigid), so
    ``viewmat_head = viewmat_world @ M_obj`` applied to ``s p`` (scale means and Gaussian
    scales by ``s`` before rendering).

    Args:
        viewmat_world: [4, 4] world-to-camera OpenCV view matrix.
        object_matrix_world: [4, 4] the points object's ``matrix_world`` (it includes
            HEAD_TO_BLENDER through the armature parent).
    Returns:
        (viewmat_head [4, 4], scale)
    """
    rigid, s = split_similarity(object_matrix_world)
    return np.asarray(viewmat_world, dtype=np.float64) @ rigid, s


# ------------------------------------------------------------------------------------------------
# intrinsics
# ------------------------------------------------------------------------------------------------
def camera_intrinsics(lens: float, sensor_width: float, sensor_height: float, sensor_fit: str,
                      shift_x: float, shift_y: float, width: int, height: int,
                      pixel_aspect_x: float = 1.0, pixel_aspect_y: float = 1.0) -> np.ndarray:
    """OpenCV K [3, 3] (pixels, integer = pixel centre) of a perspective Blender camera.

    Follows Blender's viewplane (BKE_camera_params_compute_viewplane): the sensor spans the
    image width (HORIZONTAL), height (VERTICAL) or the larger side (AUTO, measured with the
    pixel aspect); shift is a fraction of that spanned side; non-square pixels keep the
    width's focal and divide the height's by ``aspy / aspx``.

    Args:
        lens: focal length in mm; sensor_width / sensor_height in mm; sensor_fit 'AUTO',
            'HORIZONTAL' or 'VERTICAL'; shift_x / shift_y as in Blender's camera panel;
        width, height: render size in pixels (after the resolution percentage).
    """
    if lens <= 0:
        raise ValueError(f"camera lens must be positive, got {lens}")
    winx, winy = float(width), float(height)
    aspx, aspy = float(pixel_aspect_x), float(pixel_aspect_y)
    fit = sensor_fit
    if fit == "AUTO":
        fit = "HORIZONTAL" if aspx * winx >= aspy * winy else "VERTICAL"
        sensor = sensor_width  # AUTO always uses the sensor width as the larger side
    elif fit == "HORIZONTAL":
        sensor = sensor_width
    elif fit == "VERTICAL":
        sensor = sensor_height
    else:
        raise ValueError(f"unknown sensor fit {sensor_fit!r}")
    ycor = aspy / aspx
    viewfac = winx if fit == "HORIZONTAL" else ycor * winy
    fx = lens / sensor * viewfac
    fy = fx / ycor
    cx = 0.5 * winx - shift_x * viewfac - 0.5
    cy = 0.5 * winy + shift_y * viewfac / ycor - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def projection_intrinsics(window_matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenCV K [3, 3] from an OpenGL-style perspective projection (Blender's
    ``region_data.window_matrix`` or ``Object.calc_matrix_camera``) for a ``width`` x
    ``height`` image. Raises ValueError for an orthographic projection."""
    p = np.asarray(window_matrix, dtype=np.float64)
    if abs(p[3, 2]) < 1e-9:
        raise ValueError("orthographic projection: the Gaussian rasterizer needs a perspective view")
    # x_ndc = P00 X / Z - P02 with OpenCV X, Z (Z = -Z_gl); u = (x_ndc + 1) W / 2 - 0.5
    fx = 0.5 * width * p[0, 0]
    fy = 0.5 * height * p[1, 1]
    cx = 0.5 * width * (1.0 - p[0, 2]) - 0.5
    cy = 0.5 * height * (1.0 + p[1, 2]) - 0.5
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def orthographic_as_perspective(window_matrix: np.ndarray, view_matrix_gl: np.ndarray, width: int, height: int,
                                view_distance: float) -> Tuple[np.ndarray, np.ndarray]:
    """A far perspective camera approximating an orthographic viewport: (K [3, 3], viewmat [4, 4]).

    The camera is moved back by D = max(10 m, 20 x the view distance) and its focal length
    scaled so the plane through the view's pivot (``view_distance`` ahead) is imaged exactly;
    elsewhere the scale is off by (depth from that plane) / (D + view_distance).
    """
    p = np.asarray(window_matrix, dtype=np.float64)
    d = max(10.0, 20.0 * float(view_distance))
    f = d + float(view_distance)
    K = np.array([[0.5 * width * p[0, 0] * f, 0.0, 0.5 * width * (1.0 + p[0, 3]) - 0.5],
                  [0.0, 0.5 * height * p[1, 1] * f, 0.5 * height * (1.0 - p[1, 3]) - 0.5],
                  [0.0, 0.0, 1.0]])
    back = np.eye(4)
    back[2, 3] = -d  # GL camera looks down -Z: moving it back subtracts d from every point's z
    gl = back @ np.asarray(view_matrix_gl, dtype=np.float64)
    view = np.eye(4)
    view[:3] = BLENDER_CAM_TO_OPENCV @ gl[:3]
    return K, view


def project(K: np.ndarray, viewmat: np.ndarray, points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Pinhole projection, numpy twin of avatar_core's Camera.project: [N, 3] -> uv [N, 2], depth [N]."""
    p = np.asarray(points, dtype=np.float64)
    pc = p @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = pc[:, 2]
    uv = np.stack([K[0, 0] * pc[:, 0] / z + K[0, 2], K[1, 1] * pc[:, 1] / z + K[1, 2]], -1)
    return uv, z


def bone_basis_to_pose(rest_rotations: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Blender pose-bone rotations -> avatar_core pose.

    Args:
        rest_rotations: [J, 3, 3] each bone's ``matrix_local`` rotation (armature = head space).
        basis: [..., J, 3, 3] the rotation part of each pose bone's ``matrix_basis``.
    Returns:
        [..., J, 3] axis-angle about each joint in head-space axes.
    """
    b = np.asarray(rest_rotations, dtype=np.float64)
    # R_head = B @ R_basis @ B^T
    r = b @ np.asarray(basis, dtype=np.float64) @ np.swapaxes(b, -1, -2)
    return matrix_to_axis_angle_np(r)


def pose_to_bone_basis(rest_rotations: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Inverse of ``bone_basis_to_pose``: [..., J, 3] axis-angle -> [..., J, 4] bone quaternions."""
    b = np.asarray(rest_rotations, dtype=np.float64)
    r = axis_angle_to_matrix_np(pose)
    # R_basis = B^T @ R_head @ B
    return matrix_to_quaternion_np(np.swapaxes(b, -1, -2) @ r @ b)


def root_location_to_translation(root_rest_rotation: np.ndarray, location: np.ndarray) -> np.ndarray:
    """Root pose-bone location [..., 3] (bone-local) -> avatar_core translation [..., 3] (head space)."""
    return np.asarray(location, dtype=np.float64) @ np.asarray(root_rest_rotation, dtype=np.float64).T


def translation_to_root_location(root_rest_rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """avatar_core translation [..., 3] -> root pose-bone location [..., 3]."""
    return np.asarray(translation, dtype=np.float64) @ np.asarray(root_rest_rotation, dtype=np.float64)


# ------------------------------------------------------------------------------------------------
# colour
# ------------------------------------------------------------------------------------------------
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded [0, 1] values -> scene-linear (Blender's render results are linear)."""
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, None)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(c, dtype=np.float32), 0.0, None)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055).astype(np.float32)


def premultiplied_srgb_to_linear(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """[..., 3] premultiplied sRGB and [...] alpha -> premultiplied linear [..., 3]."""
    a = np.asarray(alpha, dtype=np.float32)[..., None]
    straight = np.where(a > 1e-6, rgb / np.maximum(a, 1e-6), 0.0)
    return srgb_to_linear(straight) * a
