"""Initialising an avatar's Gaussians from the photo, before any optimisation.

* **Head and split Gaussians (OAFF's idea, without a network).** Each Gaussian is placed on
  the fitted mesh and projected into the source camera. The mesh's depth buffer says
  whether the photo sees it; seen ones take the photo's colour (blurred to the Gaussian's
  footprint), weighted by how squarely the surface faces the camera. Unseen ones take the
  colour of their mirror image across the head's symmetry plane when that is seen, and
  otherwise the colour of the nearest seen Gaussian, smoothed over their neighbours (a
  harmonic-style fill: the back of the head continues the hair and neck it meets).
* **Shoulder/hair plane (OMG's multi-region idea).** Pixels of the person matte that the
  head mesh does not cover get one Gaussian per ``stride`` x ``stride`` cell, on the cell's
  viewing ray. The depth along the ray comes from the nearest head depth close to the head
  (hair) and a plane through the head centre, curved back at the sides, far from it
  (shoulders), smoothed so that neighbouring Gaussians never tear apart in a turned view.
  Plane Gaussians above the chin are bound to the head (they turn with it); the rest to
  the root joint.

Shapes: S crop size, N Gaussians, V0/F0 LOD-0 vertices/faces.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from avatar_core.gaussians.avatar import Avatar, face_frames
from avatar_core.head import lbs
from avatar_core.head.lod import edges_of, subdivide_once
from avatar_core.head.model import HeadModel
from avatar_core.camera import Camera
from avatar_core.regions import REGION_HEAD, REGION_SHOULDER
from avatar_core.render.mesh import MeshRaster, rasterize_mesh

log = logging.getLogger(__name__)

# init_colours: weight of the surrounding well-seen colour against a grazing view's own
GRAZING_PRIOR = 0.5
# the back of the skull (``_scalp_prior``): the ears lie this far behind the eyes (metres), and
# behind them the hair reaches this far below the eyes' height (the nape's hairline, about the
# mouth's height)
EARS_BEHIND_EYES = 0.095
NAPE_HAIRLINE = 0.06
OUTLINE_HAIR_MIN = 20    # the hair round the head's outline colours the back of the skull when it has this many Gaussians
PRIOR_CLEARANCE = 0.01   # the priors start this far from the nearest seen Gaussian, in full at twice it
EYE_MOUTH_WORDS = ("eye", "mouth", "brow", "cheek", "lip", "smile", "blink", "squint")


@dataclasses.dataclass
class SourceView:
    """The photo as the optimisation sees it.

    image [S, S, 3] and alpha [S, S] float tensors in [0, 1]; camera batch 1 at S x S;
    params: expression [1, E], pose [1, J, 3], translation [1, 3] reproducing the fitted head;
    inside [S, S] bool: the crop pixels that come from the photo (None: all; the padding where
    the photo ends inside the crop says nothing, not "background").
    """

    image: torch.Tensor
    alpha: torch.Tensor
    camera: Camera
    params: Dict[str, torch.Tensor]
    inside: Optional[torch.Tensor] = None

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def inside_at(self, size: int) -> torch.Tensor:
        """[size, size] float in [0, 1]: the share of each pixel that comes from the photo."""
        if self.inside is None:
            return torch.ones(size, size)
        x = self.inside.float()[None, None]
        if size != self.size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x[0, 0].clamp(0.0, 1.0)

    def resized(self, size: int):
        """(image [s, s, 3], alpha [s, s], camera) at another resolution (area-filtered)."""
        if size == self.size:
            return self.image, self.alpha, self.camera
        x = torch.cat([self.image, self.alpha[..., None]], -1).permute(2, 0, 1)[None]
        y = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        y = y[0].permute(1, 2, 0).clamp(0.0, 1.0)
        return y[..., :3].contiguous(), y[..., 3].contiguous(), self.camera.scaled(size, size)


def split_vertices(head: HeadModel, fraction: float) -> torch.Tensor:
    """LOD-0 vertex ids of the eyes/mouth region for the split layers (SplitAvatar's G0).

    Each eye, brow, cheek and mouth expression's displacement is normalised by its largest
    one (so a blink counts as much as a smile), a vertex's activity is its largest normalised
    displacement, and the ``fraction`` of vertices with the highest activity is returned.
    Jaw expressions move the whole chin rigidly and are left out; for FLAME's unnamed
    expressions every expression counts.
    """
    names = [n.lower() for n in head.expr_names]
    pick = [i for i, n in enumerate(names) if any(w in n for w in EYE_MOUTH_WORDS) and not n.startswith("jaw")]
    if len(pick) < 4:
        pick = list(range(len(names)))
    disp = head.exprdirs[..., pick].norm(dim=1)  # [V, E']
    act = (disp / disp.amax(0).clamp_min(1e-12)).amax(1)  # [V]
    k = max(1, int(round(fraction * head.num_vertices)))
    return torch.topk(act, k).indices.sort().values


def source_raster(avatar: Avatar, view: SourceView) -> tuple:
    """The fitted LOD-0 mesh at the source pose, rasterised at the crop size.

    Returns (vertices [V0, 3], raster MeshRaster [S, S]).
    """
    with torch.no_grad():
        verts, _ = avatar.deform_rig(**view.params)
    v = verts[0]
    cam = view.camera
    ras = rasterize_mesh(v, avatar.rig_faces, cam.K[0], cam.viewmat[0], cam.width, cam.height)
    return v, ras


def _blurred(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """[S, S, C] Gaussian-blurred (reflect borders)."""
    if sigma < 0.3:
        return image
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=image.dtype)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    w = w / w.sum()
    C = image.shape[-1]
    t = image.permute(2, 0, 1)[None]
    t = F.pad(t, (r, r, r, r), mode="reflect")
    t = F.conv2d(t, w.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    t = F.conv2d(t, w.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    return t[0].permute(1, 2, 0)


def _eroded(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """[S, S] matte eroded by ``radius`` pixels (a min filter)."""
    x = alpha[None, None]
    return -F.max_pool2d(-x, 2 * radius + 1, stride=1, padding=radius)[0, 0]


def sample_image(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of [H, W, C] at pixel coordinates uv [N, 2] (integer = pixel centre)."""
    H, W = image.shape[:2]
    gx = uv[:, 0] / max(W - 1, 1) * 2 - 1
    gy = uv[:, 1] / max(H - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], -1)[None, None]
    out = F.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear", padding_mode="border",
                        align_corners=True)
    return out[0, :, 0].T


