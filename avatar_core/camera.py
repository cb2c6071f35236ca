"""Pinhole cameras in the OpenCV convention, batched.

Conventions (the whole of ``avatar_core`` uses them):

- World space is the head model's: metres, Y up, the face looking toward +Z.
- Camera space is OpenCV's: x right, y down, z forward (into the scene).
- ``K`` holds OpenCV intrinsics in pixels: a camera-space point (x, y, z) lands at pixel
  coordinates ``u = fx * x / z + cx``, ``v = fy * y / z + cy``, where integer coordinates are
  pixel centres: pixel ``image[i, j]`` is centred on (u, v) = (j, i). The image centre is
  therefore ((W - 1) / 2, (H - 1) / 2).
- ``viewmat`` maps world to camera: ``p_cam = R @ p_world + t`` with ``viewmat = [[R, t], [0, 1]]``.

Example::

    cam = orbit_camera(target=(0, 0, 0), distance=0.8, yaw_deg=30, pitch_deg=10,
                       fov_deg=18, width=512, height=512)
    out = render(frame, cam)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence, Union

import torch

from avatar_core.errors import ParameterError

Number = Union[float, int]


def scale_intrinsics(K: torch.Tensor, sx: float, sy: Optional[float] = None) -> torch.Tensor:  # [..., 3, 3]
    """Intrinsics K [..., 3, 3] for an image resized by ``sx`` across and ``sy`` down (default
    ``sx``): focal lengths and skew scale, and the principal point keeps its place on the image
    with the pixel-centre convention ``cx' = (cx + 0.5) * sx - 0.5``. A new tensor."""
    sy = sx if sy is None else sy
    out = K.clone()
    out[..., 0, 0] = K[..., 0, 0] * sx
    out[..., 0, 1] = K[..., 0, 1] * sx
    out[..., 1, 1] = K[..., 1, 1] * sy
    out[..., 0, 2] = (K[..., 0, 2] + 0.5) * sx - 0.5
    out[..., 1, 2] = (K[..., 1, 2] + 0.5) * sy - 0.5
    return out


