"""The loop the figure commands share (``eval expressions``, ``eval sideviews``): each avatar
loaded on the device, its refiner when asked, its figures printed as one JSON line, all of
them written to ``--json`` at the end (atomically)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def run_figures(args, figures: Callable) -> int:
    """``figures(avatar, refiner, stills_dir) -> dict`` for each of ``args.avatars``."""
    from avatar_core.devices import resolve_device
    from avatar_core.errors import AvatarError
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
        fig = figures(avatar, refiner, stills)
        results[str(path)] = fig
        print(json.dumps({"avatar": str(path), **fig}))
    if args.json:
        from avatar_core.atomic import atomic_path
        with atomic_path(Path(args.json), "figures file") as tmp:
            Path(tmp).write_text(json.dumps(results, indent=2))
    return 0
