"""``python -m avatar_core head info [--flame PATH]``: a head model's sizes, expressions, joints."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--flame", metavar="PATH", default=None,
                        help="a FLAME model file you downloaded (default: the built-in open head)")


def load_cli_head(flame_path=None):
    """The head a head command works on: a FLAME file, or the open head (built on first use)."""
    if flame_path:
        from avatar_core.head.flame import load_flame
        return load_flame(flame_path)
    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.head.open_head import cache_path, load_open_head
    bar = None if cache_path().exists() else ProgressBar("building the open head (first use)")
    return load_open_head(progress=bar)


def describe(head) -> str:
    """The text ``head info`` prints."""
    from avatar_core.head.lod import MAX_LOD, lod_counts
    lines = [f"head: {head.name} ({head.identity()})"]
    counts = lod_counts(head.faces, head.num_vertices, MAX_LOD)
    for lod, nv in enumerate(counts):
        lines.append(f"LOD {lod}: {nv:,} vertices, {head.num_faces * 4 ** lod:,} faces")
    lines.append(f"identity components (S): {head.num_shape}")
    lines.append(f"expressions (E): {head.num_expr}")
    names = list(head.expr_names)
    per_row = 4
    width = max((len(n) for n in names), default=0) + 2
    for r in range(0, len(names), per_row):
        row = names[r:r + per_row]
        lines.append("  " + "".join(f"{r + k:3d} {n:<{width}}" for k, n in enumerate(row)).rstrip())
    lines.append(f"joints (J): {head.num_joints}")
    parents = head.parents.tolist()
    joints = head.j_regressor.float() @ head.v_template.float()
    for j, name in enumerate(head.joint_names):
        parent = head.joint_names[parents[j]] if parents[j] >= 0 else "-"
        x, y, z = (round(c, 3) + 0.0 for c in joints[j].tolist())  # no '-0.000'
        lines.append(f"  {j} {name:<6} parent {parent:<5} rest ({x:+.3f}, {y:+.3f}, {z:+.3f}) m")
    lines.append(f"licence: {head.licence}")
    return "\n".join(lines)


def run(args) -> int:
    head = load_cli_head(args.flame)
    print(describe(head))
    return 0
