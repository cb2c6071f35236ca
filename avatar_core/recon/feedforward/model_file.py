"""The feed-forward network's model file: one safetensors file with its weights and, in the
metadata key "headsplat", a JSON description (format, version, network config, head identity,
step). ``load_network`` reads a model file (or a run / checkpoints / step folder, following
``latest.json``) and refuses a missing, foreign or mismatched one with a ``CheckpointError``.
Training writes it (``train.checkpoint``); reconstruction reads it, without the trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from avatar_core.atomic import atomic_path
from avatar_core.errors import CheckpointError
from avatar_core.recon.feedforward.network import FORMAT_NAME, FORMAT_VERSION, FeedForwardNet, NetworkConfig

MODEL_FILE = "model.safetensors"
LATEST = "latest.json"


def unwrap_model(model):
    """The network inside a DistributedDataParallel wrapper, or the network itself."""
    return model.module if hasattr(model, "module") else model


def model_tensors(model: FeedForwardNet) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}


def save_model(model: FeedForwardNet, path, step: int = 0, extra: Optional[dict] = None) -> Path:
    """The network's weights and description as one safetensors file (atomic)."""
    from safetensors.torch import save_file
    net = unwrap_model(model)
    meta = dict(net.describe(), step=int(step), **(extra or {}))
    path = Path(path)
    with atomic_path(path, "checkpoint") as tmp:
        save_file(model_tensors(net), str(tmp), metadata={"headsplat": json.dumps(meta)})
    return path


def resolve_model_file(path) -> Path:
    """A model file from a file, a step folder, a checkpoints folder or a run folder."""
    p = Path(path)
    if p.is_file():
        return p
    if p.is_dir():
        for base in (p, p / "checkpoints"):
            if (base / MODEL_FILE).is_file():
                return base / MODEL_FILE
            if (base / LATEST).is_file():
                try:
                    latest = json.loads((base / LATEST).read_text())
                    f = base / latest["path"] / MODEL_FILE
                except (ValueError, KeyError) as exc:
                    raise CheckpointError(f"The checkpoint pointer {str(base / LATEST)!r} is corrupt ({exc}).") from exc
                if f.is_file():
                    return f
        raise CheckpointError(f"The folder {str(p)!r} holds no feed-forward checkpoint ({MODEL_FILE} or "
                              f"{LATEST}).")
    raise CheckpointError(f"The checkpoint {str(p)!r} does not exist; expected a {MODEL_FILE} file written by "
                          "`python -m avatar_core train`, or its run folder.")


def read_model_file(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """(state dict, metadata) of a model file; CheckpointError if unreadable or foreign."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    f = resolve_model_file(path)
    try:
        with safe_open(str(f), framework="pt") as sf:
            meta_raw = (sf.metadata() or {}).get("headsplat")
        tensors = load_file(str(f))
    except Exception as exc:  # noqa: BLE001 - truncated / not safetensors
        raise CheckpointError(f"The checkpoint {str(f)!r} is not a readable safetensors file ({exc}).") from exc
    if not meta_raw:
        raise CheckpointError(f"The file {str(f)!r} is not a HeadSplat feed-forward checkpoint (no metadata).")
    try:
        meta = json.loads(meta_raw)
    except ValueError as exc:
        raise CheckpointError(f"The checkpoint {str(f)!r} has corrupt metadata ({exc}).") from exc
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"The file {str(f)!r} is a {meta.get('format')!r} file, not a {FORMAT_NAME} checkpoint.")
    if int(meta.get("version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"The checkpoint {str(f)!r} has format version {meta.get('version')}; this HeadSplat "
                              f"reads up to {FORMAT_VERSION}. Update HeadSplat.")
    meta["file"] = str(f)
    return tensors, meta


def load_network(path, head=None, device=None, config: Optional[NetworkConfig] = None) -> FeedForwardNet:
    """Build the network a checkpoint describes and load its weights.

    Args:
        head: the head model (default: the one the config names).
        config: if given, the checkpoint must have been trained with this configuration.
    Raises CheckpointError when the checkpoint is missing, foreign, was made for another head
    model, or its weights do not fit the configuration.
    """
    tensors, meta = read_model_file(path)
    f = meta["file"]
    cfg = NetworkConfig.from_dict(meta["config"])
    if config is not None and config.to_dict() != cfg.to_dict():
        diff = sorted(k for k, v in config.to_dict().items() if cfg.to_dict().get(k) != v)
        raise CheckpointError(f"The checkpoint {f!r} was trained with another network configuration "
                              f"(differs in {', '.join(diff)}).")
    cfg.encoder.weights = None  # the encoder's weights are inside the checkpoint
    try:
        net = FeedForwardNet(cfg, head=head)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. the head model cannot be loaded
        raise CheckpointError(f"The network of checkpoint {f!r} could not be built ({type(exc).__name__}: {exc}).") \
            from exc
    want = meta.get("head", {}).get("identity")
    if want and want != net.head_identity:
        raise CheckpointError(f"The checkpoint {f!r} was trained for the head model {want}, but the head model "
                              f"here is {net.head_identity}; use the same head model (--head).")
    own = net.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    bad = sorted(k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape))
    if missing or unexpected or bad:
        raise CheckpointError(f"The checkpoint {f!r} does not match its network configuration: {len(missing)} "
                              f"missing weights (e.g. {missing[:2]}), {len(unexpected)} unexpected, {len(bad)} of "
                              f"another shape (e.g. {bad[:2]}).")
    net.load_state_dict(tensors)
    net.checkpoint_meta = meta
    return net.to(device) if device is not None else net
