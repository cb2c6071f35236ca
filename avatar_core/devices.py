"""Which torch device to work on: one rule for the commands, the library and the add-on."""

from __future__ import annotations

import logging

from avatar_core.errors import ParameterError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name="auto", fallback: bool = False) -> str:
    """``"auto"`` (or None / ""): ``"cuda"`` when PyTorch sees a GPU, else ``"cpu"``; ``"cpu"`` and
    ``"cuda"`` as asked (any case, so the add-on's ``'AUTO'`` / ``'CUDA'`` / ``'CPU'`` too); a
    ``torch.device`` is taken as it is.

    CUDA asked for on a machine without it raises ``ParameterError``, or with ``fallback`` (the
    add-on, whose preferences may name a GPU the machine lacks) gives the CPU and a warning.
    """
    import torch

    if isinstance(name, torch.device):
        return str(name)
    asked, name = name, (name or "auto").lower()
    if name not in DEVICES:
        raise ParameterError(f"--device must be auto, cpu or cuda, not {asked!r}.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        if fallback:
            log.warning("CUDA was asked for but torch sees no CUDA device; using the CPU")
            return "cpu"
        raise ParameterError("--device cuda was asked for, but no CUDA GPU is available to PyTorch; "
                             "use --device cpu.")
    return name
