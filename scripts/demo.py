"""The README demo: one photo -> an animatable Gaussian head avatar.

Reconstructs scikit-image's astronaut (Eileen Collins, NASA, public domain:
``skimage.data.astronaut()``) to ``OUT/astronaut.avatar`` and ``OUT/astronaut.preview.png``,
then prints the source-view PSNR per LOD and the landmark error.

    python scripts/demo.py --out out/demo [--quality fast|default|best] [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/demo", help="output folder (created)")
    parser.add_argument("--quality", default="default", choices=("fast", "default", "best"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)

    from skimage import data

    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.errors import AvatarError
    from avatar_core.recon import reconstruct
    from avatar_core.recon.preview import preview_path, preview_sheet, write_png

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "astronaut.avatar"
    t0 = time.perf_counter()
    try:
        avatar, report = reconstruct(data.astronaut(), out_path=out, quality=args.quality, device=args.device,
                                     progress=ProgressBar("demo"))
        write_png(preview_sheet(avatar, report.source_image), preview_path(out))
    except AvatarError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    print(report.summary())
    print(f"wrote {out} and {preview_path(out)} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