@dataclasses.dataclass
class Camera:
    """A batch of B pinhole cameras sharing one image size.

    K: [B, 3, 3] OpenCV intrinsics in pixels (integer coordinates are pixel centres).
    viewmat: [B, 4, 4] world-to-camera transform, OpenCV axes (x right, y down, z forward).
    width, height: image size in pixels.
    """

    K: torch.Tensor
    viewmat: torch.Tensor
    width: int
    height: int

    def __post_init__(self):
        if self.K.dim() == 2:
            self.K = self.K[None]
        if self.viewmat.dim() == 2:
            self.viewmat = self.viewmat[None]
        if self.K.shape[-2:] != (3, 3) or self.K.dim() != 3:
            raise ParameterError(f"Camera K must have shape [B, 3, 3], got {list(self.K.shape)}.")
        if self.viewmat.shape[-2:] != (4, 4) or self.viewmat.dim() != 3:
            raise ParameterError(f"Camera viewmat must have shape [B, 4, 4], got {list(self.viewmat.shape)}.")
        if self.K.shape[0] != self.viewmat.shape[0]:
            if self.K.shape[0] == 1:
                self.K = self.K.expand(self.viewmat.shape[0], 3, 3)
            elif self.viewmat.shape[0] == 1:
                self.viewmat = self.viewmat.expand(self.K.shape[0], 4, 4)
            else:
                raise ParameterError(f"Camera K has batch {self.K.shape[0]} but viewmat has batch "
                                     f"{self.viewmat.shape[0]}; they must match or one must be 1.")
        self.width = int(self.width)
        self.height = int(self.height)
        if self.width <= 0 or self.height <= 0:
            raise ParameterError(f"Camera image size must be positive, got {self.width}x{self.height}.")

    # -- basic properties ---------------------------------------------------------------
    @property
    def batch(self) -> int:
        return int(self.viewmat.shape[0])

    @property
    def device(self) -> torch.device:
        return self.viewmat.device

    @property
    def dtype(self) -> torch.dtype:
        return self.viewmat.dtype

    @property
    def fx(self) -> torch.Tensor:  # [B]
        return self.K[:, 0, 0]

    @property
    def fy(self) -> torch.Tensor:  # [B]
        return self.K[:, 1, 1]

    @property
    def cx(self) -> torch.Tensor:  # [B]
        return self.K[:, 0, 2]

    @property
    def cy(self) -> torch.Tensor:  # [B]
        return self.K[:, 1, 2]

    @property
    def rotation(self) -> torch.Tensor:  # [B, 3, 3] world-to-camera rotation
        return self.viewmat[:, :3, :3]

    @property
    def translation(self) -> torch.Tensor:  # [B, 3]
        return self.viewmat[:, :3, 3]

    @property
    def position(self) -> torch.Tensor:
        """Camera centres in world space, [B, 3] (= -R^T t)."""
        R = self.rotation
        return -(R.transpose(-1, -2) @ self.translation[..., None])[..., 0]

    # -- conversions --------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "Camera":
        return Camera(self.K.to(device=device, dtype=dtype), self.viewmat.to(device=device, dtype=dtype),
                      self.width, self.height)

    def index(self, b: int) -> "Camera":
        """The b-th camera as a batch of one."""
        return Camera(self.K[b:b + 1], self.viewmat[b:b + 1], self.width, self.height)

    def expand(self, batch: int) -> "Camera":
        """A batch-1 camera repeated ``batch`` times (a view, no copy)."""
        if self.batch == batch:
            return self
        if self.batch != 1:
            raise ParameterError(f"Cannot expand a camera batch of {self.batch} to {batch}.")
        return Camera(self.K.expand(batch, 3, 3), self.viewmat.expand(batch, 4, 4), self.width, self.height)

    def scaled(self, width: int, height: Optional[int] = None) -> "Camera":
        """The same cameras for an image resized to ``width`` x ``height`` pixels.

        Focal lengths scale with the image; the principal point keeps its place on the image,
        respecting the pixel-centre convention: ``cx' = (cx + 0.5) * sx - 0.5``.
        ``height`` defaults to keeping the aspect ratio.
        """
        if height is None:
            height = int(round(self.height * width / self.width))
        return Camera(scale_intrinsics(self.K, width / self.width, height / self.height), self.viewmat, width, height)

    # -- geometry -----------------------------------------------------------------------
    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """points [B or 1, N, 3] world -> [B, N, 3] camera space."""
        # p_cam[b, n, i] = sum_j R[b, i, j] * p[b, n, j] + t[b, i]
        return torch.einsum("bij,bnj->bni", self.rotation, points.expand(self.batch, -1, -1)) \
            + self.translation[:, None, :]

    def project(self, points: torch.Tensor):
        """Pinhole projection of world points.

        Args:
            points: [B or 1, N, 3] world-space points.
        Returns:
            uv [B, N, 2] pixel coordinates (OpenCV, integer = pixel centre) and depth [B, N]
            (camera-space z; points with z <= 0 are behind the camera and their uv is meaningless).
        """
        pc = self.world_to_camera(points)
        z = pc[..., 2]
        zs = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
        u = self.fx[:, None] * pc[..., 0] / zs + self.cx[:, None]
        v = self.fy[:, None] * pc[..., 1] / zs + self.cy[:, None]
        return torch.stack([u, v], -1), z


# -------------------------------------------------------------------------------------------
# constructors
# -------------------------------------------------------------------------------------------
def _vec3(x, device=None, dtype=torch.float32) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    if t.shape[-1:] != (3,):
        raise ParameterError(f"Expected a 3-vector (or [..., 3]), got shape {list(t.shape)}.")
    return t


def intrinsics(focal: Union[Number, Sequence[Number]], width: int, height: int,
               cx: Optional[float] = None, cy: Optional[float] = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
    """OpenCV K [3, 3] for a focal length in pixels (a number, or (fx, fy)).

    The principal point defaults to the image centre, ((W - 1) / 2, (H - 1) / 2).
    """
    if isinstance(focal, (tuple, list)):
        fx, fy = float(focal[0]), float(focal[1])
    else:
        fx = fy = float(focal)
    cx = (width - 1) / 2.0 if cx is None else float(cx)
    cy = (height - 1) / 2.0 if cy is None else float(cy)
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=dtype, device=device)


def focal_from_fov(fov_deg: float, size: int) -> float:
    """Focal length in pixels for a field of view (degrees) spanning ``size`` pixels."""
    if not 0.0 < fov_deg < 180.0:
        raise ParameterError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}.")
    return 0.5 * size / math.tan(math.radians(fov_deg) / 2.0)


