"""Fitting the head model to one portrait: camera, identity, expression, jaw, eyes, neck.

The camera looks at the head's face (+Z) from the front: world-to-camera rotation
R = R(omega) @ diag(1, -1, -1) (OpenCV: x right, y down, z forward), translation t, focal
f = f0 * exp(df). The loss is a robust (Geman-McClure) reprojection error of the embedded
MediaPipe landmarks, normalised by the face size, plus Gaussian priors on identity,
expression and articulation; ARKit-style expression coefficients are kept in [0, 1].
Optimisation is two-stage Adam: rigid (camera) first, then everything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Optional

import numpy as np
import torch

from avatar_core.fit.correspondence import Embedding
from avatar_core.fit.landmark_sets import landmark_weights
from avatar_core.head import lbs
from avatar_core.head.model import HeadModel
from avatar_core.progress import as_progress
from avatar_core.render.camera import Camera

log = logging.getLogger(__name__)
FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
DEFAULT_FOV_DEG = 20.0


@dataclasses.dataclass
class FitResult:
    """A fitted head: camera (batch 1), shape [S], expression [E], pose [J, 3], translation [3]
    (always zero: the rigid head motion is in the camera), and landmark errors."""

    camera: Camera
    shape: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    translation: torch.Tensor
    landmark_ids: np.ndarray
    projected: np.ndarray      # [K, 2] model landmarks in the image
    detected: np.ndarray       # [K, 2]
    median_error_px: float
    face_size_px: float

    @property
    def median_error_frac(self) -> float:
        return self.median_error_px / max(self.face_size_px, 1e-6)

    def params(self) -> dict:
        return {"expression": self.expression[None], "pose": self.pose[None], "translation": self.translation[None]}


def is_unit_range(head_or_names) -> bool:
    """ARKit-style coefficients live in [0, 1]; FLAME's exp_* are unbounded."""
    names = getattr(head_or_names, "expr_names", head_or_names)
    return not all(n.startswith("exp_") for n in names)


def camera_from(omega: torch.Tensor, t: torch.Tensor, focal: torch.Tensor, size: int) -> Camera:
    R = lbs.axis_angle_to_matrix(omega) @ FLIP.to(omega)
    view = torch.eye(4, dtype=omega.dtype, device=omega.device)
    view = torch.cat([torch.cat([R, t[:, None]], 1), view[3:]], 0)
    c = (size - 1) / 2.0
    K = torch.stack([torch.stack([focal, focal * 0, focal * 0 + c]),
                     torch.stack([focal * 0, focal, focal * 0 + c]),
                     torch.tensor([0.0, 0.0, 1.0], dtype=omega.dtype, device=omega.device)])
    return Camera(K, view, size, size)


def geman_mcclure(r2: torch.Tensor, sigma2: float) -> torch.Tensor:
    return r2 / (r2 + sigma2)


