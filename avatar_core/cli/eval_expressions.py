"""``python -m avatar_core eval expressions AVATAR... [--json F]``: mouth interior, blink and gaze
figures of avatars as JSON (``avatar_core.eval.expressions`` says how).
"""

from __future__ import annotations


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
    from avatar_core.cli.avatar_figures import run_figures
    from avatar_core.eval.expressions import expression_figures
    return run_figures(args, lambda avatar, refiner, stills: expression_figures(
        avatar, res=args.res, lod=args.lod, refiner=refiner, stills_dir=stills, neutral=not args.on_photo_expression))
