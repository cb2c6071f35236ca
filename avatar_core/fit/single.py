"""Fitting the head model to landmarks: one image, or every frame of a video at once.

The camera looks at the head's face (+Z) from the front: world-to-camera rotation
R = R(omega) @ diag(1, -1, -1) (OpenCV: x right, y down, z forward), translation t and a
focal length f = f0 * exp(df) shared by all frames. Rigid head motion lives in the per-frame
camera; the head model's root stays at rest. The loss is a robust (Geman-McClure)
reprojection error of the embedded MediaPipe landmarks, normalised by the face size, plus
priors on identity, expression and articulation, and (for videos) a temporal smoothness
term; identity is shared by all frames. ARKit-style expressions stay in [0, 1].
Optimisation is two-stage Adam: rigid (camera) first, then everything, batched over frames.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import numpy as np
import torch

from avatar_core.camera import Camera
from avatar_core.fit.correspondence import Embedding
from avatar_core.fit.landmark_sets import landmark_weights
from avatar_core.head import lbs
from avatar_core.head.model import HeadModel
from avatar_core.progress import as_progress
from avatar_core.rotation import axis_angle_to_matrix, matrix_to_axis_angle

log = logging.getLogger(__name__)
FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
DEFAULT_FOV_DEG = 20.0


@dataclasses.dataclass
class FitResult:
    """A fitted head over T frames (T = 1 for a photo).

    camera: Camera with batch T (shared K, per-frame viewmat) at the crop size;
    shape [S]; expression [T, E]; pose [T, J, 3] (root zero: rigid motion is the camera's);
    translation [T, 3] (zero); landmark_ids [K]; projected / detected [T, K, 2] pixels;
    errors_px [T] median landmark error per frame (nan where the frame had no landmarks);
    face_size_px: face box size used for normalising.
    """

    camera: Camera
    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    translation: torch.Tensor
    landmark_ids: np.ndarray
    projected: np.ndarray
    detected: np.ndarray
    errors_px: np.ndarray
    face_size_px: float

    @property
    def median_error_px(self) -> float:
        return float(np.nanmedian(self.errors_px))

    @property
    def median_error_frac(self) -> float:
        return self.median_error_px / max(self.face_size_px, 1e-6)

    def frame_params(self, t: int = 0) -> dict:
        return {"expression": self.expression[t:t + 1], "pose": self.pose[t:t + 1],
                "translation": self.translation[t:t + 1]}

    def frame_camera(self, t: int = 0) -> Camera:
        return self.camera.index(t)


def is_unit_range(head_or_names) -> bool:
    """ARKit-style coefficients live in [0, 1]; FLAME's exp_* are unbounded."""
    names = getattr(head_or_names, "expr_names", head_or_names)
    return not all(n.startswith("exp_") for n in names)


def cameras_from(omega: torch.Tensor, t: torch.Tensor, focal: torch.Tensor, size: int) -> Camera:
    """omega [T, 3], t [T, 3], focal scalar -> Camera batch T."""
    T = omega.shape[0]
    R = axis_angle_to_matrix(omega) @ FLIP.to(omega)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=omega.dtype).expand(T, 1, 4)
    view = torch.cat([torch.cat([R, t[:, :, None]], 2), bottom], 1)
    c = (size - 1) / 2.0
    zero = focal * 0
    K = torch.stack([torch.stack([focal, zero, zero + c]), torch.stack([zero, focal, zero + c]),
                     torch.stack([zero, zero, zero + 1])])
    return Camera(K[None].expand(T, 3, 3), view, size, size)


