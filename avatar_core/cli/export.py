"""``python -m avatar_core export AVATAR -o OUT --format ply|glb|spz [--lod K] [--expr NAME=VALUE ...]
[--motion M [--frames A:B]]``: the avatar's Gaussians for other tools.

Without ``--motion``: one frame (the neutral face, or ``--expr`` values) to the file OUT.
With ``--motion``: OUT is a folder that gets ``frame_00000.<ext>``... and ``sequence.json``
(fps, frame count); the motion is read and brought into the avatar's expression space by the
same functions ``animate`` uses (``load_motion``, ``motion_for_avatar``). ``export-ply`` is
this command under its old name (format PLY unless the suffix or ``--format`` says otherwise).

Colours are the avatar's own RGB channels; the neural refiner is not part of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from avatar_core.errors import AvatarError


def add_arguments(p):
    p.add_argument("avatar", help="avatar file (.avatar)")
    p.add_argument("-o", "--output", required=True,
                   help="file to write (one frame), or a folder for a sequence (with --motion)")
    p.add_argument("--format", choices=("ply", "glb", "spz"), default=None,
                   help="ply (3DGS INRIA layout), glb (glTF, KHR_gaussian_splatting) or spz (Niantic, gzip); "
                        "default: from OUT's suffix, else ply")
    p.add_argument("--lod", type=int, default=None, help="level of detail 0..2 (default: the avatar's highest)")
    p.add_argument("--expr", nargs="*", default=[], metavar="NAME=VALUE",
                   help="expression values for a single frame, e.g. jawOpen=0.8")
    p.add_argument("--motion", default=None,
                   help="motion file (FLAME .npz, ARKit-52 .csv, HeadSplat motion .npz): export a sequence")
    p.add_argument("--frames", default=None, metavar="A:B",
                   help="the motion's frames A..B-1 (either may be empty; default all)")
    p.add_argument("--fps", type=float, default=None, help="resample the motion to this rate (default: its own)")
    p.add_argument("--motion-fps", type=float, default=None, help="the motion file's rate, overriding the file")
    p.add_argument("--motion-head", default=None,
                   help="head model the motion's expressions belong to, for retargeting ('open' or a FLAME file)")
    p.add_argument("--translation", choices=("relative", "absolute", "off"), default="relative",
                   help="motion translation: relative to its first frame (default), as is, or ignored")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="split-layer soft-mask threshold (0.5)")
    p.add_argument("--batch", type=int, default=16, help="frames animated together (default 16)")


def _expressions(items):
    from avatar_core.validate import parse_expression_value
    return dict(parse_expression_value(item) for item in items)


def _name(p) -> str:
    """A file's name for metadata (not its full path)."""
    return Path(p).name


def run(args) -> int:
    from avatar_core.io.export import check_output, format_for

    out = Path(args.output)
    fmt = args.format
    if fmt is None:
        fmt = format_for(out) if out.suffix.lower() in (".ply", ".glb", ".spz") else "ply"
    if args.motion is None and args.frames is not None:
        raise AvatarError("--frames needs --motion.")
    if args.motion is not None and args.expr:
        raise AvatarError("--expr sets one frame's expression; with --motion the motion sets them.")
    if args.batch < 1:
        raise AvatarError(f"--batch must be at least 1, not {args.batch}.")
    check_output(out, [args.avatar, args.motion, args.motion_head], folder=args.motion is not None)
    if args.motion is None and out.suffix.lower() != f".{fmt}":
        print(f"warning: writing {fmt.upper()} to {str(out)!r}, whose suffix is not .{fmt}", file=sys.stderr)
    if args.motion is None:
        return _one_frame(args, out, fmt)
    return _sequence(args, out, fmt)


def _avatar_and_lod(args):
    from avatar_core.io import load_avatar
    avatar = load_avatar(args.avatar)
    lods = avatar.available_lods()
    lod = lods[-1] if args.lod is None else args.lod
    if lod not in lods:
        raise AvatarError(f"--lod {lod} is not in {args.avatar!r}; it has LODs {lods}.")
    return avatar, lod


def _one_frame(args, out, fmt) -> int:
    import torch

    from avatar_core.io.export import write_frame
    expr = _expressions(args.expr)
    avatar, lod = _avatar_and_lod(args)
    with torch.no_grad():
        frame = avatar.animate(expression=expr or None, lod=lod, mask_threshold=args.mask_threshold)
    write_frame(out, frame, fmt, extras={"lod": lod, "expression": expr, "avatar": _name(args.avatar)})
    print(f"wrote {out}: {frame.num} Gaussians at LOD {lod} ({fmt.upper()})")
    return 0


def _sequence(args, out, fmt) -> int:

    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.io.export import export_sequence, motion_frames, parse_frames
    from avatar_core.motion.load import load_motion
    from avatar_core.motion.playback import motion_for_avatar

    from avatar_core.validate import check_fps
    check_fps(args.fps)
    check_fps(args.motion_fps, "--motion-fps")
    motion = load_motion(args.motion, fps=args.motion_fps)
    avatar, lod = _avatar_and_lod(args)
    motion = motion_for_avatar(motion, avatar, args.motion_head, args.fps, args.translation)
    for w in motion.warnings:
        print(f"warning: {w}", file=sys.stderr)
    sel = parse_frames(args.frames, motion.num_frames)
    motion = motion.slice(sel.start, sel.stop)
    bar = ProgressBar("export")
    index = export_sequence(out, motion_frames(avatar, motion, lod, args.mask_threshold, batch=args.batch), fmt,
                            fps=motion.fps, total=motion.num_frames, first_frame=sel.start, progress=bar,
                            extras={"lod": lod, "avatar": _name(args.avatar),
                                    "motion": _name(args.motion)})
    bar.close()
    print(f"wrote {index['frame_count']} frames at {motion.fps:g} fps ({index['num_gaussians']} Gaussians, "
          f"LOD {lod}, {fmt.upper()}) to {out}")
    return 0
