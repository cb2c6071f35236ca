"""Where MediaPipe's 478 landmarks sit on a head model's surface, computed by HeadSplat.

No MPI-licensed embedding is needed: the neutral head is rendered (shaded, skin-toned) from
a few views, MediaPipe's face mesh runs on each render, and every detected landmark is
back-projected through the z-buffer onto the surface. The views are combined per landmark,
weighted by how squarely the surface faces the camera, and snapped to the closest surface
point. The result, an ``Embedding`` (face ids + barycentric coordinates), is cached per head
identity. A user-supplied FLAME MediaPipe embedding (``lmk_face_idx``, ``lmk_b_coords``,
``landmark_indices``) can be loaded instead with ``load_embedding_file``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from avatar_core.errors import AvatarError, HeadModelError
from avatar_core.head.model import HeadModel

log = logging.getLogger(__name__)
CACHE_VERSION = 5  # 3: landmarks snap only to skin some render sees (not the eye sockets);
#                   4: inner-lip landmarks snap to their own lip (upper: not the jaw's, lower: the jaw's),
#                      only the upper lid margins to skin a blink moves;
#                   5: left-right twins placed as mirror images, midline landmarks on the midline
VIEWS_YAW = (0.0, -25.0, 25.0)
SKIN = np.array([0.80, 0.62, 0.52])


@dataclasses.dataclass
class Embedding:
    """K landmarks on a mesh: landmark_ids [K] (into the 478), face_idx [K], bary [K, 3]."""

    landmark_ids: np.ndarray
    face_idx: np.ndarray
    bary: np.ndarray

    def points(self, vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        """Landmark positions on a (batched) mesh: vertices [B, V, 3] -> [B, K, 3]."""
        f = faces[torch.as_tensor(self.face_idx, device=faces.device)]  # [K, 3]
        b = torch.as_tensor(self.bary, dtype=vertices.dtype, device=vertices.device)
        return (vertices[:, f] * b[None, :, :, None]).sum(2)


def cache_dir() -> Path:
    return Path(os.environ.get("HEADSPLAT_CACHE_DIR", Path.home() / ".cache" / "headsplat"))


def load_embedding_file(path) -> Embedding:
    """A FLAME-style MediaPipe embedding npz (lmk_face_idx, lmk_b_coords, landmark_indices)."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
        return Embedding(z["landmark_indices"].astype(np.int64), z["lmk_face_idx"].astype(np.int64),
                         z["lmk_b_coords"].astype(np.float32))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise HeadModelError(f"{str(path)!r} is not a landmark embedding with lmk_face_idx, lmk_b_coords "
                             f"and landmark_indices ({exc}).") from None


def closest_points_on_mesh(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, candidates: int = 24,
                           allowed_vertices: Optional[np.ndarray] = None):
    """Closest surface point to each query: returns face_idx [K], bary [K, 3].

    Searches the faces around the ``candidates`` nearest vertices (enough for points that are
    already near the surface, as back-projected landmarks are). ``allowed_vertices`` [K, V]
    bool restricts, per query, which vertices (and so faces) may be used.
    """
    vt = torch.as_tensor(vertices, dtype=torch.float64)
    q = torch.as_tensor(points, dtype=torch.float64)
    d = torch.cdist(q, vt)
    if allowed_vertices is not None:
        d = torch.where(torch.as_tensor(allowed_vertices), d, torch.full_like(d, float("inf")))
    near = torch.topk(d, min(candidates, vt.shape[0]), largest=False).indices  # [K, c]
    f = torch.as_tensor(faces)
    # faces touching any candidate vertex
    best_face = np.zeros(len(points), dtype=np.int64)
    best_bary = np.zeros((len(points), 3), dtype=np.float32)
    for k in range(len(points)):
        touch = torch.isin(f, near[k])
        cand = torch.nonzero(touch.all(1) if allowed_vertices is not None else touch.any(1))[:, 0]
        if cand.numel() == 0:
            cand = torch.nonzero(touch.any(1))[:, 0]
        a, b, c = (vt[f[cand, i]] for i in range(3))
        bary = _closest_bary(q[k].expand_as(a), a, b, c)
        p = bary[:, :1] * a + bary[:, 1:2] * b + bary[:, 2:] * c
        j = int((p - q[k]).norm(dim=1).argmin())
        best_face[k] = int(cand[j])
        best_bary[k] = bary[j].numpy()
    return best_face, best_bary


