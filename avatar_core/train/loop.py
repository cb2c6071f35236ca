"""The training loop: one process, or one per GPU under torchrun (DDP).

    torchrun --nproc-per-node N -m avatar_core train --config configs/default.json

Under torchrun (``WORLD_SIZE`` > 1) each rank joins a process group (NCCL on CUDA, gloo on
CPU), builds the same model from the same seed, wraps it in DistributedDataParallel and
reads its own shard of (source, driving) pairs. Only rank 0 writes: the CSV log,
TensorBoard events, sample images and checkpoints; the others wait at a barrier while it
saves. Everything random in a step (the LOD draw, the data order, the lifting-loss subsample)
is a function of (seed, step, rank), so a resumed run repeats the same steps exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from avatar_core.errors import AvatarError
from avatar_core.progress import as_progress
from avatar_core.recon.feedforward.network import FeedForwardNet
from avatar_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from avatar_core.train.config import TrainConfig
from avatar_core.train.data import BatchLoader, ClipDataset, PairSampler, SyntheticPairs
from avatar_core.train.losses import FeedForwardLoss
from avatar_core.train.schedule import hash_seed, learning_rate

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    step: int                        # steps done in total (including resumed ones)
    history: List[Dict[str, float]]  # per step of this run: step, lod, loss, parts, lr, time
    out: Path
    samples_per_second: float        # global (all ranks), median over this run's steps after the first
    ranks_in_step: Optional[bool] = None  # DDP: every rank ended with the same weights (None: one process)


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was started here (and is ended by Trainer.close)

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device_kind == "cuda" else "gloo"
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return Dist(rank, world, local, owns)


def pick_device(name: str, d: Dist) -> torch.device:
    if name in ("", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise AvatarError("The training configuration asks for device cuda, but no CUDA GPU is available.")
        return torch.device("cuda", d.local_rank)
    return torch.device(name)


def to_device(batch: Dict[str, torch.Tensor], device) -> Dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class Trainer:
    """Holds the model, optimiser, data and logs of one run (one rank)."""

    def __init__(self, cfg: TrainConfig, resume: bool = True, dataset=None, head=None):
        self.cfg = cfg
        kind = cfg.device if cfg.device not in ("", "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
        self.dist = setup_distributed(kind)
        self.device = pick_device(cfg.device, self.dist)
        self.out = Path(cfg.out)
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        self.net = FeedForwardNet(cfg.network, head=head).to(self.device)
        if self.device.type == "cuda" and cfg.amp == "bf16":
            self.net.amp_dtype = torch.bfloat16
        self.model = self.net
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            # LODs below the maximum leave the finer levels' MLPs unused in a step
            self.model = DDP(self.net, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.loss = FeedForwardLoss(cfg.loss, cfg.perceptual_weights).to(self.device)
        self.step = 0
        # data
        if dataset is None:
            if cfg.data == "synthetic":
                dataset = SyntheticPairs(cfg.network.image_size, self.net.rig.num_shape, self.net.rig.num_expr,
                                         self.net.rig.num_joints, cfg.network.background)
            else:
                dataset = ClipDataset(cfg.data, cfg.network.image_size, self.net.rig.num_shape,
                                      cfg.network.background, head_identity=self.net.head_identity)
        self.dataset = dataset
        self.sampler = PairSampler(dataset.frames(), cfg.batch_size, cfg.seed, self.dist.rank, self.dist.world)
        ckpt_dir = self.out / "checkpoints"
        if resume:
            last = latest_checkpoint(ckpt_dir) if ckpt_dir.exists() else None
            if last is not None:
                meta = load_checkpoint(last, self.net, self.optimizer)
                self.step = int(meta["step"])
                if "sampler" in meta:
                    self.sampler.load_state(meta["sampler"])
                log.info("resumed from %s at step %d", last, self.step)
        self.loader = BatchLoader(dataset, self.sampler, workers=cfg.workers)
        self._csv = None
        self._tb = None
        self._warm_renderer()

    def _warm_renderer(self) -> None:
        """Render one Gaussian on rank 0 before the others: gsplat JIT-compiles its CUDA kernels on
        first use, and builds started by several processes at once can race."""
        if self.device.type != "cuda":
            return
        from avatar_core.gaussians.frame import GaussianFrame
        from avatar_core.render import orbit_camera, render

        def one():
            d = self.device
            frame = GaussianFrame(torch.zeros(1, 1, 3, device=d), torch.tensor([[[1.0, 0, 0, 0]]], device=d),
                                  torch.full((1, 1, 3), 0.01, device=d), torch.full((1, 1), 0.5, device=d),
                                  torch.ones(1, 1, 3, device=d))
            render(frame, orbit_camera(distance=1.0, width=16, height=16, device=d), with_depth=False)
            torch.cuda.synchronize(d)

        if self.dist.world > 1 and not self.dist.main:
            dist.barrier()
        one()
        if self.dist.world > 1 and self.dist.main:
            dist.barrier()

    # ------------------------------------------------------------------ logging
    def _log(self, row: Dict[str, float]) -> None:
        if not self.dist.main:
            return
        path = self.out / "log.csv"
        if self._csv is None:
            keys = ["step", "lod", "loss", "lr", "step_time", "samples_per_s"] + sorted(
                k for k in row if k not in ("step", "lod", "loss", "lr", "step_time", "samples_per_s"))
            new = not path.exists()
            self._csv_file = open(path, "a", newline="")
            self._csv = csv.DictWriter(self._csv_file, fieldnames=keys, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        self._csv.writerow(row)
        self._csv_file.flush()
        if self.cfg.tensorboard and self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.out / "tensorboard"))
            except Exception as exc:  # noqa: BLE001 - tensorboard not installed
                log.info("TensorBoard logging is off (%s)", exc)
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, int(row["step"]))

    def _samples(self, batch, out) -> None:
        if not self.dist.main:
            return
        import cv2
        folder = self.out / "samples"
        folder.mkdir(exist_ok=True)
        rows = []
        for b in range(min(4, batch["src_image"].shape[0])):
            tiles = [batch["src_image"][b], batch["drv_image"][b], out["coarse"][b]]
            if out.get("refined") is not None:
                tiles.append(out["refined"][b])
            rows.append(torch.cat([t.detach().float().clamp(0, 1).cpu() for t in tiles], 2))
        img = (torch.cat(rows, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        cv2.imwrite(str(folder / f"step_{self.step:07d}.png"), img[..., ::-1])

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.out / "checkpoints", self.step, self.net, self.optimizer,
                            {"sampler": self.loader.state(), "config": self.cfg.to_dict()},
                            keep=self.cfg.keep_checkpoints)
        if self.dist.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ one step
    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        cfg = self.cfg
        lod = cfg.lod_schedule.lod(self.step, cfg.steps, cfg.seed)
        lr = learning_rate(self.step, cfg.steps, cfg.lr, cfg.warmup, cfg.lr_final_fraction)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.net.train()
        out = self.model(batch, lod)
        gen = torch.Generator().manual_seed(hash_seed(cfg.seed, self.step, self.dist.rank, 3))
        loss, parts = self.loss(self.net, out, batch, gen)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), cfg.grad_clip)
            parts["grad_norm"] = grad_norm
        self.optimizer.step()
        values = torch.stack([loss.detach().float()] + ([parts.pop("grad_norm").float()]
                                                          if "grad_norm" in parts else []))
        if self.dist.world > 1:
            dist.all_reduce(values)
            values /= self.dist.world
        v = values.tolist()
        row = dict(step=self.step, lod=lod, loss=v[0], lr=lr, **parts)
        if len(v) > 1:
            row["grad_norm"] = v[1]
        self._last_out = out
        return row

    def run(self, steps: Optional[int] = None, progress=None, cancel=None) -> TrainResult:
        """Train until ``cfg.steps`` (or ``steps`` more); returns the history of this run."""
        cfg = self.cfg
        p = as_progress(progress, cancel)
        end = cfg.steps if steps is None else min(cfg.steps, self.step + steps)
        history, times = [], []
        start_step = self.step
        while self.step < end:
            p.check()
            t0 = time.perf_counter()
            batch = to_device(self.loader.next(), self.device)
            row = self.train_step(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            dt = time.perf_counter() - t0
            times.append(dt)
            row["step_time"] = dt
            row["samples_per_s"] = cfg.batch_size * self.dist.world / dt
            history.append(row)
            self.step += 1
            if cfg.log_every and (self.step % cfg.log_every == 0 or self.step == end):
                self._log(row)
                log.info("step %d lod %d loss %.4f (%.1f samples/s)", row["step"], row["lod"], row["loss"],
                         row["samples_per_s"])
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self._samples(batch, self._last_out)
            if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps):
                self.save()
            p((self.step - start_step) / max(1, end - start_step), f"step {self.step}")
        rate = float(np.median([cfg.batch_size * self.dist.world / t for t in times[1:]])) if len(times) > 1 else 0.0
        return TrainResult(self.step, history, self.out, rate, self.ranks_in_step())

    def ranks_in_step(self) -> Optional[bool]:
        """DDP check: gather a float64 fingerprint of the weights from every rank and compare."""
        if self.dist.world <= 1:
            return None
        with torch.no_grad():
            fp = torch.zeros(3, dtype=torch.float64, device=self.device)
            for i, p in enumerate(self.net.parameters()):
                q = p.detach().double()
                fp[0] += q.sum()
                fp[1] += q.abs().sum()
                fp[2] += (q * ((i % 7) + 1)).square().sum()
            allfp = [torch.zeros_like(fp) for _ in range(self.dist.world)]
            dist.all_gather(allfp, fp)
        same = all(torch.equal(allfp[0], f) for f in allfp[1:])
        if self.dist.main:
            log.info("DDP weight fingerprints %s", [f.tolist() for f in allfp])
        return same

    def close(self) -> None:
        self.loader.close()
        if self._csv is not None:
            self._csv_file.close()
        if self._tb:
            self._tb.close()
        # every rank past its last collective before the group ends: a rank left with gloo work in
        # flight at exit aborted ("terminate called without an active exception"), 1 run in ~6
        # of the two-rank test on a loaded machine
        if self.dist.owns_group and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


def train(cfg: TrainConfig, resume: bool = True, progress=None, cancel=None, steps: Optional[int] = None,
          dataset=None, head=None) -> TrainResult:
    """Train the feed-forward network with ``cfg`` (see ``Trainer``)."""
    trainer = Trainer(cfg, resume=resume, dataset=dataset, head=head)
    try:
        if trainer.dist.main:
            (trainer.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        return trainer.run(steps=steps, progress=progress, cancel=cancel)
    finally:
        trainer.close()
