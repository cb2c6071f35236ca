"""The training configuration: one JSON file (``configs/*.json``).

Top-level keys are ``TrainConfig``'s fields; ``network`` holds ``NetworkConfig``'s (with its
``encoder``), ``loss`` holds ``LossWeights``', ``lod_schedule`` ``LodSchedule``'s. Missing keys
take the defaults below; unknown keys are an error (a typo must not silently do nothing).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from avatar_core.errors import AvatarError
from avatar_core.recon.feedforward.network import NetworkConfig
from avatar_core.train.losses import LossWeights
from avatar_core.train.schedule import LodSchedule


class ConfigError(AvatarError):
    """A training configuration file is missing or malformed."""


@dataclasses.dataclass
class TrainConfig:
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    loss: LossWeights = dataclasses.field(default_factory=LossWeights)
    lod_schedule: LodSchedule = dataclasses.field(default_factory=LodSchedule)
    data: str = ""                     # folder of clips, or "synthetic" (benchmarks)
    out: str = "runs/feedforward"      # logs, samples, checkpoints
    steps: int = 100_000
    batch_size: int = 8                # per rank
    lr: float = 1e-4
    lr_final_fraction: float = 0.0
    warmup: int = 500
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    grad_clip: float = 1.0
    amp: str = "bf16"                  # "bf16" (CUDA only) or "off"
    seed: int = 0
    perceptual_weights: Optional[str] = None   # lpips_alexnet_flax_layout.npz
    log_every: int = 20
    sample_every: int = 1000
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    tensorboard: bool = True
    workers: int = 4
    device: str = "auto"               # auto, cpu, cuda

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "the configuration") -> "TrainConfig":
        d = dict(d)
        _check_keys(cls, d, where)
        net = d.pop("network", None)
        loss = d.pop("loss", None)
        lod = d.pop("lod_schedule", None)
        try:
            out = cls(**d)
            if net is not None:
                out.network = NetworkConfig.from_dict(net)
            if loss is not None:
                _check_keys(LossWeights, loss, f"{where} (loss)")
                out.loss = LossWeights(**loss)
            if lod is not None:
                _check_keys(LodSchedule, lod, f"{where} (lod_schedule)")
                out.lod_schedule = LodSchedule(**lod)
        except AvatarError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{where} is malformed ({exc}).") from exc
        out.betas = tuple(out.betas)
        out.lod_schedule.max_lod = out.network.max_lod
        if out.amp not in ("bf16", "off"):
            raise ConfigError(f"{where}: amp must be \"bf16\" or \"off\", not {out.amp!r}.")
        return out


def _check_keys(cls, d: dict, where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; expected keys among {sorted(names)}.")


def load_config(path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"The training configuration {str(path)!r} does not exist.")
    try:
        d = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"The training configuration {str(path)!r} is not valid JSON ({exc}).") from exc
    return TrainConfig.from_dict(d, where=repr(str(path)))
