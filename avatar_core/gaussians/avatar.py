"""The Gaussian head avatar and ``animate``.

An ``Avatar`` holds two things:

* the **rig**: the head model at LOD 0 with the person's identity baked into the template
  (template, expression/identity bases, pose correctives, skin weights, joint regressor,
  faces). It is small (a FLAME-sized head is a few MB) and makes the file self-contained.
* the **Gaussians**, N of them, each bound to the rig's LOD-0 surface: three LOD-0 vertex
  ids with barycentric weights (a vertex of LOD k sits on an LOD-0 face, see
  ``head.lod.lod_binding``; a vertex binding is weights (1, 0, 0)), an offset and a
  rotation in the local frame of its LOD-0 face, scale, opacity and C feature channels
  (the first three are RGB); plus per-Gaussian ``lod`` (0..2, -1 = every LOD),
  ``split_layer`` (-1 = not an expression split Gaussian, 0..L), ``parent`` (-1 none),
  ``soft_mask`` logit and ``region`` (0 head, 1 split, 2 shoulder).

``animate`` deforms the LOD-0 mesh with blend shapes and linear blend skinning and then
places each Gaussian on the deformed surface (deform-then-interpolate), so every LOD
deforms exactly like the subdivided mesh and rotations follow the surface's local frames.
Gaussians with no face (shoulders, ``frame_face == -1``) follow the root joint rigidly.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import torch

from avatar_core.camera import Camera
from avatar_core.errors import AvatarFileError, ParameterError
from avatar_core.gaussians.frame import GaussianFrame
from avatar_core.head import lbs
from avatar_core.head.model import JOINT_NAMES, HeadModel, check_param, expression_vector
from avatar_core.rotation import matrix_to_quaternion, quaternion_multiply

ALL_LODS = -1


def face_frames(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Orthonormal frame of each triangle: vertices [B, V, 3], faces [F, 3] -> [B, F, 3, 3].

    Columns are (tangent along edge 0->1, bitangent, normal); right-handed.
    """
    a = vertices[:, faces[:, 0]]
    b = vertices[:, faces[:, 1]]
    c = vertices[:, faces[:, 2]]
    t = b - a
    n = torch.cross(t, c - a, dim=-1)
    t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    bt = torch.cross(n, t, dim=-1)
    return torch.stack([t, bt, n], -1)


STRETCH_RANGE = (0.5, 3.0)