def look_at(eye, target, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """World-to-camera OpenCV view matrices looking from ``eye`` at ``target``.

    Args:
        eye: [..., 3] camera centres (world, metres).
        target: [..., 3] points the optical axis passes through.
        up: [..., 3] world up direction (the head model is Y-up); appears up in the image.
    Returns:
        viewmat [..., 4, 4] (x right, y down, z forward).
    """
    eye_t = eye if torch.is_tensor(eye) else _vec3(eye)
    dtype, device = (eye_t.dtype if eye_t.is_floating_point() else torch.float32), eye_t.device
    eye_t = eye_t.to(dtype)
    target_t = _vec3(target, device, dtype) if not torch.is_tensor(target) else target.to(device, dtype)
    up_t = _vec3(up, device, dtype) if not torch.is_tensor(up) else up.to(device, dtype)
    shape = torch.broadcast_shapes(eye_t.shape, target_t.shape, up_t.shape)
    eye_t, target_t, up_t = eye_t.expand(shape), target_t.expand(shape), up_t.expand(shape)
    z = target_t - eye_t
    zn = z.norm(dim=-1, keepdim=True)
    if bool((zn <= 1e-12).any()):
        raise ParameterError("look_at: eye and target coincide; the viewing direction is undefined.")
    z = z / zn
    x = torch.linalg.cross(z, up_t)
    xn = x.norm(dim=-1, keepdim=True)
    if bool((xn <= 1e-9).any()):
        raise ParameterError("look_at: the up vector is parallel to the viewing direction.")
    x = x / xn
    y = torch.linalg.cross(z, x)  # points down in the image
    R = torch.stack([x, y, z], -2)  # rows are the camera axes in world coordinates
    t = -(R @ eye_t[..., None])[..., 0]
    view = torch.zeros(*shape[:-1], 4, 4, dtype=dtype, device=device)
    view[..., :3, :3] = R
    view[..., :3, 3] = t
    view[..., 3, 3] = 1.0
    return view


def orbit_camera(target=(0.0, 0.0, 0.0), distance: float = 0.8,
                 yaw_deg: Union[Number, Sequence[Number], torch.Tensor] = 0.0,
                 pitch_deg: Union[Number, Sequence[Number], torch.Tensor] = 0.0,
                 fov_deg: Optional[float] = None, focal: Optional[float] = None,
                 width: int = 512, height: int = 512, device=None,
                 dtype=torch.float32) -> Camera:
    """Cameras on a sphere around ``target``, looking at it, Y up.

    yaw 0 and pitch 0 put the camera on the +Z axis of the target, facing the face; positive
    yaw moves it toward +X (a turn about +Y), positive pitch raises it (it then looks down).
    ``yaw_deg``/``pitch_deg`` may be sequences (broadcast together) to get a batch of cameras,
    e.g. a turntable. Give either ``fov_deg`` (spanning the larger image side) or ``focal``
    (pixels); the default is a 20-degree field of view.

    Returns:
        Camera with batch B = number of (yaw, pitch) pairs.
    """
    if fov_deg is not None and focal is not None:
        raise ParameterError("orbit_camera takes fov_deg or focal, not both.")
    if distance <= 0:
        raise ParameterError(f"orbit_camera distance must be positive, got {distance}.")
    if focal is None:
        focal = focal_from_fov(20.0 if fov_deg is None else float(fov_deg), max(width, height))
    yaw = torch.as_tensor(yaw_deg, dtype=torch.float64).reshape(-1)
    pitch = torch.as_tensor(pitch_deg, dtype=torch.float64).reshape(-1)
    yaw, pitch = torch.broadcast_tensors(yaw, pitch)
    ya, pa = torch.deg2rad(yaw), torch.deg2rad(pitch)
    direction = torch.stack([torch.sin(ya) * torch.cos(pa), torch.sin(pa), torch.cos(ya) * torch.cos(pa)], -1)
    tgt = torch.as_tensor(target, dtype=torch.float64).reshape(3)
    eye = tgt + float(distance) * direction  # [B, 3]
    view = look_at(eye, tgt.expand_as(eye), torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    K = intrinsics(focal, width, height, dtype=torch.float64).expand(view.shape[0], 3, 3)
    return Camera(K.to(device=device, dtype=dtype).contiguous(), view.to(device=device, dtype=dtype),
                  width, height)