def fit_landmarks(head: HeadModel, embedding: Embedding, landmarks: np.ndarray, size: int,
                  face_size: Optional[float] = None, steps: int = 300, num_shape: int = 50,
                  progress=None, cancel=None, init: Optional[FitResult] = None,
                  shape_prior: float = 1e-2, expr_prior: float = 1e-3) -> FitResult:
    """Fit the head model to 478 detected landmarks in a ``size`` x ``size`` crop.

    Args:
        landmarks: [478, 2+] pixel coordinates in the crop.
        face_size: face width in pixels (for normalising; default from the landmarks).
        steps: total Adam steps (a third rigid-only).
        init: a previous fit to start from (video tracking).
    """
    prog = as_progress(progress, cancel)
    dt = torch.float32
    head = head.to(dtype=dt)
    ids = torch.as_tensor(embedding.landmark_ids)
    target = torch.as_tensor(np.asarray(landmarks)[embedding.landmark_ids, :2], dtype=dt)
    w = torch.as_tensor(landmark_weights()[embedding.landmark_ids])
    if face_size is None:
        span = target.max(0).values - target.min(0).values
        face_size = float(span.max())
    S = min(num_shape, head.num_shape)
    E = head.num_expr
    unit = is_unit_range(head)
    f0 = (size / 2.0) / math.tan(math.radians(DEFAULT_FOV_DEG) / 2.0)

    model_pts0 = embedding.points(head.v_template[None], head.faces)[0]
    if init is None:
        # distance from the ratio of 3D to 2D landmark spreads; centre from the centroids
        span3 = (model_pts0[:, :2].max(0).values - model_pts0[:, :2].min(0).values).max()
        span2 = (target.max(0).values - target.min(0).values).max()
        z = float(f0 * span3 / span2)
        c3 = model_pts0.mean(0)
        c2 = target.mean(0) - (size - 1) / 2.0
        # camera-space centre (x, y, z) -> t = p_cam - R p_world with R = FLIP
        pc = torch.tensor([float(c2[0]) * z / f0, float(c2[1]) * z / f0, z])
        t0 = pc - FLIP @ c3
        omega = torch.zeros(3)
        df = torch.zeros(())
        beta = torch.zeros(S)
        expr = torch.full((E,), 0.0)
        pose = torch.zeros(head.num_joints, 3)
    else:
        t0 = init.camera.viewmat[0, :3, 3].clone()
        R0 = init.camera.viewmat[0, :3, :3] @ FLIP
        omega = _matrix_to_axis_angle(R0)
        df = torch.log(init.camera.K[0, 0, 0] / f0)
        beta = init.shape[:S].clone()
        expr = init.expression.clone()
        pose = init.pose.clone()
    params = {"omega": omega.clone().requires_grad_(), "t": t0.clone().requires_grad_(),
              "df": df.clone().requires_grad_(), "beta": beta.clone().requires_grad_(),
              "expr": expr.clone().requires_grad_(), "pose": pose.clone().requires_grad_()}
    sigma2 = (0.02 * face_size) ** 2  # residuals beyond ~2% of the face count less and less

    def loss_fn(stage: int):
        cam = camera_from(params["omega"], params["t"], f0 * torch.exp(params["df"]), size)
        pose_full = params["pose"].clone()
        pose_full = pose_full * torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0])[:, None]  # rigid motion is the camera's
        out = head(shape=params["beta"][None], expression=params["expr"][None], pose=pose_full[None])
        pts = embedding.points(out.vertices, head.faces)
        uv, depth = cam.project(pts)
        r2 = ((uv[0] - target) ** 2).sum(-1)
        data = (w * geman_mcclure(r2, sigma2)).sum() / w.sum()
        reg = 0.0
        if stage > 0:
            reg = shape_prior * (params["beta"] ** 2).sum() / S + expr_prior * (params["expr"] ** 2).sum()
            reg = reg + 1.0 * (params["pose"][1] ** 2).sum() + 0.5 * (params["pose"][2] ** 2).sum()
            reg = reg + 0.1 * (params["pose"][3:] ** 2).sum()
        reg = reg + 0.1 * params["df"] ** 2
        return data + reg, uv[0], r2

    rigid_steps = steps // 3 if init is None else 0
    opt = torch.optim.Adam([params["omega"], params["t"], params["df"]], lr=1e-2)
    for i in range(rigid_steps):
        opt.zero_grad()
        loss, _, _ = loss_fn(0)
        loss.backward()
        params["t"].grad[:2] *= 0.1  # metres: smaller steps in x/y than the angle
        opt.step()
        if i % 20 == 0:
            prog(0.3 * i / max(rigid_steps, 1), "fitting camera")
    opt = torch.optim.Adam([
        {"params": [params["omega"], params["df"]], "lr": 5e-3},
        {"params": [params["t"]], "lr": 2e-3},
        {"params": [params["beta"]], "lr": 5e-2},
        {"params": [params["expr"]], "lr": 2e-2},
        {"params": [params["pose"]], "lr": 1e-2},
    ])
    rest = steps - rigid_steps
    for i in range(rest):
        opt.zero_grad()
        loss, _, _ = loss_fn(1)
        loss.backward()
        opt.step()
        if unit:
            with torch.no_grad():
                params["expr"].clamp_(0.0, 1.0)
        if i % 20 == 0:
            prog(0.3 + 0.7 * i / max(rest, 1), "fitting head")
    with torch.no_grad():
        _, uv, r2 = loss_fn(1)
        err = r2.sqrt()
        cam = camera_from(params["omega"], params["t"], f0 * torch.exp(params["df"]), size)
    prog(1.0, "fit done")
    pose_final = params["pose"].detach().clone()
    pose_final[0] = 0.0
    return FitResult(
        camera=Camera(cam.K.detach(), cam.viewmat.detach(), size, size),
        shape=params["beta"].detach().clone(), expression=params["expr"].detach().clone(),
        pose=pose_final, translation=torch.zeros(3), landmark_ids=embedding.landmark_ids,
        projected=uv.numpy(), detected=target.numpy(), median_error_px=float(err.median()),
        face_size_px=float(face_size))


def _matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    q = lbs.matrix_to_quaternion(R)
    w = q[0].clamp(-1, 1)
    angle = 2 * torch.acos(w)
    s = torch.sqrt((1 - w * w).clamp_min(1e-12))
    return q[1:] / s * angle if float(angle) > 1e-6 else q[1:] * 2


def fit_portrait(head: HeadModel, portrait, embedding: Embedding, steps: int = 300,
                 progress=None, cancel=None) -> FitResult:
    """Fit to a ``FacePortrait`` from ``avatar_core.face.process_portrait``."""
    box = np.asarray(portrait.face_box, dtype=np.float64).reshape(-1)
    face_size = float(max(box[2] - box[0], box[3] - box[1])) if box.size >= 4 else None
    size = int(portrait.image.shape[0])
    return fit_landmarks(head, embedding, portrait.landmarks, size, face_size=face_size, steps=steps,
                         progress=progress, cancel=cancel)
