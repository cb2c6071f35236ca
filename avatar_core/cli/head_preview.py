"""``python -m avatar_core head preview -o head.png [--flame PATH] [--res 256]``.

A labelled contact sheet of the head model, rendered with the CPU mesh rasteriser:

- row 1: close-ups of the eye and nose at LOD 0, 1, 2 with the triangle edges drawn, and a
  profile with the five joints marked;
- row 2: the face from the front, neutral and under jawOpen, eyeBlinkLeft, mouthSmileLeft;
- row 3: poses: jaw opened by the jaw joint, the head turned to its left by the neck joint,
  both eyes looking to the subject's left by the eye joints, a 3/4 view.

Expressions that the head model does not name (FLAME's are exp_000...) are replaced by
its first expression components.
"""

from __future__ import annotations

import argparse
import math
from typing import List, Tuple

import torch

from avatar_core.errors import AvatarError

SKIN = (0.86, 0.72, 0.62)
EYE = (0.95, 0.95, 0.95)
IRIS = (0.30, 0.22, 0.12)
PUPIL = (0.02, 0.02, 0.02)
MOUTH = (0.75, 0.45, 0.45)
WIRE = (0.15, 0.15, 0.2)
JOINT_COLOURS = ((1.0, 0.0, 0.0), (1.0, 0.6, 0.0), (0.0, 0.7, 0.0), (0.0, 0.4, 1.0), (0.7, 0.0, 0.9))
EXPRESSIONS = ("jawOpen", "eyeBlinkLeft", "mouthSmileLeft")
LABEL_H = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="the picture to write")
    parser.add_argument("--flame", metavar="PATH", default=None,
                        help="a FLAME model file you downloaded (default: the built-in open head)")
    parser.add_argument("--res", type=int, default=256, help="side of one panel in pixels (default 256)")


def run(args) -> int:
    from avatar_core.atomic import atomic_path, check_writable
    from avatar_core.cli.head_info import load_cli_head

    if not 64 <= args.res <= 2048:
        raise AvatarError(f"--res must be between 64 and 2048 pixels, got {args.res}.")
    check_writable(args.output, "preview picture")
    head = load_cli_head(args.flame)
    sheet = contact_sheet(head, args.res)
    with atomic_path(args.output, "preview picture") as tmp:
        sheet.save(tmp, format="PNG")
    print(f"wrote {args.output} ({sheet.width}x{sheet.height}): {head.name} head, LOD 0-2, "
          f"expressions and poses")
    return 0


# ------------------------------------------------------------------------------- rendering
def _colours(head) -> torch.Tensor:
    """[V, 3] albedo: skin, with the open head's eyeballs white and mouth parts pink."""
    col = torch.tensor(SKIN).expand(head.num_vertices, 3).clone()
    if head.name == "open":
        try:
            from avatar_core.head.open_head import open_head_metadata
            regions = open_head_metadata().get("regions", {})
        except AvatarError:
            regions = {}
        for key, c in (("eye_L", EYE), ("eye_R", EYE), ("teeth_upper", EYE), ("teeth_lower", EYE),
                       ("tongue", MOUTH)):
            ids = [i for i in regions.get(key, []) if i < head.num_vertices]
            col[ids] = torch.tensor(c)
        for key in ("eye_L", "eye_R"):  # iris and pupil around the eyeball's front (+Z) pole
            ids = torch.tensor([i for i in regions.get(key, []) if i < head.num_vertices], dtype=torch.long)
            if ids.numel() == 0:
                continue
            d = head.v_template[ids] - head.v_template[ids].mean(0)
            cos = d[:, 2] / d.norm(dim=1).clamp_min(1e-9)
            col[ids[cos > math.cos(math.radians(40))]] = torch.tensor(IRIS)
            col[ids[cos > math.cos(math.radians(15))]] = torch.tensor(PUPIL)
    return col


def _camera(target, yaw: float, distance: float, fov: float, res: int, pitch: float = 0.0):
    from avatar_core.camera import orbit_camera
    cam = orbit_camera(target=tuple(float(t) for t in target), distance=distance, yaw_deg=yaw,
                       pitch_deg=pitch, fov_deg=fov, width=res, height=res)
    return cam.K[0], cam.viewmat[0]


def render_panel(vertices, faces, colours, K, viewmat, res: int, wire: bool = False,
                 light=(0.35, 0.45, 1.0)) -> torch.Tensor:
    """[res, res, 3] shaded picture, optionally with the triangle edges drawn."""
    from avatar_core.render.mesh import project_points, rasterize_mesh, shade
    ras = rasterize_mesh(vertices, faces, K, viewmat, res, res)
    img = shade(ras, vertices, faces, light=light, albedo=colours, ambient=0.3, background=1.0)
    if wire and ras.mask.any():
        # distance of a pixel to its triangle's nearest edge, in pixels: bary_k * altitude_k
        uv, _ = project_points(vertices, K, viewmat)
        hit = ras.mask
        tri = uv[faces[ras.face_id[hit]]]  # [P, 3, 2]
        a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
        area2 = ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).abs()
        opp = torch.stack([(c - b).norm(dim=1), (a - c).norm(dim=1), (b - a).norm(dim=1)], 1)
        dist = (ras.bary[hit] * area2[:, None] / opp.clamp_min(1e-9)).amin(1)
        alpha = (1.0 - dist / 0.75).clamp(0, 1)[:, None] * 0.85
        img[hit] = img[hit] * (1 - alpha) + torch.tensor(WIRE) * alpha
    return img


