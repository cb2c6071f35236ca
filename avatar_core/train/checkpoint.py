"""Checkpoints of the feed-forward network: safetensors files with JSON metadata.

A training run's folder ``OUT/checkpoints`` holds one folder per saved step and a pointer::

    step_0001000/model.safetensors        network weights; metadata "headsplat" = JSON with the
                                          format, version, network config, head identity, step
    step_0001000/train_state.safetensors  optimiser moments (``opt.<i>.<name>``), RNG states;
                                          metadata JSON with step, param groups, sampler state
    latest.json                           {"step": 1000, "path": "step_0001000"}

Each file is written atomically and ``latest.json`` last, so a crash leaves the previous
checkpoint usable. The model file itself (``save_model``, ``load_network``) is the inference
side's: ``avatar_core.recon.feedforward.model_file``.
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

from avatar_core.atomic import atomic_path
from avatar_core.errors import CheckpointError
from avatar_core.recon.feedforward.model_file import LATEST, MODEL_FILE, unwrap_model, read_model_file, save_model
from avatar_core.recon.feedforward.network import NetworkConfig

log = logging.getLogger(__name__)

STATE_FILE = "train_state.safetensors"


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
    net = unwrap_model(model)
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
