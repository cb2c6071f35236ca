"""SPZ files (Niantic's compressed Gaussian splat format), written and read by HeadSplat.

We write the gzip layout (format version 3), which every SPZ reader accepts (the reference
library reads versions 1-4; version 4 switched to per-stream ZSTD). The whole file is one
gzip stream of:

=================  ================  ==================================================
part               bytes             content
=================  ================  ==================================================
header             16                u32 magic 0x5053474e ("NGSP"), u32 version (3),
                                     u32 numPoints, u8 shDegree, u8 fractionalBits,
                                     u8 flags (0x1: antialiased), u8 reserved (0)
positions          N * 9             x, y, z: 24-bit signed fixed point, little-endian,
                                     ``fractionalBits`` (12) fractional bits (1/4096 m)
alphas             N                 round(opacity * 255)
colours            N * 3             round(f_dc * 0.15 * 255 + 127.5), f_dc the degree-0 SH
                                     coefficient: rgb = 0.5 + SH_C0 * f_dc
scales             N * 3             round((log(scale) + 10) * 16)
rotations          N * 4             quaternion (x, y, z, w), "smallest three": u32 with the
                                     index of the largest component in the top 2 bits, then
                                     for each other component in order a sign bit and a
                                     9-bit magnitude of |q_i| / sqrt(1/2)
SH rest            N * 3 * K         degree >= 1 coefficients (none here: degree 0)
=================  ================  ==================================================

Coordinates: SPZ stores x right, y up, z back (``RUB``), which is avatar_core's head frame
(metres, +Y up, the face looking toward +Z): no conversion is needed.
Colours are the avatar's own RGB channels (``features[..., :3]``); the neural refiner is not
part of them.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Union

import numpy as np
import torch

from avatar_core.atomic import atomic_path
from avatar_core.errors import AvatarFileError
from avatar_core.gaussians.frame import GaussianFrame

SH_C0 = 0.28209479177387814
MAGIC = 0x5053474E  # "NGSP" in file order
VERSION = 3
FRACTIONAL_BITS = 12
COLOR_SCALE = 0.15
FLAG_ANTIALIASED = 0x1
_HEADER = struct.Struct("<IIIBBBB")  # 16 bytes
_SQRT1_2 = float(np.sqrt(0.5))
_MASK9 = (1 << 9) - 1
_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15, 4: 24}


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def pack_spz(frame: GaussianFrame, b: int = 0, antialiased: bool = False) -> bytes:
    """Frame ``b`` of ``frame`` as the uncompressed SPZ (version 3) payload, header included."""
    means = frame.means[b].detach().cpu().double().numpy()                  # [N, 3]
    n = means.shape[0]
    opac = frame.opacities[b].detach().cpu().double().numpy()                # [N]
    rgb = frame.features[b, :, :3].detach().cpu().double().numpy()           # [N, 3]
    scales = frame.scales[b].detach().cpu().double().numpy().clip(1e-30)     # [N, 3]
    q = frame.quats[b].detach().cpu().double().numpy()[:, [1, 2, 3, 0]]     # (w,x,y,z) -> (x,y,z,w)
    q = q / np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)

    fixed = np.round(means * (1 << FRACTIONAL_BITS)).astype(np.int64)
    limit = 1 << 23
    if n and (fixed.min() < -limit or fixed.max() >= limit):
        raise AvatarFileError(f"SPZ positions are limited to +-{limit >> FRACTIONAL_BITS} m; these Gaussians "
                              f"reach {np.abs(means).max():.1f} m.")
    pos = (fixed.astype(np.uint32) & 0xFFFFFF).astype("<u4").view(np.uint8).reshape(n, 3, 4)[:, :, :3]
    alphas = _u8(opac * 255.0)
    colours = _u8((rgb - 0.5) / SH_C0 * (COLOR_SCALE * 255.0) + 127.5)
    log_scales = _u8((np.log(scales) + 10.0) * 16.0)

    # smallest three: drop the largest |component|, make it positive (q and -q are one rotation)
    largest = np.argmax(np.abs(q), axis=1)                                   # [N], first on ties
    negate = q[np.arange(n), largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        negbit = ((q[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.floor(_MASK9 * (np.abs(q[:, i]) / _SQRT1_2) + 0.5).astype(np.uint32).clip(0, _MASK9)
        comp = np.where(keep, (comp << 10) | (negbit << 9) | mag, comp)
    rot = comp.astype("<u4").view(np.uint8).reshape(n, 4)

    header = _HEADER.pack(MAGIC, VERSION, n, 0, FRACTIONAL_BITS, FLAG_ANTIALIASED if antialiased else 0, 0)
    return b"".join([header, pos.tobytes(), alphas.tobytes(), colours.tobytes(), log_scales.tobytes(),
                     rot.tobytes()])


def write_spz(path: Union[str, Path], frame: GaussianFrame, b: int = 0) -> Path:
    """Write frame ``b`` of ``frame`` as an SPZ file (version 3, gzip, SH degree 0), atomically."""
    payload = pack_spz(frame, b)
    with atomic_path(path, "SPZ file") as tmp:
        with open(tmp, "wb") as f:
            # mtime=0: the same Gaussians give the same bytes
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=6, mtime=0) as gz:
                gz.write(payload)
    return Path(path)


def unpack_spz(data: bytes, where: str = "the SPZ data") -> GaussianFrame:
    """Decode an uncompressed SPZ payload (versions 2 and 3) into a GaussianFrame (B = 1).

    Higher-degree SH are skipped; features are RGB from the degree-0 coefficient.
    """
    if len(data) < _HEADER.size:
        raise AvatarFileError(f"{where} is too short for an SPZ header.")
    magic, version, n, sh_degree, frac, _flags, _ = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise AvatarFileError(f"{where} is not an SPZ file (magic {magic:#x}, expected {MAGIC:#x}).")
    if version not in (2, 3):
        raise AvatarFileError(f"{where} is SPZ version {version}; HeadSplat reads versions 2 and 3.")
    if sh_degree not in _SH_DIM:
        raise AvatarFileError(f"{where} announces SH degree {sh_degree}; SPZ allows 0 to 4.")
    rot_bytes = 4 if version >= 3 else 3
    sizes = [n * 9, n, n * 3, n * 3, n * rot_bytes, n * 3 * _SH_DIM[sh_degree]]
    if len(data) < _HEADER.size + sum(sizes):
        raise AvatarFileError(f"{where} is truncated: {n} Gaussians announced, "
                              f"{len(data) - _HEADER.size} of {sum(sizes)} bytes present.")
    parts, at = [], _HEADER.size
    for s in sizes:
        parts.append(np.frombuffer(data, np.uint8, s, at))
        at += s
    pos_b, alpha_b, colour_b, scale_b, rot_b, _sh = parts

    p = np.zeros((n * 3, 4), np.uint8)
    p[:, :3] = pos_b.reshape(n * 3, 3)
    fixed = p.view("<u4")[:, 0].astype(np.int64)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = (fixed.astype(np.float64) / (1 << frac)).reshape(n, 3)
    opac = alpha_b.astype(np.float64) / 255.0
    f_dc = (colour_b.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOR_SCALE
    rgb = 0.5 + SH_C0 * f_dc
    scales = np.exp(scale_b.reshape(n, 3).astype(np.float64) / 16.0 - 10.0)
    if version >= 3:
        comp = rot_b.reshape(n, 4).copy().view("<u4")[:, 0].astype(np.int64)
        largest = comp >> 30
        q = np.zeros((n, 4))
        for i in (3, 2, 1, 0):
            skip = largest == i
            mag = comp & _MASK9
            neg = (comp >> 9) & 1
            val = _SQRT1_2 * mag / _MASK9 * np.where(neg == 1, -1.0, 1.0)
            q[:, i] = np.where(skip, 0.0, val)
            comp = np.where(skip, comp, comp >> 10)
        rest = (q ** 2).sum(1)
        q[np.arange(n), largest] = np.sqrt(np.clip(1.0 - rest, 0.0, None))
    else:
        xyz = rot_b.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.clip(1.0 - (xyz ** 2).sum(1), 0.0, None))
        q = np.concatenate([xyz, w[:, None]], 1)
    quats = q[:, [3, 0, 1, 2]]                                               # (x,y,z,w) -> (w,x,y,z)
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True).clip(1e-12)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
    return GaussianFrame(t(means), t(quats), t(scales), t(opac), t(rgb))


def read_spz(path: Union[str, Path]) -> GaussianFrame:
    """Read an SPZ file (gzip layout, versions 2 and 3) as a GaussianFrame (B = 1)."""
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"The SPZ file {str(path)!r} does not exist.")
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":
        raise AvatarFileError(f"{str(path)!r} is SPZ version 4 (ZSTD streams); HeadSplat reads the gzip "
                              f"versions 2 and 3.")
    if raw[:2] != b"\x1f\x8b":
        raise AvatarFileError(f"{str(path)!r} is not an SPZ file (no gzip stream).")
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise AvatarFileError(f"{str(path)!r} is a damaged SPZ file ({exc}).") from None
    return unpack_spz(data, repr(str(path)))