@dataclasses.dataclass
class Visibility:
    """Per Gaussian, at the source pose: facing [N] = cos(normal, direction to the camera)
    (1 for non-surface Gaussians), seen [N] bool (the depth buffer agrees), uv [N, 2], z [N]."""

    facing: torch.Tensor
    seen: torch.Tensor
    uv: torch.Tensor
    z: torch.Tensor


def gaussian_visibility(avatar: Avatar, view: SourceView, raster: MeshRaster,
                        verts: torch.Tensor, tolerance: float = 0.004) -> Visibility:
    """Which Gaussians the photo sees (depth buffer), and how squarely (face normal)."""
    N = avatar.num_gaussians
    with torch.no_grad():
        frame = avatar.animate(**view.params, index=torch.arange(N, device=avatar.device))
        p = frame.means[0]
        cam = view.camera
        uv, z = cam.project(p[None])
        uv, z = uv[0], z[0]
        frames = face_frames(verts[None], avatar.rig_faces)[0]  # [F0, 3, 3]
        has_face = avatar.frame_face >= 0
        n = frames[avatar.frame_face.clamp_min(0), :, 2]
        to_cam = cam.position[0][None] - p
        to_cam = to_cam / to_cam.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        facing = torch.where(has_face, (n * to_cam).sum(-1), torch.ones_like(z))
        S = cam.width
        j = torch.round(uv[:, 0]).long()
        i = torch.round(uv[:, 1]).long()
        inside = (j >= 0) & (j < S) & (i >= 0) & (i < cam.height) & (z > 1e-3)
        zb = torch.full_like(z, float("inf"))
        zb[inside] = raster.depth.float()[i[inside], j[inside]]
        seen = inside & (z <= zb + tolerance) & (facing > 0.0)
    return Visibility(facing, seen, uv, z)


def _knn_tree(points: np.ndarray):
    from scipy.spatial import cKDTree
    return cKDTree(points)


def _rest_positions(avatar: Avatar, idx: torch.Tensor) -> torch.Tensor:
    """Rest-space surface points of face-bound Gaussians idx: [n, 3]."""
    ids = avatar.bind_ids[idx]
    b = avatar.bind_bary[idx]
    return (avatar.rig_template[ids] * b[..., None]).sum(1)