def face_stretch(vertices: torch.Tensor, rest: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Linear stretch of each triangle from the rest rig: vertices [B, V, 3], rest [V, 3],
    faces [F, 3] -> [B, F] = sqrt(area / rest area), clamped to ``STRETCH_RANGE``."""
    def twice_area(v):
        a, b, c = v[..., faces[:, 0], :], v[..., faces[:, 1], :], v[..., faces[:, 2], :]
        return torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
    rest2 = twice_area(rest)[None]
    ok = rest2 > 1e-10  # a degenerate rest face (a sliver) keeps its Gaussians' size
    ratio = torch.where(ok, twice_area(vertices) / rest2.clamp_min(1e-10), torch.ones_like(rest2))
    return ratio.clamp_min(0).sqrt().clamp(*STRETCH_RANGE)


@dataclasses.dataclass
class Avatar:
    """A multi-LOD Gaussian head avatar. Shapes: V0 rig vertices, F0 rig faces, N Gaussians."""

    # rig (LOD 0, identity baked)
    rig_template: torch.Tensor        # [V0, 3]
    rig_faces: torch.Tensor           # [F0, 3] int64
    rig_exprdirs: torch.Tensor        # [V0, 3, E]
    rig_shapedirs: torch.Tensor       # [V0, 3, S'] identity basis kept for tweaks
    rig_posedirs: torch.Tensor        # [V0, 3, P]
    rig_weights: torch.Tensor         # [V0, J]
    rig_j_regressor: torch.Tensor     # [J, V0]
    rig_parents: torch.Tensor         # [J] int64
    # Gaussians
    bind_ids: torch.Tensor            # [N, 3] int64 LOD-0 vertex ids (ignored where frame_face < 0)
    bind_bary: torch.Tensor           # [N, 3]
    frame_face: torch.Tensor          # [N] int64 LOD-0 face giving the local frame, -1 = root joint
    offset: torch.Tensor              # [N, 3] local frame (root-joint frame where frame_face < 0)
    rotation: torch.Tensor            # [N, 4] local quaternion (w, x, y, z)
    log_scale: torch.Tensor           # [N, 3]
    opacity_logit: torch.Tensor       # [N]
    features: torch.Tensor            # [N, C]
    lod: torch.Tensor                 # [N] int8: 0..2, -1 = all LODs
    split_layer: torch.Tensor         # [N] int8: -1 none, 0..L
    parent: torch.Tensor              # [N] int64, -1 none; parents precede children
    soft_mask: torch.Tensor           # [N] logit of the soft mask
    region: torch.Tensor              # [N] int8
    # metadata
    expr_names: List[str] = dataclasses.field(default_factory=list)
    joint_names: List[str] = dataclasses.field(default_factory=lambda: list(JOINT_NAMES))
    head_name: str = ""
    head_identity: str = ""
    split_k: int = 2
    split_levels: int = 0
    # optional extras
    source: Dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)   # fitted source camera/params:
    # K [3, 3], viewmat [4, 4], width, height, expression [E], pose [J, 3], translation [3], shape;
    # as the avatar file stores them. Read the camera with ``source_camera``.
    refiner_state: Optional[Dict[str, torch.Tensor]] = None
    refiner_config: Dict = dataclasses.field(default_factory=dict)
    info: Dict = dataclasses.field(default_factory=dict)                        # free-form (metrics, quality)

    GAUSSIAN_FIELDS = ("bind_ids", "bind_bary", "frame_face", "offset", "rotation", "log_scale",
                       "opacity_logit", "features", "lod", "split_layer", "parent", "soft_mask", "region")
    RIG_FIELDS = ("rig_template", "rig_faces", "rig_exprdirs", "rig_shapedirs", "rig_posedirs",
                  "rig_weights", "rig_j_regressor", "rig_parents")

    # ------------------------------------------------------------------ basics
    @property
    def num_gaussians(self) -> int:
        return int(self.offset.shape[0])

    @property
    def num_expr(self) -> int:
        return int(self.rig_exprdirs.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.features.shape[-1])

    @property
    def device(self) -> torch.device:
        return self.offset.device

    def lod_counts(self) -> Dict[int, int]:
        """Number of Gaussians rendered at each LOD (head of that LOD + shared ones)."""
        return {k: int(((self.lod == k) | (self.lod == ALL_LODS)).sum()) for k in self.available_lods()}

    def available_lods(self) -> List[int]:
        levels = sorted(set(int(x) for x in self.lod.unique().tolist()) - {ALL_LODS})
        return levels or [0]

    SOURCE_CAMERA_KEYS = ("K", "viewmat", "width", "height")

    @property
    def has_source_camera(self) -> bool:
        return all(k in self.source for k in self.SOURCE_CAMERA_KEYS)

    def source_camera(self, size: Optional[int] = None) -> Camera:
        """The camera the avatar was fitted through (batch 1, float32, on the CPU), resized so
        that its longer side is ``size`` pixels (None: as fitted). AvatarFileError when the
        avatar has none (``has_source_camera``)."""
        if not self.has_source_camera:
            raise AvatarFileError("The avatar has no fitted source camera (reconstruct it with this version).")
        s = self.source
        w, h = (int(torch.as_tensor(s[k]).reshape(-1)[0]) for k in ("width", "height"))
        cam = Camera(torch.as_tensor(s["K"]).float().cpu(), torch.as_tensor(s["viewmat"]).float().cpu(), w, h)
        if size is None:
            return cam
        scale = size / max(w, h)
        return cam.scaled(max(1, int(round(w * scale))), max(1, int(round(h * scale))))

    def tensors(self) -> Dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.RIG_FIELDS + self.GAUSSIAN_FIELDS}

    def to(self, device=None, dtype=None) -> "Avatar":
        def mv(t):
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype or t.dtype)
            return t.to(device=device)
        fields = {n: mv(t) for n, t in self.tensors().items()}
        src = {k: mv(v) for k, v in self.source.items()}
        return dataclasses.replace(self, **fields, source=src)

    def parameters_dict(self) -> Dict[str, torch.Tensor]:
        """The optimisable float tensors of the Gaussians."""
        return {n: getattr(self, n) for n in ("offset", "rotation", "log_scale", "opacity_logit",
                                              "features", "soft_mask")}

    def subset(self, index: torch.Tensor) -> "Avatar":
        """A new avatar with only the Gaussians at ``index`` (parents remapped, -1 if dropped)."""
        index = index.to(self.device)
        remap = torch.full((self.num_gaussians,), -1, dtype=torch.long, device=self.device)
        remap[index] = torch.arange(index.numel(), device=self.device)
        fields = {n: getattr(self, n)[index] for n in self.GAUSSIAN_FIELDS}
        par = fields["parent"]
        fields["parent"] = torch.where(par >= 0, remap[par.clamp_min(0)], par)
        return dataclasses.replace(self, **fields)

    # ------------------------------------------------------------------ selection
    def select(self, lod: int = 2, layers: Optional[Sequence[int]] = None,
               mask_threshold: float = 0.5, regions: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Indices of the Gaussians rendered at ``lod`` with split ``layers`` (None = all) whose
        soft mask (ANDed with every ancestor's, delayed filtering) passes ``mask_threshold``."""
        keep = self.effective_mask(hard=True, threshold=mask_threshold) > 0.5
        lods = self.available_lods()
        if lod not in lods:
            raise ParameterError(f"lod {lod} is not in this avatar; it has LODs {lods}.")
        keep &= (self.lod == lod) | (self.lod == ALL_LODS)
        if layers is not None:
            allowed = torch.tensor(sorted(set(int(x) for x in layers)), device=self.device, dtype=self.split_layer.dtype)
            keep &= (self.split_layer < 0) | torch.isin(self.split_layer, allowed)
        if regions is not None:
            allowed = torch.tensor(list(regions), device=self.device, dtype=self.region.dtype)
            keep &= torch.isin(self.region, allowed)
        return torch.nonzero(keep)[:, 0]

    def effective_mask(self, hard: bool = True, threshold: float = 0.5) -> torch.Tensor:
        """Per-Gaussian mask [N] in {0, 1} (hard) or a straight-through estimate (hard=False).

        m_i = H(sigmoid(s_i) - t) for split Gaussians (1 for the rest), ANDed with the parent's
        mask. With hard=False the forward value is the same binary mask but the gradient flows
        through sigmoid(s_i) (straight-through estimator), as in SplitAvatar.
        """
        soft = torch.sigmoid(self.soft_mask)
        binary = (soft >= threshold).to(soft.dtype)
        m = binary if hard else binary + soft - soft.detach()
        is_split = self.split_layer >= 1  # layer 0 (G0) is always on
        m = torch.where(is_split, m, torch.ones_like(m))
        if self.split_levels > 0 and bool(is_split.any()):
            for layer in range(1, self.split_levels + 1):
                idx = torch.nonzero(self.split_layer == layer)[:, 0]
                if idx.numel() == 0:
                    continue
                par = self.parent[idx]
                parent_m = torch.where(par >= 0, m[par.clamp_min(0)], torch.ones_like(m[idx]))
                m = m.index_put((idx,), m[idx] * parent_m)
        return m

    # ------------------------------------------------------------------ animation
    def expression_vector(self, expression, batch: Optional[int]) -> torch.Tensor:
        return expression_vector(expression, self.expr_names, batch, self.device, self.offset.dtype,
                                 f"this avatar's head ({self.head_name})")

    def rig_model(self) -> HeadModel:
        """The avatar's LOD-0 rig as a HeadModel on the CPU (same topology as its head model; the
        person's identity is in its template), e.g. to retarget a motion to it."""
        return HeadModel(name=self.head_name or "avatar", v_template=self.rig_template.cpu(),
                         faces=self.rig_faces.cpu(), shapedirs=self.rig_shapedirs.cpu(),
                         exprdirs=self.rig_exprdirs.cpu(), expr_names=list(self.expr_names),
                         posedirs=self.rig_posedirs.cpu(), j_regressor=self.rig_j_regressor.cpu(),
                         lbs_weights=self.rig_weights.cpu(), parents=self.rig_parents.cpu().to(torch.long))

    def deform_rig(self, expression=None, pose=None, translation=None, shape=None):
        """Deform the LOD-0 rig.  Returns (vertices [B, V0, 3], transforms [B, J, 4, 4])."""
        B = _batch(expression, pose, translation, shape)
        dev, dt = self.device, self.offset.dtype
        e = self.expression_vector(expression, B)
        J = self.rig_weights.shape[1]
        theta = check_param("pose", pose, (J, 3), B, dev, dt)
        v = self.rig_template[None]
        if shape is not None:
            s = check_param("shape", shape, (self.rig_shapedirs.shape[-1],), B, dev, dt)
            v = v + lbs.blend_shapes(s, self.rig_shapedirs)
        v = v.expand(B if B is not None else 1, -1, -1)
        t = None if translation is None else check_param("translation", translation, (3,), B, dev, dt)
        verts, _, transforms = lbs.deform(v, e, self.rig_exprdirs, self.rig_j_regressor, self.rig_posedirs,
                                          self.rig_weights, self.rig_parents, theta, t)
        return verts, transforms

    def place_means(self, verts: torch.Tensor, frames: torch.Tensor, transforms: torch.Tensor,
                    index: torch.Tensor) -> torch.Tensor:
        """Gaussian centres on a deformed rig: verts [B, V0, 3], face frames [B, F0, 3, 3]
        (``face_frames``), joint transforms [B, J, 4, 4], Gaussians ``index`` [n] -> [B, n, 3].

        mean = sum_i bary_i * verts[ids_i] + R_face @ offset; Gaussians without a face
        (shoulders) sit at the root transform and turn with it.
        """
        ids, bary, face = self.bind_ids[index], self.bind_bary[index], self.frame_face[index]
        has_face = face >= 0
        R = torch.where(has_face[None, :, None, None], frames[:, face.clamp_min(0)],
                        transforms[:, 0, :3, :3][:, None])  # [B, n, 3, 3]
        surf = (verts[:, ids] * bary[None, :, :, None]).sum(2)  # [B, n, 3]
        base = torch.where(has_face[None, :, None], surf, transforms[:, 0, :3, 3][:, None])
        return base + (R @ self.offset[index][None, :, :, None])[..., 0]

    def animate(self, expression=None, pose=None, translation=None, lod: int = 2,
                layers: Optional[Sequence[int]] = None, mask_threshold: float = 0.5,
                shape=None, training: bool = False, index: Optional[torch.Tensor] = None) -> GaussianFrame:
        """One frame (or a batch) of world-space Gaussians.

        Args:
            expression: [B, E] or {name: value}; pose: [B, J, 3] axis-angle (root, neck, jaw,
                eye_L, eye_R); translation: [B, 3]; shape: [B, S'] identity delta or None.
            lod: 0..2. layers: split layers to include (None = all). mask_threshold: soft-mask
                threshold. training: keep every Gaussian of the LOD and multiply opacity by the
                straight-through mask, so gradients reach the soft masks (delayed filtering).
            index: precomputed Gaussian indices (skips selection; for fast loops).
        Returns:
            GaussianFrame with [B, N_sel, ...] tensors; differentiable w.r.t. every input and
            every Gaussian attribute.
        """
        verts, transforms = self.deform_rig(expression, pose, translation, shape)
        B = verts.shape[0]
        if index is None:
            # training keeps every Gaussian of the LOD (threshold 0) and gates opacity instead
            index = self.select(lod, layers, 0.0 if training else mask_threshold)
        g = {n: getattr(self, n)[index] for n in ("rotation", "log_scale", "opacity_logit", "features")}
        frames = face_frames(verts, self.rig_faces)  # [B, F0, 3, 3]
        means = self.place_means(verts, frames, transforms, index)
        frame_q = matrix_to_quaternion(frames)    # [B, F0, 4]
        ff = self.frame_face[index]
        has_face = ff >= 0
        root_q = matrix_to_quaternion(transforms[:, 0, :3, :3])
        q = torch.where(has_face[None, :, None], frame_q[:, ff.clamp_min(0)], root_q[:, None])
        quats = quaternion_multiply(q, g["rotation"][None].expand(B, -1, -1))
        scales = torch.exp(g["log_scale"])[None].expand(B, -1, -1)
        # a Gaussian on a stretched face grows with it (isotropically, by the square root of the
        # face's area ratio to the rest rig), so a lid closing over the eye or lips parting
        # stay covered instead of opening gaps between fixed-size Gaussians
        stretch = face_stretch(verts, self.rig_template, self.rig_faces)  # [B, F0]
        grow = torch.where(has_face[None], stretch[:, ff.clamp_min(0)], torch.ones_like(stretch[:, :1]))
        scales = scales * grow[..., None]
        opac = torch.sigmoid(g["opacity_logit"])
        if training:
            opac = opac * self.effective_mask(hard=False, threshold=mask_threshold)[index]
        feats = g["features"][None].expand(B, -1, -1)
        return GaussianFrame(means, quats, scales, opac[None].expand(B, -1), feats)


def _batch(*params) -> Optional[int]:
    for p in params:
        if isinstance(p, torch.Tensor) and p.dim() >= 2:
            return int(p.shape[0])
    return None

