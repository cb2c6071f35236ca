"""Where the evaluation and benchmark commands find their data when no option names it: the
project's shared data folder beside the checkout (``../shared/data``, from the working
directory first, then from the checkout this package runs from) and the checkout's Blender
scan renderer (``scripts/render_headscan.py``, which the package does not ship). The library
(``avatar_core.eval``) takes every one of these as an argument."""

from __future__ import annotations

import os
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
SHARED_RELATIVE = Path("..") / "shared" / "data"
SHARED_DATA = CHECKOUT.parent / "shared" / "data"
LPIPS_RELATIVE = Path("metrics") / "lpips_alexnet_flax_layout.npz"
SCAN_RELATIVE = Path("headscan")
SCAN_RENDERER = CHECKOUT / "scripts" / "render_headscan.py"


def shared(relative: Path, want_dir: bool = False) -> Path:
    """``../shared/data/<relative>`` from the working directory when it is there, else beside
    the checkout."""
    here = Path.cwd() / SHARED_RELATIVE / relative
    return here if (here.is_dir() if want_dir else here.is_file()) else SHARED_DATA / relative


def lpips_weights(path=None) -> Path:
    """``path``, else ``$HEADSPLAT_LPIPS_WEIGHTS``, else the shared LPIPS-alex weights."""
    if path is not None:
        return Path(path)
    env = os.environ.get("HEADSPLAT_LPIPS_WEIGHTS")
    return Path(env) if env else shared(LPIPS_RELATIVE)


def scan_dir(path=None) -> Path:
    """``path``, else the shared head-scan folder."""
    return Path(path) if path is not None else shared(SCAN_RELATIVE, want_dir=True)