def init_colours(avatar: Avatar, view: SourceView, vis: Visibility, groups: Dict[str, torch.Tensor],
                 footprint_px: Dict[str, float], fill_from: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Set RGB of face-bound Gaussian groups from the photo (direct, mirrored, filled).

    Args:
        groups: name -> Gaussian indices (e.g. "lod0", "lod1", "lod2", "split").
        footprint_px: name -> blur sigma in crop pixels matching the Gaussians' size.
        fill_from: the group whose final colours fill Gaussians no view sees (for groups
            without a meaningful mirror, e.g. split layers); None = each group fills itself.
    Returns:
        name -> confidence [n] in [0, 1] of the photo evidence used.
    """
    confidence = {}
    pyramid = {}
    inner_alpha = _eroded(view.alpha, radius=max(1, view.size // 128))
    for name, idx in groups.items():
        if idx.numel() == 0:
            continue
        sigma = round(footprint_px.get(name, 0.0) * 2) / 2
        if sigma not in pyramid:
            pyramid[sigma] = _blurred(view.image, sigma)
        img = pyramid[sigma]
        col = sample_image(img, vis.uv[idx])
        # grazing views still give the right colour (the hair beside a face covers the side of
        # the head), just with less weight; the mirror then rarely overrides them
        conf = vis.seen[idx].float() * ((vis.facing[idx] + 0.05) / 0.35).clamp(0.05, 1.0)
        # trust the photo only well inside the person's matte: a Gaussian seen where the matte
        # says "background" is a mesh part outside the person, and one on the matte's soft edge
        # would carry the background's colour round to the back of the head
        a = sample_image(inner_alpha[..., None], vis.uv[idx])[:, 0]
        conf = conf * ((a - 0.5) / 0.4).clamp(0.0, 1.0)
        rest = _rest_positions(avatar, idx).cpu().numpy()
        tree = _knn_tree(rest)
        if name.startswith("lod"):
            # mirror across x = 0 (the head model's symmetry plane)
            mirrored = rest * np.array([-1.0, 1.0, 1.0])
            dist, mi = tree.query(mirrored, k=1, workers=-1)
            mi = torch.as_tensor(mi, device=idx.device)
            conf_m = conf[mi] * 0.8 * (1.0 - conf)
            col_m = col[mi]
        else:
            conf_m = torch.zeros_like(conf)
            col_m = col
        wsum = conf + conf_m
        out = (col * conf[:, None] + col_m * conf_m[:, None]) / wsum.clamp_min(1e-6)[:, None]
        known = wsum > 0.04
        if name.startswith("lod"):
            # a surface seen at a grazing angle takes its colour from a thin band of pixels
            # (often the hair's shadow or the background at the silhouette), and the mirror is
            # mostly as grazing; such Gaussians lean on the squarely seen surface around them
            # (a prior of weight GRAZING_PRIOR against the photo's conf), so a turned head
            # shows no dark or pale streaks where the photo saw the surface edge-on
            sure = wsum > 0.6
            if int(sure.sum()) > 16 and not bool(sure.all()):
                prior = _fill(rest, out, sure, iterations=4)
                w = GRAZING_PRIOR * (1.0 - wsum.clamp(0.0, 1.0))
                out = torch.where(known[:, None], (out * wsum[:, None] + prior * w[:, None]) / (wsum + w)[:, None], out)
        if fill_from is not None and not name.startswith("lod") and fill_from in groups:
            # the head surface under them: unknown ones take its colour, grazing ones lean on it
            src = groups[fill_from]
            src_rest = _rest_positions(avatar, src).cpu().numpy()
            _, nn = _knn_tree(src_rest).query(rest, k=1, workers=-1)
            under = avatar.features[src[torch.as_tensor(nn, device=idx.device)], :3].to(out.dtype)
            w = GRAZING_PRIOR * (1.0 - wsum.clamp(0.0, 1.0))
            out = torch.where(known[:, None], (out * wsum[:, None] + under * w[:, None]) / (wsum + w)[:, None], under)
        elif bool(known.any()) and not bool(known.all()):
            out = _fill(rest, out, known)
            out = _scalp_prior(avatar, rest, out, known, wsum)
        elif not bool(known.any()):
            out[:] = torch.tensor([0.6, 0.45, 0.38], dtype=out.dtype)
        avatar.features[idx, :3] = out.clamp(0.0, 1.0).to(avatar.features.dtype)
        confidence[name] = wsum.clamp(0.0, 1.0)
    return confidence


def _scalp_prior(avatar: Avatar, rest: np.ndarray, colours: torch.Tensor, known: torch.Tensor,
                 confidence: torch.Tensor) -> torch.Tensor:
    """Unseen Gaussians of the skull take the median colour of the well-seen skull above the
    brows (hair for most people, scalp for the bald) above the hairline: just over the eyes in
    front of the ears, ``NAPE_HAIRLINE`` below them behind the ears. Unseen ones behind the
    ears and below that line (the nape) take the median colour of the well-seen cheeks. The
    nearest-colour fill alone spread whatever the silhouette happened to show there: the
    ears' skin ran round the back of the head as a band at their height, and the collar's
    white up the nape."""
    eyes = avatar.rig_j_regressor[3:5] @ avatar.rig_template
    eyes_y, eyes_z = float(eyes[:, 1].mean()), float(eyes[:, 2].mean())
    x = torch.as_tensor(rest[:, 0], dtype=colours.dtype)
    y = torch.as_tensor(rest[:, 1], dtype=colours.dtype)
    z = torch.as_tensor(rest[:, 2], dtype=colours.dtype)
    zmax = float(z.max())
    # the seen skull: well above the brows and behind the forehead
    skull = (y > eyes_y + 0.06) & (z < zmax - 0.04) & (confidence > 0.3)
    if int(skull.sum()) < 20:
        return colours
    hair = colours[skull].median(0).values
    # behind the ears the hair is the colour of the solid hair the photo shows round the head's
    # outline (the plane's head-bound Gaussians and the shell swept from them; the outline's
    # soft edge mixes in the background, and the mouth's dark backstop, head-bound too, lies
    # below the eyes), where there is enough of it: biden's seen crown is scalp under thin
    # white hair, and the back of his head was bare skin under the white band of his side hair
    hb = torch.nonzero((avatar.region == REGION_SHOULDER) & (avatar.frame_face >= 0)
                       & (torch.sigmoid(avatar.opacity_logit) > 0.85))[:, 0]
    hb = hb[_rest_positions(avatar, hb)[:, 1] > eyes_y - 0.02]
    hair_back = hair
    if int(hb.numel()) >= OUTLINE_HAIR_MIN:
        hair_back = avatar.features[hb, :3].detach().to(colours.dtype).median(0).values
    # only away from what the photo shows: the backs of the ears, next to their seen fronts,
    # keep the fill (given the hair's colour, their rims showed dark in the photo's own view)
    kn = known.cpu().numpy()
    near = torch.zeros(len(rest), dtype=colours.dtype)
    if kn.any():
        near = torch.as_tensor(_knn_tree(rest[kn]).query(rest, k=1, workers=-1)[0], dtype=colours.dtype)
    unseen = (~known).to(colours.dtype) * ((near - PRIOR_CLEARANCE) / PRIOR_CLEARANCE).clamp(0.0, 1.0)
    behind_ears = torch.sigmoid((eyes_z - EARS_BEHIND_EYES - z) / 0.01)
    hairline = eyes_y + 0.01 - (0.01 + NAPE_HAIRLINE) * behind_ears
    above = torch.sigmoid((y - hairline) / 0.01)
    w_hair = above * torch.sigmoid((zmax - 0.06 - z) / 0.01) * unseen
    target = hair * (1 - behind_ears[:, None]) + hair_back * behind_ears[:, None]
    out = colours * (1 - w_hair[:, None]) + target * w_hair[:, None]
    cheeks = ((y < eyes_y - 0.02) & (y > eyes_y - 0.06) & (x.abs() > 0.02) & (x.abs() < 0.05)
              & (z > eyes_z - 0.03) & (confidence > 0.6))
    if int(cheeks.sum()) >= 20:
        w_skin = (1 - above) * behind_ears * unseen
        out = out * (1 - w_skin[:, None]) + colours[cheeks].median(0).values * w_skin[:, None]
    return out


def _fill(rest: np.ndarray, colours: torch.Tensor, known: torch.Tensor, iterations: int = 12) -> torch.Tensor:
    """Nearest-known colour for unknown points, then smoothed among unknown neighbours."""
    kn = known.cpu().numpy()
    tree_known = _knn_tree(rest[kn])
    _, nn = tree_known.query(rest[~kn], k=4, workers=-1)
    known_idx = torch.as_tensor(np.nonzero(kn)[0])
    out = colours.clone()
    out[~known] = colours[known_idx[torch.as_tensor(nn)]].mean(1)
    # a few Jacobi sweeps over the 6 nearest neighbours of each unknown point
    _, nb = _knn_tree(rest).query(rest[~kn], k=7, workers=-1)
    nb = torch.as_tensor(nb[:, 1:])  # [U, 6]
    unk = torch.nonzero(~known)[:, 0]
    vals = out[unk]
    # neighbours with a known colour contribute a constant; the unknown ones are gathered from
    # ``vals`` each sweep (row U of the padded array is zero for the known neighbours)
    slot = torch.full((out.shape[0],), vals.shape[0], dtype=torch.long)
    slot[unk] = torch.arange(unk.numel())
    nb_slot = slot[nb].reshape(-1)
    fixed = (out[nb] * known[nb, None].to(out.dtype)).sum(1)
    pad = torch.zeros(1, out.shape[1], dtype=out.dtype)
    for _ in range(iterations):
        gathered = torch.cat([vals, pad]).index_select(0, nb_slot).view(-1, 6, out.shape[1]).sum(1)
        vals = 0.5 * vals + (0.5 / 6) * (fixed + gathered)
    out[unk] = vals
    return out


@dataclasses.dataclass
class LodChain:
    """Faces of every LOD and the edges each subdivision step splits: faces[k] [F_k, 3],
    edges[k] [E_k, 2] (LOD k -> k+1), counts[k] vertices of LOD k."""

    faces: list
    edges: list
    counts: list


def lod_chain(faces0: torch.Tensor, num_vertices0: int, max_lod: int) -> LodChain:
    faces, edges, counts = [faces0.cpu()], [], [num_vertices0]
    for _ in range(max_lod):
        f, e = subdivide_once(faces[-1], counts[-1])
        faces.append(f)
        edges.append(e)
        counts.append(counts[-1] + e.shape[0])
    return LodChain(faces, edges, counts)


def local_edge_length(rest: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Mean length of the edges at each vertex: rest [V, 3], faces [F, 3] -> [V]."""
    e = edges_of(faces)
    ln = (rest[e[:, 0]] - rest[e[:, 1]]).norm(dim=-1)
    V = rest.shape[0]
    s = torch.zeros(V, dtype=rest.dtype).index_add_(0, e[:, 0], ln).index_add_(0, e[:, 1], ln)
    c = torch.zeros(V, dtype=rest.dtype).index_add_(0, e[:, 0], torch.ones_like(ln)) \
        .index_add_(0, e[:, 1], torch.ones_like(ln))
    return s / c.clamp_min(1)


def init_head_scales(avatar: Avatar, chain: LodChain, lods) -> Dict[int, float]:
    """Disc-shaped head Gaussians sized to their LOD's local edge length.

    Returns the median edge length (metres) of each LOD.
    """
    med = {}
    for k in lods:
        idx = torch.nonzero((avatar.lod == k) & (avatar.region == REGION_HEAD))[:, 0]
        assert idx.numel() == chain.counts[k], "head Gaussians of an LOD must follow its vertex order"
        rest = _rest_positions(avatar, idx).cpu()
        edge = local_edge_length(rest, chain.faces[k])
        s = (0.55 * edge).clamp_min(1e-4).to(avatar.log_scale)
        avatar.log_scale[idx, 0] = s.log()
        avatar.log_scale[idx, 1] = s.log()
        avatar.log_scale[idx, 2] = (0.25 * s).log()
        med[k] = float(edge.median())
    return med


# ------------------------------------------------------------------------------------ plane
@dataclasses.dataclass
class PlanePoints:
    """Shoulder/hair Gaussians in world space at the source pose.

    points [M, 3]; colours [M, 3]; opacity [M]; scale [M] in-plane sigma (metres);
    normal [M, 3] unit normals of the discs (viewing rays on the plane, the surface on the
    bust); head_bound [M] bool (hair: follows the head); seen [M] bool (coloured from the
    photo; the bust's unseen back and sides are not); stretch [M] >= 1: the disc's sigma
    along its slope (the source camera's ray laid into the disc) is ``stretch`` x ``scale``,
    so that a disc on a surface the camera sees obliquely covers its pixel's whole footprint
    on that surface, not only its projection.
    """

    points: torch.Tensor
    colours: torch.Tensor
    opacity: torch.Tensor
    scale: torch.Tensor
    normal: torch.Tensor
    head_bound: torch.Tensor
    seen: Optional[torch.Tensor] = None
    stretch: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.seen is None:
            self.seen = torch.ones(self.points.shape[0], dtype=torch.bool)
        if self.stretch is None:
            self.stretch = torch.ones(self.points.shape[0], dtype=self.scale.dtype)

    @property
    def count(self) -> int:
        return int(self.points.shape[0])


def plane_points(view: SourceView, raster: MeshRaster, verts: torch.Tensor, chin_y: float,
                 stride: int, face_width_px: float, bust=None) -> PlanePoints:
    """Gaussians for the matte pixels outside the head mesh: on the bust's surface where
    ``bust`` (a ``recon.bust.BustFit``) covers them, with the bust's unseen back and sides
    (``recon.bust.bust_points``), and elsewhere (hair) on an image-aligned plane.

    Args:
        raster: the LOD-0 mesh at the source pose (crop size).
        verts: [V0, 3] posed LOD-0 vertices (world).
        chin_y: world y below which plane Gaussians count as shoulders (bound to the root).
        stride: cell size in crop pixels.
        face_width_px: the face's width in crop pixels (sets how far "near the head" reaches).
        bust: the fitted bust, or None for the plane alone (shoulders included).
    """
    from scipy import ndimage

    cam = view.camera
    S = cam.width
    s = int(stride)
    n = S // s
    crop = n * s
    img = view.image[:crop, :crop]
    alpha = view.alpha[:crop, :crop]
    head = raster.mask[:crop, :crop].cpu().numpy()
    depth = raster.depth[:crop, :crop].float().cpu().numpy()
    # cell averages
    cell_rgb = img.reshape(n, s, n, s, 3).mean((1, 3))
    cell_a = alpha.reshape(n, s, n, s).mean((1, 3))
    head_eroded = ndimage.binary_erosion(head, iterations=max(1, s // 2))
    cell_head = head_eroded.reshape(n, s, n, s).mean((1, 3)) > 0.5
    keep = (cell_a.cpu().numpy() > 0.15) & ~cell_head
    on_bust = None
    if bust is not None:
        on_bust = keep & bust.raster.mask[s // 2:crop:s, s // 2:crop:s].cpu().numpy()
        keep = keep & ~on_bust
    # camera-space z of the head centre: the median depth of the visible head pixels, pushed back
    # by a third of the head's depth extent (visible surface -> centre)
    with torch.no_grad():
        pc = cam.world_to_camera(verts[None])[0]
    z_centre = float(0.5 * (pc[:, 2].min() + pc[:, 2].max()))
    # nearest head pixel's depth, at full resolution
    if head.any():
        dist, (ii, jj) = ndimage.distance_transform_edt(~head, return_indices=True)
        near_depth = depth[ii, jj]
    else:
        dist = np.full(head.shape, 1e6)
        near_depth = np.full(head.shape, z_centre)
    # never in front of the head's centre: the silhouette of a face seen from the front is the
    # cheeks and jaw, well in front of the hair beside them, which would then hang in front of
    # the face in a turned view
    near_depth = np.clip(near_depth, z_centre, z_centre + 0.05)
    if bust is not None and bool(bust.raster.mask.any()):
        # next to the bust (hair on the shoulders), its surface rather than the head's
        bmask = bust.raster.mask[:crop, :crop].cpu().numpy()
        dist_b, (bi, bj) = ndimage.distance_transform_edt(~bmask, return_indices=True)
        closer = dist_b < dist
        near_depth = np.where(closer, bust.raster.depth[:crop, :crop].float().cpu().numpy()[bi, bj], near_depth)
        dist = np.minimum(dist, dist_b)
    reach = max(0.35 * face_width_px, 4.0)
    w = np.exp(-dist / reach)
    zmap = w * near_depth + (1 - w) * z_centre
    # shoulders curve back at the sides (a cylinder of radius ~0.22 m about the body's axis)
    fx = float(cam.fx[0])
    cx, cy = float(cam.cx[0]), float(cam.cy[0])
    u = np.arange(crop)[None, :].repeat(crop, 0).astype(np.float64)
    head_u = float(pc[:, 0].mean() / pc[:, 2].mean() * fx + cx)
    x_m = (u - head_u) * zmap / fx
    zmap = zmap + (1 - w) * 0.5 * x_m ** 2 / 0.22
    # smooth over the person (normalised convolution), so neighbouring cells never tear apart
    person = (alpha.cpu().numpy() > 0.1) | head
    sig = max(2.0, 0.03 * S)
    num = ndimage.gaussian_filter(zmap * person, sig)
    den = ndimage.gaussian_filter(person.astype(np.float64), sig)
    zs = np.where(den > 1e-6, num / np.maximum(den, 1e-6), zmap)
    zcell = zs.reshape(n, s, n, s).mean((1, 3))
    ci, cj = np.nonzero(keep)
    extra = None
    if on_bust is not None:
        from avatar_core.recon.bust import bust_points
        extra = bust_points(bust, cam, view.image, view.alpha, on_bust, s, raster.mask, photo=view.inside)
    if ci.size == 0 and extra is None:
        e = torch.zeros(0, 3)
        return PlanePoints(e, e.clone(), torch.zeros(0), torch.zeros(0), e.clone(), torch.zeros(0, dtype=torch.bool))
    uc = cj * s + (s - 1) / 2.0
    vc = ci * s + (s - 1) / 2.0
    z = zcell[ci, cj]
    dt = verts.dtype
    fy = float(cam.fy[0])
    p_cam = torch.tensor(np.stack([(uc - cx) / fx * z, (vc - cy) / fy * z, z], -1), dtype=dt)
    R = cam.viewmat[0, :3, :3].to(dt)
    t = cam.viewmat[0, :3, 3].to(dt)
    p_world = (p_cam - t) @ R  # R^T (p - t), row vectors
    ray = p_world - cam.position[0].to(dt)
    ray = ray / ray.norm(dim=-1, keepdim=True)
    colours = cell_rgb[torch.as_tensor(ci), torch.as_tensor(cj)].to(dt)
    opac = cell_a[torch.as_tensor(ci), torch.as_tensor(cj)].to(dt).clamp(0.05, 0.97)
    scale = torch.tensor(0.62 * s * z / fx, dtype=dt)
    # hair follows the head: cells above the chin and near the head (shoulders further out
    # stay with the body even where they rise above the chin)
    near_head = torch.as_tensor(dist[ci * s + s // 2, cj * s + s // 2] < 0.45 * face_width_px)
    head_bound = (p_world[:, 1] > chin_y) & near_head
    plane = PlanePoints(p_world, colours, opac, scale.expand(p_world.shape[0]), ray, head_bound)
    # the hair's outline: head-bound cells next to the background
    person_cells = torch.as_tensor(ndimage.binary_erosion(cell_a.cpu().numpy() > 0.15, iterations=1, border_value=1))
    outline = head_bound & ~person_cells[torch.as_tensor(ci), torch.as_tensor(cj)] & (p_world[:, 1] > chin_y + 0.03)
    # the outline's own pixels mix hair with background: the shell takes the colour of the
    # solid hair just inside (a normalised blur of the pixels with alpha > 0.9, ~3 cells wide)
    solid = (alpha.cpu().numpy() > 0.9) & ~head
    sig_in = 3.0 * s
    den_in = ndimage.gaussian_filter(solid.astype(np.float64), sig_in)
    rgb_np = img.cpu().numpy().astype(np.float64)
    inner = np.stack([ndimage.gaussian_filter(rgb_np[..., c] * solid, sig_in) for c in range(3)], -1)
    inner = inner / np.maximum(den_in, 1e-6)[..., None]
    inner_cols = torch.as_tensor(inner[ci * s + s // 2, cj * s + s // 2], dtype=dt)
    ok_inner = torch.as_tensor(den_in[ci * s + s // 2, cj * s + s // 2] > 0.2)
    # (an outline with no solid hair inside it, thin hair over a background, is not swept: its
    # colours are mostly the background's)
    shell_src = PlanePoints(p_world, inner_cols, opac, scale.expand(p_world.shape[0]), ray, head_bound)
    spacing = SHELL_SPACING * s * z_centre / fx
    shell = hair_shell(shell_src, outline & ok_inner, cam, verts, spacing=spacing)
    # the shell is never seen from the source view: each of its Gaussians lies behind the head
    # or the plane's hair where it projects, by a spacing (its inner layers near the sides would
    # otherwise stand in front of the plane's hair, which lies no nearer than the head's centre)
    if shell.count:
        with torch.no_grad():
            suv, sz = cam.project(shell.points[None].to(cam.viewmat.dtype))
        su = np.clip(np.round(suv[0, :, 0].numpy()).astype(np.int64), 0, crop - 1)
        sv = np.clip(np.round(suv[0, :, 1].numpy()).astype(np.int64), 0, crop - 1)
        # (where the head or solid hair covers the whole of a shell Gaussian's footprint)
        cover = ndimage.binary_erosion(head | (alpha.cpu().numpy() > 0.5),
                                       iterations=max(1, int(math.ceil(spacing * fx / z_centre))))
        front = np.where(cover, np.where(head, depth, zs), np.inf)
        hidden = torch.as_tensor(sz[0].numpy() > front[sv, su] + spacing)
        shell = PlanePoints(*(getattr(shell, f.name)[hidden] for f in dataclasses.fields(PlanePoints)))
    parts = [plane, shell]
    if extra is not None:
        m = extra.points.shape[0]
        parts.append(PlanePoints(extra.points.to(dt), extra.colours.to(dt), extra.opacity.to(dt), extra.scale.to(dt),
                                 extra.normal.to(dt), torch.zeros(m, dtype=torch.bool), extra.seen, extra.stretch.to(dt)))
    return concat_points(parts)


def concat_points(parts) -> PlanePoints:
    return PlanePoints(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(PlanePoints)))


# the hair shell swept round the head toward the back from each side of the hair's outline:
# how much of the outline's colour gives way to the mean outline colour at the far end
SHELL_OVERLAP_DEG = 10.0  # how far past the back each side's sweep goes
SHELL_BLEND = 0.5
SHELL_SPACING = 3.0        # cells between the shell's Gaussians along the sweep
SHELL_MIN_RADIUS = 0.7     # outline points nearer the head's vertical axis (in half head widths) are not swept,
SHELL_MAX_RADIUS = 2.2     # nor those further from it (a patch of background the matte kept)
SHELL_MAX_THICKNESS = 0.6  # the hair's thickness over the skull, at most (half head widths)
SHELL_BRIDGE = 0.1         # metres: gaps in a side's outline heights up to this are swept across
SKULL_BINS_DEG = 10.0      # azimuth bins of the skull's radius table


def skull_radius(verts: torch.Tensor, centre: torch.Tensor, up: torch.Tensor, right: torch.Tensor,
                 back: torch.Tensor, bin_h: float):
    """The head's radius about the vertical axis through ``centre``, tabulated by height (bins of
    ``bin_h`` metres) and azimuth (``SKULL_BINS_DEG``; 0 toward ``right``, 90 toward ``back``):
    the largest radius of a vertex in each bin (and the bins above and below it), empty bins
    filled from their azimuthal neighbours, heights without vertices from the nearest row.
    Returns a lookup ``radius(h [P], phi [P] radians) -> [P]``."""
    d = verts - centre
    h = d @ up
    phi = torch.atan2(d @ back, d @ right)
    r = torch.sqrt((d @ right) ** 2 + (d @ back) ** 2)
    h0 = float(h.min())
    nh = int((float(h.max()) - h0) / bin_h) + 1
    na = int(round(360.0 / SKULL_BINS_DEG))
    hi = ((h - h0) / bin_h).long().clamp(0, nh - 1)
    ai = ((phi + math.pi) / (2 * math.pi) * na).long() % na
    table = torch.full((nh * na,), -1.0, dtype=verts.dtype)
    table.scatter_reduce_(0, hi * na + ai, r, reduce="amax")
    table = table.view(nh, na)
    # the bins above and below: a vertex row can fall between two bins
    table = torch.maximum(table, torch.maximum(F.pad(table[1:], (0, 0, 0, 1), value=-1.0),
                                               F.pad(table[:-1], (0, 0, 1, 0), value=-1.0)))
    for _ in range(na // 2):  # empty azimuth bins from their neighbours (circular)
        empty = table < 0
        if not bool(empty.any()):
            break
        nb = torch.maximum(table.roll(1, 1), table.roll(-1, 1))
        table = torch.where(empty, nb, table)
    rows = torch.nonzero((table >= 0).any(1))[:, 0]
    if rows.numel() == 0:
        return lambda hq, pq: torch.zeros_like(hq)
    nearest = rows[(torch.arange(nh)[:, None] - rows[None]).abs().argmin(1)]
    table = table[nearest].clamp_min(0.0)

    def radius(hq: torch.Tensor, pq: torch.Tensor) -> torch.Tensor:
        i = ((hq - h0) / bin_h).long().clamp(0, nh - 1)
        j = ((pq + math.pi) / (2 * math.pi) * na).long() % na
        return table[i, j]
    return radius


def hair_shell(plane: PlanePoints, outline: torch.Tensor, camera, verts: torch.Tensor, spacing: float) -> PlanePoints:
    """Hair with volume: the hair outline's Gaussians (``outline`` [M] bool of ``plane``)
    swept round the head's vertical axis toward the back, from the side the photo shows them
    on to ``SHELL_OVERLAP_DEG`` past the back (the two sweeps meet there), following the skull.

    Each swept copy keeps its outline point's height and lies the hair's thickness over the
    skull (``skull_radius``): at the side the thickness the photo shows there (how far the
    outline lies beyond the head's widest vertex at that height, at most
    ``SHELL_MAX_THICKNESS``), behind
    the head the mean thickness of the outline at that height. So a turned head shows the
    photo's hair outline at every yaw, the back of the head is covered by hair that continues
    the outline's colours (blending toward their mean at the back), and no shell stands off
    the skull where the head is narrower than at its sides (a flat wing, a ghost of the
    outline behind the head). They sit behind the silhouette in the source view (unseen:
    ``seen`` False), follow the head, and lie ``spacing`` metres apart along the sweep."""
    dt = plane.points.dtype
    empty = PlanePoints(*(getattr(plane, f.name)[:0] for f in dataclasses.fields(PlanePoints)))
    if not bool(outline.any()) or spacing <= 0:
        return empty
    verts = verts.to(dt)
    centre = 0.5 * (verts.min(0).values + verts.max(0).values)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=dt)
    half_width = 0.5 * float(verts[:, 0].max() - verts[:, 0].min())
    back = camera.viewmat[0, 2, :3].to(dt)  # the camera's viewing direction: into the scene, toward the back of the head
    back = back - (back @ up) * up
    back = back / back.norm().clamp_min(1e-9)
    right = torch.cross(up, back, dim=-1)
    d = plane.points - centre
    h = d @ up
    x, z = d @ right, d @ back
    r = torch.sqrt(x ** 2 + z ** 2)
    # the sides of the outline only: the crown's outline lies near the axis, and swept at its
    # height it would float above the back of a head that slopes down
    idx = torch.nonzero(outline & (r > SHELL_MIN_RADIUS * half_width) & (r < SHELL_MAX_RADIUS * half_width))[:, 0]
    if idx.numel() == 0:
        return empty
    skull = skull_radius(verts, centre, up, right, back, bin_h=max(spacing, 1e-3))
    h, r = h[idx], r[idx]
    phi0 = torch.atan2(z[idx], x[idx])
    side = torch.where(x[idx] >= 0, torch.ones_like(r), -torch.ones_like(r))  # +1 right, -1 left
    # the hair's thickness at the side: how far the outline lies beyond the head's silhouette
    # (its widest vertex, an ear included, at about the same height on that side)
    dv = verts - centre
    row = ((dv @ up)[None] - h[:, None]).abs() <= max(spacing, 1e-3)
    lateral = torch.where(row, side[:, None] * (dv @ right)[None], torch.full_like(row, -1.0, dtype=dt)).amax(1)
    lateral = torch.where(row.any(1), lateral, skull(h, phi0))
    thick = (side * x[idx] - lateral).clamp(0.0, SHELL_MAX_THICKNESS * half_width)
    src = plane.colours[idx]
    # where a side's outline skips some heights (an ear, background between a bun and a curl),
    # the hair behind them is swept from outline points interpolated across the gap
    h, r, phi0, side, thick, src = _bridge_heights(h, r, phi0, side, thick, src, spacing)
    # behind the head: the mean thickness of the outline points at about the same height
    near = (h[:, None] - h[None]).abs() <= 2 * spacing
    thick_back = (near.to(dt) @ thick) / near.sum(1).to(dt)
    # from the outline's own azimuth to the back (90 degrees: right turns up in phi, left down)
    # and SHELL_OVERLAP_DEG on; starting a spacing inside the outline seen from the front, so
    # that the source view does not see the shell through the outline's soft edge
    total = (side * (0.5 * math.pi - phi0)).clamp_min(0.0) + math.radians(SHELL_OVERLAP_DEG)
    start = (spacing / r).clamp(max=0.5 * math.radians(SHELL_OVERLAP_DEG))
    steps = ((total - start) * r / spacing).ceil().long().clamp(1, 256)
    rep = torch.repeat_interleave(torch.arange(h.numel()), steps)
    k = torch.cat([torch.arange(int(n)) for n in steps]).to(dt)
    frac = k / steps[rep].to(dt)
    phi = phi0[rep] + side[rep] * (start[rep] + (total[rep] - start[rep]) * frac)
    hr = h[rep]
    base = skull(hr, phi)
    t = thick[rep] * (1 - frac) + thick_back[rep] * frac
    # the hair's volume: layers a spacing apart from the skull out to the hair's outer surface,
    # so that no gap between scalp and shell shows where the shell passes the silhouette
    layers = (t / spacing).ceil().long().clamp(1, 8)
    rep2 = torch.repeat_interleave(torch.arange(rep.numel()), layers)
    first = torch.cumsum(layers, 0) - layers
    level = (torch.arange(rep2.numel()) - first[rep2] + 1).to(dt) / layers[rep2].to(dt)
    rad = base[rep2] + t[rep2] * level
    phi, hr, rep, frac = phi[rep2], hr[rep2], rep[rep2], frac[rep2]
    radial = torch.cos(phi)[:, None] * right + torch.sin(phi)[:, None] * back
    pts = centre + hr[:, None] * up + rad[:, None] * radial
    w = SHELL_BLEND * frac[:, None]
    col = src[rep] * (1 - w) + src.mean(0) * w
    n = pts.shape[0]
    return PlanePoints(pts, col, torch.full((n,), 0.9, dtype=dt), torch.full((n,), 0.62 * spacing, dtype=dt),
                       radial, torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool))


def _bridge_heights(h, r, phi0, side, thick, colour, spacing: float):
    """Outline points (height ``h``, radius ``r``, azimuth ``phi0``, ``side`` +-1, hair
    ``thick``-ness, ``colour`` [P, 3]) plus, on each side, points every ``spacing`` across each
    gap of more than two spacings (up to ``SHELL_BRIDGE``) between successive heights,
    interpolated between the outline points just below and just above it."""
    parts = [[h], [r], [phi0], [side], [thick], [colour]]
    for s in (1.0, -1.0):
        ids = torch.nonzero(side == s)[:, 0]
        if ids.numel() < 2:
            continue
        ids = ids[torch.argsort(h[ids])]
        hs = h[ids]
        gaps = torch.nonzero(((hs[1:] - hs[:-1]) > 2 * spacing) & ((hs[1:] - hs[:-1]) <= SHELL_BRIDGE))[:, 0]
        for g in gaps.tolist():
            a, b = int(ids[g]), int(ids[g + 1])
            k = int(float(h[b] - h[a]) / spacing)
            f = torch.arange(1, k, dtype=h.dtype) / k
            for out, v in zip(parts, (h, r, phi0, side, thick)):
                step = v[b] - v[a]
                if v is phi0:  # the short way round (the left side's azimuths straddle +-pi)
                    step = torch.remainder(step + math.pi, 2 * math.pi) - math.pi
                out.append(v[a] + step * f)
            parts[5].append(colour[a] + (colour[b] - colour[a]) * f[:, None])
    return tuple(torch.cat(p) for p in parts)


def _frame_from_normal(normal: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [M, 3, 3] whose third column is ``normal`` and first is ``right``
    made orthogonal to it."""
    x = right - (right * normal).sum(-1, keepdim=True) * normal
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    y = torch.cross(normal, x, dim=-1)
    return torch.stack([x, y, normal], -1)


def disc_frames(plane: PlanePoints, camera: Camera, dtype=torch.float32) -> Tuple[torch.Tensor, torch.Tensor]:
    """The plane's Gaussians as flat discs in world space: rotations [M, 3, 3] (third column the
    disc's normal, first the camera's x axis laid into the disc, or for a stretched disc its
    slope: the camera's ray laid into it) and scales [M, 3] (``stretch`` x ``scale`` along the
    first axis, ``scale`` along the second, a fifth of it through the disc)."""
    normal = plane.normal.to(dtype)
    right = camera.viewmat[0, 0, :3].to(dtype).expand(plane.count, 3).clone()
    sloped = plane.stretch > 1.0 + 1e-3
    if bool(sloped.any()):
        ray = plane.points[sloped].to(dtype) - camera.position[0].to(dtype)
        n = normal[sloped]
        along = ray - (ray * n).sum(-1, keepdim=True) * n
        ok = along.norm(dim=-1) > 1e-9 * ray.norm(dim=-1)
        right[torch.nonzero(sloped)[:, 0][ok]] = along[ok]
    s = plane.scale.to(dtype)
    return _frame_from_normal(normal, right), torch.stack([s * plane.stretch.to(dtype), s, 0.2 * s], -1)


def attach_plane(avatar: Avatar, plane: PlanePoints, view: SourceView, verts: torch.Tensor,
                 bind_faces: torch.Tensor) -> None:
    """Write the plane Gaussians' attributes into the avatar's region-2 Gaussians.

    The avatar must have been built with ``plane.count`` shoulder points (in the same order);
    head-bound ones are re-bound to the nearest of ``bind_faces`` (LOD-0 face ids).
    """
    idx = torch.nonzero(avatar.region == REGION_SHOULDER)[:, 0]
    assert idx.numel() == plane.count
    dt = avatar.offset.dtype
    R_world, scales = disc_frames(plane, view.camera, dt)
    # root-bound: the root frame is the identity at the source pose (root pose 0, no translation)
    off = plane.points.to(dt).clone()
    quat = lbs.matrix_to_quaternion(R_world)
    hb = torch.nonzero(plane.head_bound)[:, 0]
    if hb.numel() and bind_faces.numel():
        faces = avatar.rig_faces[bind_faces]
        centres = verts[faces].mean(1)  # [Fb, 3]
        _, nn = _knn_tree(centres.cpu().numpy()).query(plane.points[hb].cpu().numpy(), k=1, workers=-1)
        f = bind_faces[torch.as_tensor(nn)]
        frames = face_frames(verts[None], avatar.rig_faces)[0][f]  # [h, 3, 3]
        ids = avatar.rig_faces[f]
        bary = torch.full((hb.numel(), 3), 1.0 / 3.0, dtype=dt)
        surf = verts[ids].mean(1)
        # offset in the face frame: R^T (p - surf); rotation: R^T R_world
        off[hb] = (frames.transpose(1, 2) @ (plane.points[hb].to(dt) - surf)[..., None])[..., 0]
        quat[hb] = lbs.matrix_to_quaternion(frames.transpose(1, 2) @ R_world[hb])
        gi = idx[hb]
        avatar.bind_ids[gi] = ids.to(avatar.bind_ids)
        avatar.bind_bary[gi] = bary
        avatar.frame_face[gi] = f.to(avatar.frame_face)
    avatar.offset[idx] = off
    avatar.rotation[idx] = quat
    avatar.log_scale[idx] = scales.log()
    avatar.opacity_logit[idx] = torch.logit(plane.opacity.to(dt))
    avatar.features[idx, :3] = plane.colours.to(dt)


def hair_bind_faces(head: HeadModel, verts: torch.Tensor, inside: Optional[dict] = None) -> torch.Tensor:
    """LOD-0 faces that hair may be bound to: skull faces (skinned to the neck joint, moved
    little by expressions, not the eyes), so bound hair turns rigidly with the head. Never on
    ``inside`` ({name: vertex ids}, the mouth's and eyes' insides, ``interior.head_regions``):
    the upper teeth are as still as the skull, and hair beside the jaw bound to them was painted
    (and locked) as teeth by ``interior.paint_avatar``."""
    w = head.lbs_weights
    skull_v = w[:, 1] > 0.9
    act = head.exprdirs.norm(dim=1).sum(-1)
    quiet_v = act <= torch.quantile(act, 0.5)
    for ids in (inside or {}).values():
        skull_v[ids] = False
    ok_v = skull_v & quiet_v
    faces = head.faces
    ok = ok_v[faces].all(1)
    ids = torch.nonzero(ok)[:, 0]
    if ids.numel() < 16:
        ids = torch.nonzero(skull_v[faces].all(1))[:, 0]
    return ids


def chin_height(head: HeadModel, verts: torch.Tensor) -> float:
    """World y of the chin at the source pose: the lowest vertex skinned mostly to the jaw."""
    jaw = head.lbs_weights[:, 2] > 0.5
    if not bool(jaw.any()):
        return float(verts[:, 1].min())
    return float(verts[jaw, 1].min())
