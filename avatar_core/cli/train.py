"""``python -m avatar_core train``: train the feed-forward reconstructor, or prepare its data.

    python -m avatar_core train --config configs/default.json --data DATA --out runs/ff
    torchrun --nproc-per-node 2 -m avatar_core train --config configs/default.json --data DATA
    python -m avatar_core train --prepare clip1.mp4 clip2.mp4 --data DATA [--head open] [--size 512]
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p):
    p.add_argument("--config", help="training configuration JSON (configs/*.json)")
    p.add_argument("--data", help="folder of training clips (overrides the config); with --prepare, "
                                  "the folder the clips are written to")
    p.add_argument("--out", help="run folder for logs, samples and checkpoints (overrides the config)")
    p.add_argument("--steps", type=int, help="total training steps (overrides the config)")
    p.add_argument("--batch-size", type=int, help="samples per GPU and step (overrides the config)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides the config")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if the run folder has checkpoints")
    p.add_argument("--prepare", nargs="+", metavar="VIDEO", help="track these videos into clip folders under --data")
    p.add_argument("--head", default="open", help="head model for --prepare: open or a FLAME file (default open)")
    p.add_argument("--size", type=int, default=512, help="crop size for --prepare (default 512)")


def run(args) -> int:
    from avatar_core.errors import AvatarError
    if args.prepare:
        return _prepare(args)
    if not args.config:
        raise AvatarError("train needs --config FILE (see configs/), or --prepare VIDEO... --data FOLDER.")
    from avatar_core.train.config import load_config
    from avatar_core.train.loop import train
    cfg = load_config(args.config)
    for name in ("data", "out", "steps", "device"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.batch_size is not None:
        cfg.batch_size = args.batch_size
    if not cfg.data:
        raise AvatarError("No training data: give --data FOLDER (clips made with --prepare) or set \"data\" in "
                          "the configuration.")
    if cfg.data != "synthetic" and not Path(cfg.data).is_dir():
        raise AvatarError(f"The training data folder {cfg.data!r} does not exist; make it with --prepare.")
    rank = int(os.environ.get("RANK", "0"))
    progress = None
    if rank == 0:
        from avatar_core.cli.progress_bar import ProgressBar
        progress = ProgressBar("train")
    result = train(cfg, resume=not args.no_resume, progress=progress)
    if rank == 0:
        last = result.history[-1] if result.history else {}
        print(f"trained to step {result.step}: loss {last.get('loss', float('nan')):.4f}, "
              f"{result.samples_per_second:.2f} samples/s; run folder {result.out}")
        if result.ranks_in_step is not None:
            world = os.environ.get("WORLD_SIZE", "?")
            print(f"DDP: {world} ranks, weights identical on every rank: {result.ranks_in_step}")
    return 0


def _prepare(args) -> int:
    from avatar_core.cli.progress_bar import ProgressBar
    from avatar_core.errors import AvatarError
    from avatar_core.head import load_head
    from avatar_core.train.data import convert_video
    if not args.data:
        raise AvatarError("--prepare needs --data FOLDER to write the clips to.")
    head = load_head(args.head)
    out = Path(args.data)
    for video in args.prepare:
        target = out / Path(video).stem
        if (target / "clip.json").is_file():
            print(f"{target} exists; skipped")
            continue
        bar = ProgressBar(Path(video).name)
        convert_video(video, target, head, size=args.size, progress=bar)
        print(f"wrote {target}")
    return 0