class LandmarkHead:
    """The head model evaluated only where the landmarks are: the vertices of the embedding's
    faces, with joints from precomputed joint blend shapes. Same maths as HeadModel.forward,
    ~10x less work, which is what makes per-frame video fitting fast."""

    def __init__(self, head: HeadModel, embedding: Embedding):
        faces = head.faces[torch.as_tensor(embedding.face_idx)]  # [K, 3]
        used, inverse = torch.unique(faces.reshape(-1), return_inverse=True)
        self.local_faces = inverse.reshape(-1, 3)
        self.bary = torch.as_tensor(embedding.bary, dtype=torch.float32)
        self.v = head.v_template[used]
        self.shapedirs = head.shapedirs[used]
        self.exprdirs = head.exprdirs[used]
        self.posedirs = head.posedirs[used]
        self.weights = head.lbs_weights[used]
        R = head.j_regressor
        # joints = R (v + S beta + E psi): precompute R v, R S and R E
        self.j_template = R @ head.v_template
        self.j_shapedirs = torch.einsum("jv,vik->jik", R, head.shapedirs)
        self.j_exprdirs = torch.einsum("jv,vik->jik", R, head.exprdirs)
        self.parents = head.parents
        self.has_posedirs = bool(head.posedirs.abs().max() > 0) if head.posedirs.numel() else False

    def __call__(self, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """shape [B, S'], expression [B, E], pose [B, J, 3] -> landmark points [B, K, 3]."""
        S = shape.shape[1]
        v = self.v[None] + lbs.blend_shapes(shape, self.shapedirs[..., :S]) + lbs.blend_shapes(expression, self.exprdirs)
        joints = self.j_template[None] + lbs.blend_shapes(shape, self.j_shapedirs[..., :S]) \
            + lbs.blend_shapes(expression, self.j_exprdirs)
        rot = axis_angle_to_matrix(pose)
        if self.has_posedirs:
            v = v + lbs.blend_shapes(lbs.pose_features(rot), self.posedirs)
        _, transforms = lbs.rigid_transforms(rot, joints, self.parents)
        verts, _ = lbs.skin(v, self.weights, transforms)
        return (verts[:, self.local_faces] * self.bary[None, :, :, None]).sum(2)


EXPR_PRIOR_PHOTO = 3e-3
EXPR_PRIOR_VIDEO = 1e-3
# the range of ARKit-style units in a fit: [0, 1] for a photo (the avatar's source expression);
# a video's may leave it by half a unit either way. The head model's identity shapes miss some
# faces' brows and lids; a unit held at its bound by that misfit cannot follow the face's motion,
# and driving takes only the changes from a frame (d11: fitted brow amplitude 0.73 -> 0.85 of
# the landmarks', eye openness 0.74 -> 0.82, median landmark error 0.96 -> 0.86 px)
EXPR_RANGE_PHOTO = (0.0, 1.0)
EXPR_RANGE_VIDEO = (-0.5, 1.5)
EXPR_SMOOTH = 0.01  # expressions, jaw and eyes move faster than the head: a hundredth of its smoothness (at 1.0 a 3-frame blink came back at 0.0, at 0.1 at 0.2)
ROBUST_SCALE = 0.02  # the Geman-McClure scale at the end of the fit, in face sizes
SETTLE = 0.4         # the last share of the non-rigid steps, over which the learning rates fall...
SETTLE_LR = 0.05     # ...to this share of themselves (cosine)
# the inner lips never cross in an image: (upper, lower) landmarks facing each other across the
# mouth, and the weight of the squared crossing (in face sizes) an upper one below its lower
# one costs. Without it the fits pressed the lips through each other (driving video d13: the
# photo fit's 13 sat 0.7 px below 14, the tracker's up to 2 px in pressed-lip frames), and an
# avatar driven from there spent the first part of each mouth opening uncrossing its lips.
LIP_PAIRS = ((191, 95), (80, 88), (81, 178), (82, 87), (13, 14), (312, 317), (311, 402), (310, 318), (415, 324))
LIP_CROSS = 50.0
# a video's outline term (``fit.outline``): its weight against the landmarks' (both are robust
# means in [0, 1] per frame)
OUTLINE_WEIGHT = 0.5
# with an outline, a video's head depth is the outline's to move, not the landmarks': a yawn,
# a pucker or a wide grin spreads the landmarks as a head moving closer would, and d18's tracked
# depth moved 1.8 cm in frames where the head stayed put. A long-haired outline swings with the
# hair, so the depth is also held toward the source frame's: the weight of the squared relative
# change (nine driving videos, 120 frames: at 0 d3 lost 0.5 dB; at 100 d14's real 5 % approach
# was tracked as 2.2 %, at 30 as 3.6 %)
DEPTH_TETHER = 30.0


def fit_landmarks(head: HeadModel, embedding: Embedding, landmarks: np.ndarray, size: int,
                  valid: Optional[np.ndarray] = None, face_size: Optional[float] = None,
                  steps: int = 300, num_shape: int = 50, smooth: float = 0.0,
                  shape: Optional[torch.Tensor] = None, progress=None, cancel=None,
                  shape_prior: float = 1e-2, expr_prior: Optional[float] = None,
                  expr_smooth: Optional[float] = None, outline=None) -> FitResult:
    """Fit the head model to detected landmarks in ``size`` x ``size`` crops.

    Args:
        landmarks: [478, 2+] for one image or [T, 478, 2+] for T frames (crop pixels).
        valid: [T] bool, frames that have landmarks (others are interpolated by smoothness).
        face_size: face size in pixels for normalising (default: the landmarks' spread).
        steps: Adam steps in total (a third rigid-only).
        smooth: weight of the temporal smoothness term (second differences) of the head's and
            jaw's motion, videos only.
        expr_smooth: the same for the expressions; None = ``smooth * EXPR_SMOOTH``.
        shape: a fixed identity [S] (e.g. from the source photo); fitted when None.
        outline: a video's ``fit.outline.OutlineTargets``: points of the source frame's
            upper-head outline, placed at the head centre's depth and carried rigidly with
            the head, are kept on each frame's outline (weight ``OUTLINE_WEIGHT``); the head's
            rigid motion is then the camera's alone (the neck stays at rest), and its depth
            is the outline's: the landmarks do not move it (expressions spread them as an
            approach would), and it is held toward the source frame's (``DEPTH_TETHER``).
        expr_prior: weight of the L2 prior on the expressions; None = ``EXPR_PRIOR_PHOTO``
            for one image, ``EXPR_PRIOR_VIDEO`` for several frames (the temporal smoothness
            term already keeps a video's expressions from chasing landmark noise, and the
            photo's weight shrinks eye-look, brow and eye-wide units to ~85 % of their
            amplitude on landmarks synthesised from the head model; ~96 % with the video's).
    """
    prog = as_progress(progress, cancel)
    head = head.to(dtype=torch.float32)
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim == 2:
        lm = lm[None]
    T = lm.shape[0]
    if expr_prior is None:
        expr_prior = EXPR_PRIOR_VIDEO if T > 1 else EXPR_PRIOR_PHOTO
    if expr_smooth is None:
        expr_smooth = smooth * EXPR_SMOOTH
    valid_t = torch.ones(T, dtype=torch.bool) if valid is None else torch.as_tensor(np.asarray(valid), dtype=torch.bool)
    if not bool(valid_t.any()):
        raise ValueError("no frame has landmarks")
    target = torch.as_tensor(lm[:, embedding.landmark_ids, :2])  # [T, K, 2]
    target = torch.nan_to_num(target)
    w = torch.as_tensor(landmark_weights()[embedding.landmark_ids])
    if face_size is None:
        span = target[valid_t].amax(1) - target[valid_t].amin(1)
        face_size = float(span.amax(-1).median())
    S = min(num_shape, head.num_shape)
    E, J = head.num_expr, head.num_joints
    unit = is_unit_range(head)
    expr_range = EXPR_RANGE_VIDEO if T > 1 else EXPR_RANGE_PHOTO
    f0 = (size / 2.0) / math.tan(math.radians(DEFAULT_FOV_DEG) / 2.0)

    # initial camera per frame from the 2D/3D landmark spreads and centroids
    model_pts0 = embedding.points(head.v_template[None], head.faces)[0]
    span3 = float((model_pts0[:, :2].amax(0) - model_pts0[:, :2].amin(0)).max())
    tv = target[valid_t]
    span2 = float((tv.amax(1) - tv.amin(1)).amax(-1).median())
    z = f0 * span3 / max(span2, 1e-6)
    c2 = tv.mean(1).median(0).values - (size - 1) / 2.0
    pc = torch.tensor([float(c2[0]) * z / f0, float(c2[1]) * z / f0, z])
    t0 = pc - FLIP @ model_pts0.mean(0)
    p = {
        "omega": torch.zeros(T, 3), "t": t0.expand(T, 3).clone(), "df": torch.zeros(()),
        "beta": torch.zeros(S) if shape is None else torch.as_tensor(shape, dtype=torch.float32)[:S].clone(),
        "expr": torch.zeros(T, E), "pose": torch.zeros(T, J, 3),
    }
    for v in p.values():
        v.requires_grad_()
    # Geman-McClure scale, annealed from coarse to fine: a fixed small scale gives frames that
    # start far off (fast head motion, a poor first guess) no gradient at all
    sigma_final = ROBUST_SCALE * face_size
    sigma_start = 0.3 * face_size
    vmask = valid_t.float()
    articulated = torch.tensor([0.0] + [1.0] * (J - 1))[:, None]

    lmk_head = LandmarkHead(head, embedding)
    anchors = None  # the outline's points in model space, placed after the rigid stage
    if outline is not None:
        if int(outline.size) != int(size) or outline.dist.shape[0] != T:
            raise ValueError(f"the outline targets are for {outline.dist.shape[0]} frames of {outline.size} px; "
                             f"the landmarks are {T} frames of {size} px.")
        articulated[1] = 0.0
        o_dist = torch.as_tensor(outline.dist)[:, None]                     # [T, 1, G, G]
        o_valid = torch.as_tensor(outline.valid).float() * vmask
        o_src = int(outline.src)
        head_centre = 0.5 * (head.v_template.amin(0) + head.v_template.amax(0))
    row = {int(k): i for i, k in enumerate(embedding.landmark_ids)}
    lips = [(row[a], row[b]) for a, b in LIP_PAIRS if a in row and b in row]
    lip_up = torch.tensor([a for a, _ in lips], dtype=torch.long)
    lip_low = torch.tensor([b for _, b in lips], dtype=torch.long)

    def loss_fn(stage: int, progress_frac: float = 1.0):
        anneal = min(1.0, progress_frac / 0.6)
        sigma2 = (sigma_start * (sigma_final / sigma_start) ** anneal) ** 2
        focal = f0 * torch.exp(p["df"])
        cam_head = cameras_from(p["omega"], p["t"], focal, size)
        cam = cam_head
        if outline is not None:  # the landmarks see the depth but do not move it
            cam = cameras_from(p["omega"], torch.cat([p["t"][:, :2], p["t"][:, 2:].detach()], 1), focal, size)
        pts = lmk_head(p["beta"][None].expand(T, -1), p["expr"], p["pose"] * articulated)
        uv, _ = cam.project(pts)
        r2 = ((uv - target) ** 2).sum(-1)  # [T, K]
        data = ((w * geman_mcclure(r2, sigma2)).sum(1) / w.sum() * vmask).sum() / vmask.sum()
        reg = 0.1 * p["df"] ** 2
        if lips:  # image y grows downward: an upper lip point below its lower one has crossed
            cross = (uv[:, lip_up, 1] - uv[:, lip_low, 1]).clamp_min(0.0) / face_size
            reg = reg + LIP_CROSS * ((cross ** 2).sum(1) * vmask).sum() / vmask.sum()
        if stage > 0:
            reg = reg + shape_prior * (p["beta"] ** 2).sum() / S
            reg = reg + expr_prior * (p["expr"] ** 2).sum() / T
            reg = reg + ((p["pose"][:, 1] ** 2).sum() + 0.5 * (p["pose"][:, 2] ** 2).sum()
                         + 0.1 * (p["pose"][:, 3:] ** 2).sum()) / T
        if anchors is not None:
            ua, _ = cam_head.project(anchors[None].expand(T, -1, -1))
            g = (ua + 0.5) / size * 2 - 1
            d = torch.nn.functional.grid_sample(o_dist, g[:, None], mode="bilinear", padding_mode="border",
                                                align_corners=False)[:, 0, 0]  # [T, A] crop pixels
            o_term = geman_mcclure(d ** 2, sigma2).mean(1)
            reg = reg + OUTLINE_WEIGHT * (o_term * o_valid).sum() / o_valid.sum().clamp_min(1.0)
            z_src = p["t"][o_src, 2].detach()
            reg = reg + DEPTH_TETHER * (((p["t"][:, 2] - z_src) / z_src) ** 2).mean()
        if T > 2 and smooth > 0:
            def acc(x):
                return ((x[2:] - 2 * x[1:-1] + x[:-2]) ** 2).sum() / (T - 2)
            reg = reg + smooth * (10 * acc(p["omega"]) + 100 * acc(p["t"])) + expr_smooth * (acc(p["expr"]) + acc(p["pose"]))
        return data + reg, uv, r2

    rigid_steps = steps // 3
    opt = torch.optim.Adam([p["omega"], p["t"], p["df"]], lr=1e-2)
    for i in range(rigid_steps):
        opt.zero_grad()
        loss, _, _ = loss_fn(0, i / steps)
        loss.backward()
        p["t"].grad[:, :2] *= 0.1
        if outline is not None:  # one depth for every frame (the first guess's) until the outline moves it
            p["t"].grad[:, 2] = 0.0
        opt.step()
        if i % 10 == 0:
            prog(0.3 * i / max(rigid_steps, 1), "fitting the camera")
    if outline is not None:
        anchors = outline_anchors(outline.points, p["omega"][o_src].detach(), p["t"][o_src].detach(),
                                  float(f0 * torch.exp(p["df"].detach())), size, head_centre)
    groups = [{"params": [p["omega"], p["df"]], "lr": 5e-3}, {"params": [p["t"]], "lr": 2e-3},
              {"params": [p["expr"]], "lr": 2e-2}, {"params": [p["pose"]], "lr": 1e-2}]
    if shape is None:
        groups.append({"params": [p["beta"]], "lr": 5e-2})
    opt = torch.optim.Adam(groups)
    rest = steps - rigid_steps
    # the learning rates fall to SETTLE_LR of themselves over the last SETTLE of the steps:
    # at constant rates Adam's last step still moved the fit, so landmarks 0.005 px apart gave
    # median errors up to 0.05 % of the face box apart (now 0.0025 %)
    base_lr = [g["lr"] for g in opt.param_groups]
    settle_from = int(rest * (1 - SETTLE))
    for i in range(rest):
        if i >= settle_from:
            frac = (i - settle_from) / max(rest - settle_from, 1)
            scale = SETTLE_LR + (1 - SETTLE_LR) * 0.5 * (1 + math.cos(math.pi * frac))
            for g, lr in zip(opt.param_groups, base_lr):
                g["lr"] = lr * scale
        opt.zero_grad()
        loss, _, _ = loss_fn(1, (rigid_steps + i) / steps)
        loss.backward()
        opt.step()
        if unit:
            with torch.no_grad():
                p["expr"].clamp_(*expr_range)
        if i % 10 == 0:
            prog(0.3 + 0.7 * i / max(rest, 1), "fitting the head")
    with torch.no_grad():
        _, uv, r2 = loss_fn(1)
        cam = cameras_from(p["omega"], p["t"], f0 * torch.exp(p["df"]), size)
        err = r2.sqrt().median(1).values.numpy().astype(np.float64)
        err[~valid_t.numpy()] = np.nan
        pose = p["pose"].detach() * articulated
    prog(1.0, "fit done")
    return FitResult(
        camera=Camera(cam.K.detach().clone(), cam.viewmat.detach().clone(), size, size),
        shape=p["beta"].detach().clone(), expression=p["expr"].detach().clone(), pose=pose,
        translation=torch.zeros(T, 3), landmark_ids=embedding.landmark_ids,
        projected=uv.numpy(), detected=target.numpy(), errors_px=err, face_size_px=float(face_size))


def geman_mcclure(r2: torch.Tensor, sigma2: float) -> torch.Tensor:
    return r2 / (r2 + sigma2)


def outline_anchors(points: np.ndarray, omega: torch.Tensor, t: torch.Tensor, focal: float, size: int,
                    centre: torch.Tensor) -> torch.Tensor:
    """Outline pixels ``points`` [A, 2] of a frame with camera (``omega`` [3], ``t`` [3],
    ``focal``) lifted to the depth of the head's ``centre`` [3] (model space; the outline of a
    skull seen from the front lies about there) and returned in model space [A, 3]."""
    R = axis_angle_to_matrix(omega[None])[0] @ FLIP.to(omega)
    z = float((R @ centre.to(omega) + t)[2])
    c = (size - 1) / 2.0
    uv = torch.as_tensor(points, dtype=omega.dtype)
    p_cam = torch.stack([(uv[:, 0] - c) / focal * z, (uv[:, 1] - c) / focal * z, torch.full_like(uv[:, 0], z)], -1)
    return (p_cam - t) @ R  # R^T (p - t)


def fit_portrait(head: HeadModel, portrait, embedding: Embedding, steps: int = 300,
                 progress=None, cancel=None) -> FitResult:
    """Fit to a ``FacePortrait`` from ``avatar_core.face.process_portrait`` (T = 1)."""
    box = np.asarray(portrait.face_box, dtype=np.float64).reshape(-1)
    face_size = float(max(box[2] - box[0], box[3] - box[1])) if box.size >= 4 else None
    size = int(portrait.image.shape[0])
    return fit_landmarks(head, embedding, portrait.landmarks, size, face_size=face_size, steps=steps,
                         progress=progress, cancel=cancel)


def camera_motion_to_pose(viewmats: torch.Tensor, joint: torch.Tensor):
    """Express per-frame camera motion relative to frame 0 as a rotation about a joint (the
    root, or the neck with the root at rest) + a root translation.

    world->cam_t = R_t p + t_t = R_0 (R_h p + t_h) + t_0, so R_h = R_0^T R_t and
    t_h = R_0^T (t_t - t_0); LBS rotates about the joint j, hence translation
    T = t_h + R_h j - j. viewmats [T, 4, 4], joint [3] (rest) -> axis-angle [T, 3] and
    translation [T, 3].
    """
    R0, t0 = viewmats[0, :3, :3], viewmats[0, :3, 3]
    Rt, tt = viewmats[:, :3, :3], viewmats[:, :3, 3]
    Rh = R0.T @ Rt
    th = (R0.T @ (tt - t0)[..., None])[..., 0]
    j = joint.reshape(3)
    trans = th + (Rh @ j) - j
    return matrix_to_axis_angle(Rh), trans
