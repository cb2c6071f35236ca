"""``python -m avatar_core render AVATAR -o OUT.png [--expr NAME=VALUE ...] [--yaw DEG] ...``.

A still of the avatar at its fitted source camera, optionally turned about the head centre,
with any expressions set: what an artist uses to check an avatar. Written atomically.
"""

from __future__ import annotations

import argparse

from avatar_core.errors import AvatarError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("avatar", help="avatar file written by reconstruct")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the PNG to write")
    parser.add_argument("--expr", action="append", default=[], metavar="NAME=VALUE",
                        help="an expression value, e.g. jawOpen=1 (repeatable; set on top of the photo's)")
    parser.add_argument("--neutral", action="store_true",
                        help="start from a neutral face instead of the photo's fitted expression")
    parser.add_argument("--yaw", type=float, default=0.0, help="turn about the head centre, degrees (+: toward +X)")
    parser.add_argument("--pitch", type=float, default=0.0, help="look from above (+) or below (-), degrees")
    parser.add_argument("--lod", type=int, choices=(0, 1, 2), default=None, help="level of detail (default: highest)")
    parser.add_argument("--res", type=int, default=512, help="longer image side in pixels (default 512)")
    parser.add_argument("--refiner", choices=("on", "off"), default="on",
                        help="neural refiner when the avatar has one (default on)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def run(args) -> int:
    from pathlib import Path

    from avatar_core.atomic import check_output, check_writable
    from avatar_core.devices import resolve_device
    from avatar_core.io import load_avatar
    from avatar_core.motion.playback import load_refiner
    from avatar_core.recon.preview import write_png
    from avatar_core.recon.still import parse_expressions, render_still

    if not 16 <= args.res <= 8192:
        raise AvatarError(f"--res must be between 16 and 8192 pixels, not {args.res}.")
    if Path(args.output).suffix.lower() != ".png":
        raise AvatarError(f"Cannot write {args.output!r}: the still is a PNG; name it OUT.png.")
    check_writable(args.output, "still image")
    check_output(args.output, [args.avatar], "still image")
    device = resolve_device(args.device)
    avatar = load_avatar(args.avatar, device=device)
    expr = parse_expressions(args.expr, avatar.expr_names)
    refiner = load_refiner(avatar, device) if args.refiner == "on" else None
    rgb = render_still(avatar, expr, yaw=args.yaw, pitch=args.pitch, lod=args.lod, res=args.res,
                       refiner=refiner, neutral=args.neutral)
    write_png(rgb, args.output, "still image")
    shown = ", ".join(f"{k}={v:g}" for k, v in expr.items()) or "the photo's expression"
    print(f"wrote {args.output} ({rgb.shape[1]}x{rgb.shape[0]}, {shown}, yaw {args.yaw:g}, pitch {args.pitch:g})")
    return 0
