"""``python -m avatar_core export-ply AVATAR -o OUT.ply [--lod] [--expr name=value ...]``."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("avatar", help="avatar file (.avatar)")
    p.add_argument("-o", "--output", required=True, help="PLY file to write")
    p.add_argument("--lod", type=int, default=2, help="level of detail 0..2 (default 2)")
    p.add_argument("--expr", nargs="*", default=[], metavar="NAME=VALUE",
                   help="expression values, e.g. jawOpen=0.8")
    p.add_argument("--mask-threshold", type=float, default=0.5)


def run(args) -> int:
    from avatar_core.errors import ParameterError
    from avatar_core.io import load_avatar, write_ply
    avatar = load_avatar(args.avatar)
    expr = {}
    for item in args.expr:
        if "=" not in item:
            raise ParameterError(f"--expr {item!r} must look like NAME=VALUE.")
        k, v = item.split("=", 1)
        expr[k] = float(v)
    import torch
    with torch.no_grad():
        frame = avatar.animate(expression=expr or None, lod=args.lod, mask_threshold=args.mask_threshold)
    write_ply(args.output, frame)
    print(f"wrote {args.output}: {frame.num} Gaussians at LOD {args.lod}")
    return 0