def _closest_bary(p, a, b, c):
    """Barycentric coordinates of the closest point on triangles (a, b, c) to p: [M, 3]."""
    ab, ac, ap = b - a, c - a, p - a
    # solve the 2x2 normal equations for the plane projection, then clamp onto the triangle
    d00, d01, d11 = (ab * ab).sum(1), (ab * ac).sum(1), (ac * ac).sum(1)
    d20, d21 = (ap * ab).sum(1), (ap * ac).sum(1)
    den = (d00 * d11 - d01 * d01).clamp_min(1e-20)
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    u = 1 - v - w
    bary = torch.stack([u, v, w], 1)
    inside = (bary >= 0).all(1)
    out = bary.clone()
    if (~inside).any():
        # project onto each edge and keep the nearest
        def seg(p0, p1):
            t = ((p - p0) * (p1 - p0)).sum(1) / ((p1 - p0) ** 2).sum(1).clamp_min(1e-20)
            t = t.clamp(0, 1)
            return t, ((p0 + t[:, None] * (p1 - p0)) - p).norm(dim=1)
        t_ab, d_ab = seg(a, b)
        t_bc, d_bc = seg(b, c)
        t_ca, d_ca = seg(c, a)
        cand = torch.stack([
            torch.stack([1 - t_ab, t_ab, torch.zeros_like(t_ab)], 1),
            torch.stack([torch.zeros_like(t_bc), 1 - t_bc, t_bc], 1),
            torch.stack([t_ca, torch.zeros_like(t_ca), 1 - t_ca], 1)], 1)
        pick = torch.stack([d_ab, d_bc, d_ca], 1).argmin(1)
        edge = cand[torch.arange(len(pick)), pick]
        out[~inside] = edge[~inside]
    return out.float()


