"""gsplat-backed CUDA rasterizer behind ``avatar_core.render``'s interface.

Nothing here imports gsplat (or compiles anything) until a CUDA render is asked for, so the
project imports and runs on machines without a GPU or without gsplat. gsplat 1.5.3 compiles
its kernels on first use (~40 s), then caches them.

Public functions:
    available() -> bool, unavailable_reason() -> str | None
    load_kernels()  load (or build, the first time on a machine) gsplat's kernels now
    rasterize_frame(frame, camera, background, ...)  the backend of ``render(..., backend="gsplat")``
    rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, ...)
        the lower-level entry point used by the real-time pipeline (static binning for CUDA graphs)
"""

from __future__ import annotations

import functools
from typing import Optional

GSPLAT_VERSION = "1.5.3"


@functools.lru_cache(maxsize=1)
def unavailable_reason() -> Optional[str]:
    """Why the CUDA backend cannot run here, or None when it can."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is available"
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install
        return f"gsplat is not importable ({type(exc).__name__}: {exc})"
    version = getattr(gsplat, "__version__", "?")
    if version != GSPLAT_VERSION:
        import logging
        logging.getLogger(__name__).warning("gsplat %s found; the backend was written for %s",
                                            version, GSPLAT_VERSION)
    return None


def available() -> bool:
    return unavailable_reason() is None


def kernels_built() -> bool:
    """Whether gsplat's kernels are loaded in this process already (no build is pending)."""
    import sys
    return "gsplat.cuda._backend" in sys.modules


def load_kernels() -> None:
    """Load gsplat's compiled kernels now, building them first if this machine has never run
    them (about a minute, once; torch caches the build). Callers use it to say so to the user
    instead of stalling silently inside the first render."""
    from gsplat.cuda._backend import _C  # noqa: F401  (the import is the build/load)


def rasterize_frame(*args, **kwargs):
    from cuda_backend.gsplat_backend import rasterize_frame as impl
    return impl(*args, **kwargs)


def rasterize(*args, **kwargs):
    from cuda_backend.gsplat_backend import rasterize as impl
    return impl(*args, **kwargs)