def _pose(head, **joints) -> torch.Tensor:
    pose = torch.zeros(1, head.num_joints, 3)
    for name, aa in joints.items():
        pose[0, list(head.joint_names).index(name)] = torch.tensor(aa)
    return pose


def _expression(head, name: str) -> Tuple[dict, str]:
    """A {name: 1} dict for the head, and the label; FLAME heads get a component instead."""
    if name in head.expr_names:
        return {name: 1.0}, name
    k = {"jawOpen": 0, "eyeBlinkLeft": 1, "mouthSmileLeft": 2}.get(name, 0)
    k = min(k, head.num_expr - 1)
    return {head.expr_names[k]: 2.0}, f"{head.expr_names[k]} = 2 (no {name})"


def contact_sheet(head, res: int = 256):
    """The preview picture (a PIL image)."""
    from PIL import Image, ImageDraw

    from avatar_core.render.mesh import project_points

    head = head.to(dtype=torch.float32)
    cols = _colours(head)
    joints = head.j_regressor @ head.v_template  # [J, 3]
    eyes = 0.5 * (joints[3] + joints[4])
    lo, hi = head.v_template.amin(0), head.v_template.amax(0)
    size = float((hi - lo).max())
    centre = 0.5 * (lo + hi)
    face_target = eyes + torch.tensor([0.0, -0.35, 0.0]) * (eyes[1] - lo[1])  # between eyes and chin
    fov = 22.0
    dist_full = 1.25 * size / (2 * math.tan(math.radians(fov / 2)))
    dist_face = 0.8 * dist_full

    panels: List[Tuple[torch.Tensor, str]] = []
    # row 1: LOD close-ups around the left eye (image right) and nose
    closeup = eyes + torch.tensor([0.25, -0.35, 0.1]) * (joints[3] - joints[4]).norm()
    K, view = _camera(closeup, yaw=20.0, distance=0.35 * dist_full, fov=fov, res=res)
    for lod in range(3):
        # only positions and colours are needed: carry them like subdivide_head carries arrays
        v, c, f = _subdivide(head.v_template, cols, head.faces, lod)
        img = render_panel(v, f, c, K, view, res, wire=True)
        panels.append((img, f"LOD {lod}: {v.shape[0]:,} v, {f.shape[0]:,} f"))
    # profile with joints
    K, view = _camera(centre, yaw=90.0, distance=dist_full, fov=fov, res=res)
    img = render_panel(head.v_template, head.faces, cols, K, view, res, light=(1.0, 0.4, 0.3))
    img = _draw_joints(img, joints, K, view, res, project_points)
    panels.append((img, "profile, joints r/n/j/eL/eR"))

    # row 2: expressions from the front
    K, view = _camera(face_target, yaw=0.0, distance=dist_face, fov=fov, res=res)
    panels.append((render_panel(head.v_template, head.faces, cols, K, view, res), "neutral"))
    for name in EXPRESSIONS:
        expr, label = _expression(head, name)
        v = head.forward(expression=expr).vertices[0]
        panels.append((render_panel(v, head.faces, cols, K, view, res), label))

    # row 3: poses
    for label, pose in (("jaw pose +0.35 rad (x)", _pose(head, jaw=(0.35, 0.0, 0.0))),
                        ("neck +30 deg (y): turn to its left", _pose(head, neck=(0.0, math.radians(30), 0.0))),
                        ("eyes +20 deg (y): look to its left",
                         _pose(head, eye_L=(0.0, math.radians(20), 0.0), eye_R=(0.0, math.radians(20), 0.0)))):
        v = head.forward(pose=pose).vertices[0]
        panels.append((render_panel(v, head.faces, cols, K, view, res), label))
    K3, view3 = _camera(centre, yaw=35.0, distance=dist_full, fov=fov, res=res, pitch=10.0)
    panels.append((render_panel(head.v_template, head.faces, cols, K3, view3, res), "3/4 view"))

    ncol = 4
    nrow = math.ceil(len(panels) / ncol)
    sheet = Image.new("RGB", (ncol * res, nrow * (res + LABEL_H) + LABEL_H), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(max(10, res // 22))
    draw.text((4, 2), f"{head.name} head ({head.identity()}): {head.num_vertices:,} vertices, "
              f"{head.num_expr} expressions, {head.num_shape} identity components", fill="black", font=font)
    for k, (img, label) in enumerate(panels):
        r, c = divmod(k, ncol)
        x, y = c * res, LABEL_H + r * (res + LABEL_H)
        pil = Image.fromarray((img.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        sheet.paste(pil, (x, y + LABEL_H))
        draw.text((x + 4, y + 2), label, fill="black", font=font)
        draw.rectangle([x, y, x + res - 1, y + res + LABEL_H - 1], outline=(200, 200, 200))
    return sheet


def _subdivide(verts, cols, faces, lod):
    """Positions [V, 3] and colours [V, 3] at LOD ``lod`` (the same edge averaging as
    ``subdivide_head``, without carrying the blend shapes)."""
    from avatar_core.head.lod import subdivide_array, subdivide_once
    for _ in range(lod):
        faces, edges = subdivide_once(faces, verts.shape[0])
        verts, cols = subdivide_array(verts, edges), subdivide_array(cols, edges)
    return verts, cols, faces


def _draw_joints(img, joints, K, view, res, project_points):
    uv, _ = project_points(joints, K, view)
    img = img.clone()
    yy, xx = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="ij")
    r = max(2.0, res / 80)
    for j in range(joints.shape[0]):
        d = ((xx - uv[j, 0]) ** 2 + (yy - uv[j, 1]) ** 2).sqrt()
        img[d <= r] = torch.tensor(JOINT_COLOURS[j % len(JOINT_COLOURS)])
    return img


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()