def render_head_for_landmarks(head: HeadModel, yaw_deg: float, size: int = 512):
    """A shaded, skin-toned render of the neutral head and its camera and raster."""
    from avatar_core.camera import orbit_camera
    from avatar_core.render.mesh import rasterize_mesh
    v = head.v_template.float()
    faces = head.faces
    centre = _face_centre(head)
    cam = orbit_camera(target=centre.tolist(), distance=0.65, yaw_deg=yaw_deg, pitch_deg=0.0,
                       fov_deg=24.0, width=size, height=size)
    ras = rasterize_mesh(v, faces, cam.K[0], cam.viewmat[0], size, size)
    fid = ras.face_id
    hit = fid >= 0
    # Lambertian shading with a head light plus ambient
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    n = torch.cross(b - a, c - a, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cam_pos = cam.position[0]
    centres = (a + b + c) / 3
    view = cam_pos - centres
    view = view / view.norm(dim=-1, keepdim=True)
    light = (n * view).sum(-1).abs()
    shade = 0.35 + 0.65 * light
    img = np.full((size, size, 3), 0.15, dtype=np.float32)
    s = shade[fid.clamp_min(0)].numpy()
    img[hit.numpy()] = (SKIN[None] * s[hit.numpy()][:, None]).astype(np.float32)
    return img, cam, ras


def _face_centre(head: HeadModel) -> torch.Tensor:
    """A point between the eyes and mouth: the eye joints' midpoint lowered a little."""
    joints = head.j_regressor @ head.v_template
    eyes = 0.5 * (joints[3] + joints[4])
    return eyes + torch.tensor([0.0, -0.03, 0.0])


def compute_embedding(head: HeadModel, size: int = 512) -> Embedding:
    """Render, detect, back-project, combine views, snap to the surface."""
    from avatar_core.face.detect import detect_faces
    from avatar_core.face.landmarks import landmarks_for_face
    v = head.v_template.float()
    faces = head.faces
    from avatar_core.render.mesh import visible_vertices
    sums = np.zeros((478, 3))
    wsum = np.zeros(478)
    seen = np.zeros(head.num_vertices, bool)
    for yaw in VIEWS_YAW:
        img, cam, ras = render_head_for_landmarks(head, yaw, size)
        seen |= visible_vertices(v, faces, cam.K[0], cam.viewmat[0], size, size, raster=ras,
                                 tolerance=0.002, relative=False).numpy()
        dets = detect_faces(img)
        if not dets:
            log.warning("no face detected on the %+.0f degree render of the head", yaw)
            continue
        det = max(dets, key=lambda d: d.area)
        lm = landmarks_for_face(img, det)
        if lm is None:
            continue
        px = np.clip(np.round(lm[:, :2]).astype(int), 0, size - 1)
        fid = ras.face_id[px[:, 1], px[:, 0]].numpy()
        bary = ras.bary[px[:, 1], px[:, 0]].numpy()
        ok = fid >= 0
        tri = v[faces[np.clip(fid, 0, None)]].numpy()  # [478, 3, 3]
        pts = (tri * bary[..., None]).sum(1)
        # weight: how squarely the surface faces this camera
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        n = np.cross(b - a, c - a)
        n /= np.linalg.norm(n, axis=1, keepdims=True).clip(1e-12)
        to_cam = cam.position[0].numpy()[None] - pts
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True).clip(1e-12)
        w = np.clip((n * to_cam).sum(1), 0, None) ** 2 * ok
        if yaw == 0.0:
            w = w * 2.0
        sums += pts * w[:, None]
        wsum += w
    found = wsum > 1e-6
    if found.sum() < 400:
        raise HeadModelError(f"Could not locate the face landmarks on the head model {head.name!r} "
                             f"(only {int(found.sum())} of 478 found on its renders).")
    pts = sums / np.maximum(wsum, 1e-12)[:, None]
    if _is_symmetric(head):
        pts, wsum = _symmetrize(pts, wsum)
    found = wsum > 1e-6
    ids = np.nonzero(found)[0]
    pts = pts[ids]
    # a landmark back-projected onto the eyeball snaps to the nearest lid, never to the socket
    # hidden behind the eyeball (which no expression moves: a blink would not reach it)
    allowed = _allowed_vertices(head, ids)
    if allowed is not None:
        is_iris = ids >= 468
        allowed = allowed & np.where(is_iris[:, None], True, seen[None])
    face_idx, bary = closest_points_on_mesh(pts, v.numpy(), faces.numpy(), allowed_vertices=allowed)
    return Embedding(ids.astype(np.int64), face_idx, bary)


def _is_symmetric(head: HeadModel, tolerance: float = 0.001) -> bool:
    """Whether the neutral head is its own mirror image across x = 0 (within ``tolerance``
    metres at the median vertex), as the open head and FLAME are."""
    from scipy.spatial import cKDTree
    v = head.v_template.double().numpy()
    dist, _ = cKDTree(v).query(v * np.array([-1.0, 1.0, 1.0]), k=1)
    return float(np.median(dist)) <= tolerance


def _symmetrize(pts: np.ndarray, weight: np.ndarray):
    """Each landmark and its left-right twin as mirror images of their weighted mean: [478, 3]
    back-projections and their view weights [478] -> the same. A midline landmark lands on
    x = 0. Without this, what the renders disagree on stays lopsided: the middle of the upper
    inner lip (13), back-projected into the closed mouth's hidden seam, sat 4.9 mm to one side
    and its twins 82 / 312 at -10 / +2 mm, so a tracked mouth opening pulled on them sideways."""
    from avatar_core.fit.landmark_sets import mirror_index
    twin = mirror_index()
    flip = np.array([-1.0, 1.0, 1.0])
    w, wt = weight, weight[twin]
    total = w + wt
    out = (pts * w[:, None] + pts[twin] * flip * wt[:, None]) / np.maximum(total, 1e-12)[:, None]
    return out, total


