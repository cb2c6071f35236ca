"""``python -m avatar_core eval expressions AVATAR... [--json F]``: mouth interior, blink and gaze
figures of avatars as JSON (``avatar_core.eval.expressions`` says how).
"""

from __future__ import annotations

import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("avatars", nargs="+", help="avatar files written by reconstruct")
    parser.add_argument("--res", type=int, default=512, help="still size in pixels (default 512)")
    parser.add_argument("--lod", type=int, choices=(0, 1, 2), default=None, help="level of detail (default: highest)")
    parser.add_argument("--refiner", choices=("on", "off"), default="on", help="neural refiner when present (default on)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--stills", default=None, metavar="DIR",
                        help="also write the stills measured, one folder per avatar")
    parser.add_argument("--on-photo-expression", action="store_true",
                        help="set the measured units on top of the photo's fitted expression, not on a neutral face")
    parser.add_argument("--json", default=None, metavar="F", help="write all figures to this JSON file")


def run(args) -> int:
    from avatar_core.devices import resolve_device
    from avatar_core.errors import AvatarError
    from avatar_core.eval.expressions import expression_figures
    from avatar_core.io import load_avatar
    from avatar_core.motion.playback import load_refiner
    if not 64 <= args.res <= 4096:
        raise AvatarError(f"--res must be between 64 and 4096 pixels, not {args.res}.")
    device = resolve_device(args.device)
    results = {}
    for path in args.avatars:
        avatar = load_avatar(path, device=device)
        refiner = load_refiner(avatar, device) if args.refiner == "on" else None
        stills = Path(args.stills) / Path(path).stem if args.stills else None
        fig = expression_figures(avatar, res=args.res, lod=args.lod, refiner=refiner, stills_dir=stills,
                                 neutral=not args.on_photo_expression)
        results[str(path)] = fig
        print(json.dumps({"avatar": str(path), **fig}))
    if args.json:
        from avatar_core.atomic import atomic_path
        with atomic_path(Path(args.json), "figures file") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2))
    return 0
