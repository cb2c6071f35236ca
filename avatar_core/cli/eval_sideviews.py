"""``python -m avatar_core eval sideviews AVATAR... [--yaw 45] [--json F]``: the avatars turned both
ways, notch and speckle figures as JSON (``avatar_core.eval.sideviews`` says how).
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("avatars", nargs="+", help="avatar files written by reconstruct")
    parser.add_argument("--yaw", type=float, default=45.0, help="turn, degrees, both ways (default 45)")
    parser.add_argument("--res", type=int, default=512, help="still size in pixels (default 512)")
    parser.add_argument("--lod", type=int, choices=(0, 1, 2), default=None, help="level of detail (default: highest)")
    parser.add_argument("--refiner", choices=("on", "off"), default="on", help="neural refiner when present (default on)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--stills", default=None, metavar="DIR", help="also write the stills, one folder per avatar")
    parser.add_argument("--json", default=None, metavar="F", help="write all figures to this JSON file")


def run(args) -> int:
    from avatar_core.devices import resolve_device
    from avatar_core.errors import AvatarError
    from avatar_core.eval.sideviews import sideview_figures
    from avatar_core.io import load_avatar
    from avatar_core.motion.playback import load_refiner
    if not 64 <= args.res <= 4096:
        raise AvatarError(f"--res must be between 64 and 4096 pixels, not {args.res}.")
    if not 0.0 < abs(args.yaw) <= 90.0:
        raise AvatarError(f"--yaw must be between 0 and 90 degrees, not {args.yaw}.")
    device = resolve_device(args.device)
    results = {}
    for path in args.avatars:
        avatar = load_avatar(path, device=device)
        refiner = load_refiner(avatar, device) if args.refiner == "on" else None
        stills = Path(args.stills) / Path(path).stem if args.stills else None
        fig = sideview_figures(avatar, args.yaw, args.res, args.lod, refiner, stills)
        results[str(path)] = fig
        print(json.dumps({"avatar": str(path), **fig}))
    if args.json:
        from avatar_core.atomic import atomic_path
        with atomic_path(Path(args.json), "figures file") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2))
    return 0