def _allowed_vertices(head: HeadModel, landmark_ids: np.ndarray) -> Optional[np.ndarray]:
    """Which vertices each landmark may snap to: irises onto the eyeballs, every other landmark
    onto the skin (not the eyeballs, teeth or tongue behind it); eyelid and inner-lip landmarks
    onto their own lid or lip. Only the open head records these regions; other heads allow
    every vertex."""
    if head.name != "open":
        return None
    try:
        from avatar_core.head.open_head import open_head_metadata
        regions = open_head_metadata().get("regions", {})
    except Exception:  # noqa: BLE001 - an older cache without regions: no restriction
        return None
    V = head.num_vertices
    eyes = np.zeros(V, bool)
    inner = np.zeros(V, bool)
    for key in ("eye_L", "eye_R"):
        eyes[np.asarray(regions.get(key, []), dtype=np.int64)] = True
    for key in ("tongue", "teeth_upper", "teeth_lower"):
        inner[np.asarray(regions.get(key, []), dtype=np.int64)] = True
    skin = ~(eyes | inner)
    is_iris = np.asarray(landmark_ids) >= 468
    allowed = np.where(is_iris[:, None], eyes[None], skin[None])
    # the lid margins: an upper-lid landmark on the skin its eye's blink moves (the lid), every
    # other landmark on skin that it does not; otherwise a landmark that the render shows in
    # the eye's opening can snap to the lid across it, and a blink would never reach it, and the
    # ring of landmarks above the lid (on the crease, which a blink hardly moves) would ride
    # down with the lid and hold the blink back
    names = list(head.expr_names)
    for unit, upper in (("eyeBlinkRight", UPPER_LID_RIGHT), ("eyeBlinkLeft", UPPER_LID_LEFT)):
        if unit not in names:
            continue
        moves = (head.exprdirs[:, :, names.index(unit)].norm(dim=1) > LID_MOTION).numpy()
        on_lid = np.isin(landmark_ids, upper)
        allowed[on_lid] &= moves[None]
        allowed[~on_lid & ~is_iris] &= ~moves[None]
    # the inner lips meet at one seam in the closed neutral mouth, so a landmark of either lip
    # can land on the other: an upper-lip landmark there would open with the jaw, a lower-lip
    # one stay shut, and a tracked mouth opening would not move them apart (measured: 13 and 14
    # both on the upper lip, 80-81, 310-311, 42, 183 and 407 on the lower one)
    if "jaw" in head.joint_names:
        jaw = (head.lbs_weights[:, list(head.joint_names).index("jaw")] >= 0.5).numpy()
        for lips, keep in ((UPPER_INNER_LIP, ~jaw), (LOWER_INNER_LIP, jaw)):
            rows = np.isin(landmark_ids, lips)
            allowed[rows] &= keep[None]
    return allowed


# MediaPipe's eye contours (the subject's right eye is 33-133, its left 263-362)
UPPER_LID_RIGHT = (246, 161, 160, 159, 158, 157, 173)
UPPER_LID_LEFT = (466, 388, 387, 386, 385, 384, 398)
# the inner lip contour without its corners (78, 308), upper then lower; the upper one with the
# points of the next ring toward the corners, which lie as close to the seam (183, 42, 407)
UPPER_INNER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415, 183, 42, 407)
LOWER_INNER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324)
LID_MOTION = 0.004   # metres a vertex moves at full blink to count as the upper lid


def landmark_embedding(head: HeadModel, embedding_file: Optional[str] = None) -> Embedding:
    """The head's landmark embedding: a user file if given, else computed once and cached."""
    if embedding_file:
        return load_embedding_file(embedding_file)
    path = cache_dir() / f"landmarks-{head.identity()}-v{CACHE_VERSION}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                emb = Embedding(z["landmark_ids"], z["face_idx"], z["bary"])
            from avatar_core.validate import check_embedding
            check_embedding(emb.landmark_ids, emb.face_idx, emb.bary, int(head.faces.shape[0]), repr(str(path)))
            return emb
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, HeadModelError):
            log.warning("rebuilding the corrupt landmark cache %s", path)
    emb = compute_embedding(head)
    try:  # a cache that cannot be written (read-only folder, disk full) only costs time next run
        from avatar_core.atomic import atomic_path
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path, "landmark cache") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, landmark_ids=emb.landmark_ids, face_idx=emb.face_idx, bary=emb.bary)
    except (OSError, AvatarError) as exc:
        log.warning("could not write the landmark cache %s (%s); it is computed again next time", path, exc)
    return emb
