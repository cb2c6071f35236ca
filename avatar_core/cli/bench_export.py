"""``python -m avatar_core bench export AVATAR [--frames 1000] [--lod 0] [--format ply]``: time a
motion exported as a sequence, the way ``python -m avatar_core export --motion`` does it.

Without ``--motion`` a synthetic ARKit-52 CSV (Live Link Face columns, smooth curves on every
blendshape and the head angles, 60 fps) of ``--frames`` rows is written to a temporary folder.
The sequence goes to a temporary folder too (or ``--keep DIR``). Prints the figure and a JSON
line: seconds in all, per frame, frames per second, bytes written.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("avatar", help="avatar file (.avatar)")
    p.add_argument("--motion", default=None, help="motion file (default: a synthetic ARKit CSV)")
    p.add_argument("--frames", type=int, default=1000, help="rows of the synthetic CSV (default 1000)")
    p.add_argument("--lod", type=int, default=0, help="level of detail (default 0)")
    p.add_argument("--format", choices=("ply", "glb", "spz"), default="ply")
    p.add_argument("--keep", default=None, metavar="DIR", help="write the sequence here instead of a temporary folder")


def write_arkit_csv(path, num_frames: int, fps: float = 60.0) -> Path:
    """A Live Link Face style CSV without timecodes: the 52 blendshapes and head angles."""
    from avatar_core.motion.arkit import ARKIT_NAMES

    names = [n[0].upper() + n[1:] for n in ARKIT_NAMES] + ["HeadYaw", "HeadPitch", "HeadRoll"]
    lines = [",".join(names)]
    for i in range(num_frames):
        t = i / fps
        vals = [0.5 + 0.5 * math.sin(2 * math.pi * (0.3 + 0.05 * k) * t + k) for k in range(len(ARKIT_NAMES))]
        vals += [0.3 * math.sin(2 * math.pi * 0.2 * t), 0.1 * math.sin(2 * math.pi * 0.35 * t), 0.05 * math.sin(t)]
        lines.append(",".join(f"{v:.4f}" for v in vals))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)


def run(args) -> int:
    from avatar_core.__main__ import main

    with tempfile.TemporaryDirectory(prefix="headsplat-bench-export-") as tmp:
        motion = args.motion or str(write_arkit_csv(Path(tmp) / "take.csv", args.frames))
        out = Path(args.keep) if args.keep else Path(tmp) / "seq"
        t0 = time.perf_counter()
        rc = main(["export", args.avatar, "-o", str(out), "--format", args.format, "--lod", str(args.lod),
                   "--motion", motion, "--motion-fps", "60"])
        seconds = time.perf_counter() - t0
        if rc != 0:
            return rc
        index = json.loads((out / "sequence.json").read_text())
        size = sum(p.stat().st_size for p in out.iterdir())
    n = index["frame_count"]
    result = {"bench": "export", "format": args.format, "lod": args.lod, "frames": n,
              "gaussians": index["num_gaussians"], "seconds": round(seconds, 2),
              "ms_per_frame": round(1000 * seconds / n, 2), "fps": round(n / seconds, 1), "bytes": size}
    print(f"exported {n} frames x {index['num_gaussians']} Gaussians ({args.format.upper()}, LOD {args.lod}) "
          f"in {seconds:.1f} s ({result['ms_per_frame']} ms/frame, {size / 1e6:.0f} MB)")
    print(json.dumps(result))
    return 0
