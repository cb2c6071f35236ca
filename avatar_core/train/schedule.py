"""Schedules: the LOD curriculum (HIGH-Avatar appendix B.2) and the learning rate.

LOD: LOD 0 for the first 10% of the steps, LOD 1 until 30%, then a random LOD per step
with probabilities 70% / 20% / 10% for LOD 2 / 1 / 0. The draw is a function of (seed,
step) only, so every DDP rank picks the same LOD and a resumed run repeats it exactly.
Learning rate: linear warm-up, then linear decay to ``final_fraction`` (HIGH-Avatar decays
linearly from 1e-4).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import torch


@dataclasses.dataclass
class LodSchedule:
    max_lod: int = 2
    lod0_until: float = 0.1
    lod1_until: float = 0.3
    late_probs: Sequence[float] = (0.1, 0.2, 0.7)   # P(LOD 0), P(LOD 1), P(LOD 2) after lod1_until

    def lod(self, step: int, total: int, seed: int = 0) -> int:
        p = step / max(1, total)
        if p < self.lod0_until or self.max_lod == 0:
            return 0
        if p < self.lod1_until or self.max_lod == 1:
            return min(1, self.max_lod)
        probs = torch.tensor(list(self.late_probs)[: self.max_lod + 1], dtype=torch.float64)
        g = torch.Generator().manual_seed(hash_seed(seed, step, 7))
        return int(torch.multinomial(probs / probs.sum(), 1, generator=g))


def hash_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64), stable across runs and ranks."""
    x = 0x9E3779B97F4A7C15
    for p in parts:
        x = (x ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


def learning_rate(step: int, total: int, base: float, warmup: int = 0, final_fraction: float = 0.0) -> float:
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (1.0 - (1.0 - final_fraction) * min(max(p, 0.0), 1.0))
