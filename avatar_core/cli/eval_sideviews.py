"""``python -m avatar_core eval sideviews AVATAR... [--yaw 45] [--json F]``: the avatars turned both
ways, notch and speckle figures as JSON (``avatar_core.eval.sideviews`` says how).
"""

from __future__ import annotations


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
    from avatar_core.cli.avatar_figures import run_figures
    from avatar_core.errors import AvatarError
    from avatar_core.eval.sideviews import sideview_figures
    if not 0.0 < abs(args.yaw) <= 90.0:
        raise AvatarError(f"--yaw must be between 0 and 90 degrees, not {args.yaw}.")
    return run_figures(args, lambda avatar, refiner, stills: sideview_figures(
        avatar, args.yaw, args.res, args.lod, refiner, stills))
