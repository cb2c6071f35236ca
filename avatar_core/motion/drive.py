"""Driving an avatar with a video tracked on its head model: per-frame parameters and cameras.

``drive_params(track, avatar, head, src)`` turns a ``fit.track.TrackResult`` into what
``Avatar.animate`` takes for every frame, seen through the avatar's own fitted source camera:
the tracked head motion since frame ``src`` (a turn about the neck joint plus a shift) and the
expressions and jaw / eye rotations as changes from that frame (or as tracked). The
self-reenactment evaluation (``eval.selfreenact``) renders an avatar this way.
"""

from __future__ import annotations

import numpy as np

from avatar_core.errors import MotionError


# ----------------------------------------------------------------------------- driving
def fit_limit(track) -> float:
    """Landmark error (px at the crop) above which a tracked frame counts as badly fitted."""
    err = np.asarray(track.fit.errors_px, np.float64)
    return max(3.0, 3.0 * float(np.nanmedian(err))) if np.isfinite(err).any() else np.inf


def motion_reference(track, src: int) -> int:
    """The frame the tracked motion is taken relative to: ``src``, unless the tracker fitted it
    badly (see ``fit_limit``); then the nearest well-fitted frame."""
    err = np.asarray(track.fit.errors_px, np.float64)
    good = np.isfinite(err) & (err <= fit_limit(track))
    if good[src] or not good.any():
        return src
    idx = np.nonzero(good)[0]
    return int(idx[np.argmin(np.abs(idx - src))])


def drive_params(track, avatar, head, src: int = 0, expression: str = "relative"):
    """Per-frame avatar parameters and cameras from a TrackResult.

    Returns (params {"expression" [T, E], "pose" [T, J, 3], "translation" [T, 3]}, viewmats
    [T, 4, 4]: the avatar's source camera for every frame), float32, CPU.

    Head motion: the tracker splits rigid head motion between a per-frame camera V_t and the
    neck joint N_t, and on a still speaker the split wanders (the camera turns one way, the
    neck the other, the face stays put). Only the head's motion, H_t = V_t N_t, is well
    determined, so that is what is carried over: its motion since frame ``src`` in camera
    coordinates, H_t H_src^-1, is taken as a rotation R_t about the neck joint plus a shift d_t of
    the joint. The avatar keeps its source camera A (the video's camera does not move); its neck
    turns by R_t (in world axes: W^T R_t W times its source neck rotation, W = A's rotation) and
    the shift becomes a root translation W^T (k d_t), k scaling x, y by (f_trk z_a) / (f_a z_trk)
    and z by z_a / z_trk (z: the neck joint's depth, f: focal in pixels per crop side) so the head
    moves as far in the image. Shoulders follow only the shift.
    ``expression="relative"``: expression and the jaw/eye rotations = the avatar's source
    values + (tracked value at t - tracked value at src), not clamped: the blend shapes are
    linear, so the head moves exactly as the tracked one did since ``src``. (The photo's fit and
    the tracker's fit of the same frame split a face between units differently: on driving
    video d13 the tracker had mouthRoll 0.2 where the photo fit had 0.02. Clamped to [0, 1], every
    change undoing the tracker's frame-``src`` value was dropped, and the avatar's lips parted
    to 0.52 of the tracked opening; unclamped 0.8.) ``"absolute"``: the tracked values.
    """
    import torch

    from avatar_core.rotation import axis_angle_to_matrix, matrix_to_axis_angle

    NECK = 1
    fit = track.fit
    e_trk = fit.expression.detach().float()                        # [T, E]
    p_trk = fit.pose.detach().float()                              # [T, J, 3]
    names = list(avatar.expr_names)
    if e_trk.shape[1] != len(names) or p_trk.shape[1] != avatar.rig_weights.shape[1]:
        raise MotionError(f"The clip was tracked with {e_trk.shape[1]} expressions and {p_trk.shape[1]} joints, but "
                        f"the avatar has {len(names)} and {avatar.rig_weights.shape[1]}; track with the avatar's "
                        "head model.")
    T = e_trk.shape[0]
    V = fit.camera.viewmat.detach().double()                       # [T, 4, 4]
    src_cam = avatar.source_camera(int(fit.camera.width))
    A = src_cam.viewmat[0].double()
    W = A[:3, :3]

    # the tracked head transform H_t = V_t N_t (N_t: rotation about the tracked neck joint)
    S = fit.shape.detach().double()
    rest = head.v_template.double() + torch.einsum("k,vik->vi", S, head.shapedirs[..., : S.numel()].double())
    j_n = (head.j_regressor.double() @ rest)[NECK]
    Rn = axis_angle_to_matrix(p_trk[:, NECK].double())             # [T, 3, 3]
    N = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
    N[:, :3, :3] = Rn
    N[:, :3, 3] = j_n - Rn @ j_n
    H = V @ N
    M = H @ torch.linalg.inv(H[src])                               # camera src -> camera t, the head's motion
    R = M[:, :3, :3]
    n = V[src, :3, :3] @ j_n + V[src, :3, 3]                       # the neck joint, camera src
    d = (R @ n + M[:, :3, 3]) - n                                  # [T, 3] its shift

    j_a = (avatar.rig_j_regressor.detach().double().cpu() @ avatar.rig_template.detach().double().cpu())[NECK]
    n_a = W @ j_a + A[:3, 3]
    f_t = float(fit.camera.K[0, 0, 0]) / fit.camera.width
    f_a = float(src_cam.K[0, 0, 0]) / src_cam.width
    k = torch.tensor([f_t * float(n_a[2]) / (f_a * float(n[2]))] * 2 + [float(n_a[2]) / float(n[2])],
                     dtype=torch.float64)
    translation = (W.T @ (k * d).T).T.float()                      # [T, 3] world

    if expression == "relative":
        e_src = torch.as_tensor(avatar.source.get("expression", e_trk[src])).float().reshape(-1)
        p_src = torch.as_tensor(avatar.source.get("pose", p_trk[src])).float().reshape(p_trk.shape[1:])
        e = e_src[None] + (e_trk - e_trk[src:src + 1])
        pose = p_src[None] + (p_trk - p_trk[src:src + 1])
    elif expression == "absolute":
        e, pose = e_trk.clone(), p_trk.clone()
        p_src = torch.zeros_like(p_trk[0])
    else:
        raise MotionError(f"expression must be relative or absolute, not {expression!r}.")
    neck_src = axis_angle_to_matrix(p_src[NECK].double()[None])[0]
    pose[:, NECK] = matrix_to_axis_angle(W.T @ R @ W @ neck_src).float()
    pose[:, 0] = 0.0
    params = {"expression": e.contiguous(), "pose": pose.contiguous(), "translation": translation.contiguous()}
    return params, src_cam.viewmat.float().expand(T, 4, 4).clone()
