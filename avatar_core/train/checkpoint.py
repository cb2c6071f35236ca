"""Checkpoints of the feed-forward network: safetensors files with JSON metadata.

A training run's folder ``OUT/checkpoints`` holds one folder per saved step and a pointer::

    step_0001000/model.safetensors        network weights; metadata "headsplat" = JSON with the
                                          format, version, network config, head identity, step
    step_0001000/train_state.safetensors  optimiser moments (``opt.<i>.<name>``), RNG states;
                                          metadata JSON with step, param groups, sampler state
    latest.json                           {"step": 1000, "path": "step_0001000"}

Each file is written atomically and ``latest.json`` last, so a crash leaves the previous
checkpoint usable. ``load_network`` reads a model file (or a run / checkpoints / step
folder) and refuses a missing, foreign or mismatched one with a ``CheckpointError``.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch

from avatar_core.errors import CheckpointError
from avatar_core.io.atomic import atomic_path
from avatar_core.recon.network import FORMAT_NAME, FORMAT_VERSION, FeedForwardNet, NetworkConfig

log = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
LATEST = "latest.json"


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def model_tensors(model: FeedForwardNet) -> Dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}


def save_model(model: FeedForwardNet, path, step: int = 0, extra: Optional[dict] = None) -> Path:
    """The network's weights and description as one safetensors file (atomic)."""
    from safetensors.torch import save_file
    net = _unwrap(model)
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


# ---------------------------------------------------------------------------------- training state
def _rng_state() -> Tuple[Dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    py = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_state(tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    if "python" in meta:
        v, s, g = meta["python"]
        random.setstate((v, tuple(s), g))
    if "numpy" in meta:
        a, s, p, h, c = meta["numpy"]
        np.random.set_state((a, np.asarray(s, dtype=np.uint32), p, h, c))


def save_checkpoint(folder, step: int, model, optimizer: torch.optim.Optimizer, train_meta: dict,
                    keep: int = 3) -> Path:
    """Write ``folder/step_XXXXXXX/{model,train_state}.safetensors`` and then ``latest.json``."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    d = folder / name
    d.mkdir(exist_ok=True)
    save_model(model, d / MODEL_FILE, step)
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    scalars: Dict[str, dict] = {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(i), {})[k] = v
    rng_t, rng_m = _rng_state()
    tensors.update(rng_t)
    meta = {"step": int(step), "param_groups": sd["param_groups"], "scalars": scalars, "rng": rng_m,
            "train": train_meta}
    with atomic_path(d / STATE_FILE, "training state") as tmp:
        save_file(tensors, str(tmp), metadata={"headsplat": json.dumps(meta)})
    with atomic_path(folder / LATEST, "checkpoint pointer") as tmp:
        tmp.write_text(json.dumps({"step": int(step), "path": name}))
    # keep the newest ``keep`` step folders
    steps = sorted(p for p in folder.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return d


def latest_checkpoint(folder) -> Optional[Path]:
    f = Path(folder) / LATEST
    if not f.is_file():
        return None
    try:
        return Path(folder) / json.loads(f.read_text())["path"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"The checkpoint pointer {str(f)!r} is corrupt ({exc}).") from exc


def load_checkpoint(step_dir, model, optimizer: Optional[torch.optim.Optimizer] = None,
                    restore_rng: bool = True) -> dict:
    """Load weights (and optimiser state / RNG) from a step folder; returns the training metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    step_dir = Path(step_dir)
    tensors, meta = read_model_file(step_dir / MODEL_FILE)
    net = _unwrap(model)
    if meta["config"] != net.cfg.to_dict() and NetworkConfig.from_dict(meta["config"]).to_dict() != net.cfg.to_dict():
        raise CheckpointError(f"The checkpoint {str(step_dir)!r} was trained with another network configuration; "
                              "resume with the configuration it was made with.")
    net.load_state_dict(tensors)
    state_file = step_dir / STATE_FILE
    if optimizer is None:
        return {"step": meta.get("step", 0)}
    try:
        with safe_open(str(state_file), framework="pt") as sf:
            smeta = json.loads(sf.metadata()["headsplat"])
        st = load_file(str(state_file))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"The training state {str(state_file)!r} is missing or unreadable ({exc}).") from exc
    state: Dict[int, dict] = {}
    for key, v in st.items():
        if key.startswith("opt."):
            _, i, name = key.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    for i, sc in smeta.get("scalars", {}).items():
        state.setdefault(int(i), {}).update(sc)
    dev = next(net.parameters()).device
    for s in state.values():
        for k, v in s.items():
            if torch.is_tensor(v) and k != "step":
                s[k] = v.to(dev)
    optimizer.load_state_dict({"state": state, "param_groups": smeta["param_groups"]})
    if restore_rng:
        _set_rng_state(st, smeta.get("rng", {}))
    return dict(smeta.get("train", {}), step=smeta["step"])
