"""``python -m avatar_core fetch-models [--from WHEEL_OR_FOLDER]``: set up the face models once."""

from __future__ import annotations


def add_arguments(p):
    p.add_argument("--from", dest="source", default=None, metavar="WHEEL_OR_FOLDER",
                   help="the mediapipe 0.10.21 wheel, or a folder holding its .tflite files (default: "
                        "$HEADSPLAT_MEDIAPIPE_WHEEL, else `pip download` fetches the wheel)")
    p.add_argument("--force", action="store_true", help="convert again even when the cache is complete")


def run(args) -> int:
    from avatar_core.face.weights import fetch_models

    out = fetch_models(args.source, force=args.force, progress=lambda msg: print(msg, flush=True))
    print(f"face models in {out}")
    return 0
