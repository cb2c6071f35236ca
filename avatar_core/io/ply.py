"""3D Gaussian Splatting PLY files in the common INRIA layout.

Vertex properties: x y z nx ny nz f_dc_0..2 [f_rest_0..] opacity scale_0..2 rot_0..3, all
float32, binary little-endian. Colour is stored as the degree-0 spherical-harmonic
coefficient (rgb = 0.5 + SH_C0 * f_dc), opacity as a logit, scales as logs, rotation as a
(w, x, y, z) quaternion. Reading accepts any PLY with those properties (extra ones, f_rest
of any degree, either endianness, ascii).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Union

import numpy as np
import torch

from avatar_core.atomic import atomic_path
from avatar_core.errors import AvatarFileError
from avatar_core.gaussians.frame import GaussianFrame

SH_C0 = 0.28209479177387814
_PLY_TYPES = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
              "float": "f4", "double": "f8", "int8": "i1", "uint8": "u1", "int16": "i2", "uint16": "u2",
              "int32": "i4", "uint32": "u4", "float32": "f4", "float64": "f8"}


def write_ply(path: Union[str, Path], frame: GaussianFrame, sh_rest: np.ndarray = None) -> Path:
    """Write frame 0 of ``frame`` as a 3DGS PLY.

    Args:
        frame: GaussianFrame (batch index 0 is written); RGB = features[..., :3].
        sh_rest: optional [N, 3 * K] higher-order SH coefficients (f_rest_*), else none.
    """
    means = frame.means[0].detach().cpu().numpy().astype(np.float32)
    n = means.shape[0]
    rgb = frame.features[0, :, :3].detach().cpu().numpy().astype(np.float32)
    opac = frame.opacities[0].detach().cpu().numpy().astype(np.float64).clip(1e-6, 1 - 1e-6)
    scales = frame.scales[0].detach().cpu().numpy().astype(np.float64).clip(1e-12, None)
    quats = frame.quats[0].detach().cpu().numpy().astype(np.float32)
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True).clip(1e-12)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    cols = [means, np.zeros((n, 3), np.float32), (rgb - 0.5) / SH_C0]
    if sh_rest is not None and sh_rest.size:
        names += [f"f_rest_{i}" for i in range(sh_rest.shape[1])]
        cols.append(sh_rest.astype(np.float32))
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    cols += [np.log(opac / (1 - opac))[:, None], np.log(scales), quats]
    data = np.concatenate([c.astype(np.float32) for c in cols], 1)
    header = ("ply\nformat binary_little_endian 1.0\ncomment written by HeadSplat\n"
              "comment colours: the avatar's own RGB channels; the neural refiner is not part of them\n")
    header += f"element vertex {n}\n" + "".join(f"property float {nm}\n" for nm in names) + "end_header\n"
    with atomic_path(path, "PLY file", size_hint=len(header) + data.size * 4) as tmp:
        with open(tmp, "wb") as f:
            f.write(header.encode("ascii"))
            f.write(np.ascontiguousarray(data, dtype="<f4").tobytes())
    return Path(path)


def read_ply_vertices(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """All vertex properties of a PLY file as {name: [N] array}."""
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"The PLY file {str(path)!r} does not exist.")
    with open(path, "rb") as f:
        if f.readline().strip() != b"ply":
            raise AvatarFileError(f"{str(path)!r} is not a PLY file (no 'ply' magic).")
        fmt, count, props, in_vertex, elements_before = None, 0, [], False, []
        while True:
            line = f.readline()
            if not line:
                raise AvatarFileError(f"{str(path)!r} has a truncated PLY header.")
            words = line.decode("ascii", "replace").split()
            if not words:
                continue
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                in_vertex = words[1] == "vertex"
                if in_vertex:
                    count = int(words[2])
                elif count == 0:
                    elements_before.append(words[1])
            elif words[0] == "property" and in_vertex:
                if words[1] == "list":
                    raise AvatarFileError(f"{str(path)!r} has list properties on vertices; not a Gaussian PLY.")
                props.append((words[2], _PLY_TYPES.get(words[1], "f4")))
            elif words[0] == "end_header":
                break
        if elements_before:
            raise AvatarFileError(f"{str(path)!r} stores {elements_before[0]} before its vertices; not a Gaussian PLY.")
        if fmt == "ascii":
            arr = np.loadtxt(f, max_rows=count, ndmin=2)
            return {name: arr[:, i].astype(np.float32) for i, (name, _) in enumerate(props)}
        endian = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(name, endian + t) for name, t in props])
        raw = f.read(dtype.itemsize * count)
        if len(raw) < dtype.itemsize * count:
            raise AvatarFileError(f"{str(path)!r} is truncated: {count} vertices announced, "
                                  f"{len(raw) // max(dtype.itemsize, 1)} present.")
        data = np.frombuffer(raw, dtype=dtype, count=count)
    return {name: np.asarray(data[name], dtype=np.float32) for name, _ in props}


def read_ply(path: Union[str, Path]) -> GaussianFrame:
    """Read a 3DGS PLY (INRIA layout, with or without f_rest) as a GaussianFrame (B = 1).

    Features are RGB from the degree-0 SH coefficient; higher-order SH are ignored.
    """
    v = read_ply_vertices(path)
    need = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3"]
    missing = [k for k in need if k not in v]
    if missing:
        raise AvatarFileError(f"{str(path)!r} lacks the Gaussian properties {', '.join(missing)}; "
                              "expected the 3DGS (INRIA) layout.")
    t = lambda *ks: torch.from_numpy(np.stack([v[k] for k in ks], 1).astype(np.float32))  # noqa: E731
    means = t("x", "y", "z")
    rgb = 0.5 + SH_C0 * t("f_dc_0", "f_dc_1", "f_dc_2")
    opac = torch.sigmoid(torch.from_numpy(v["opacity"].astype(np.float32)))
    scales = torch.exp(t("scale_0", "scale_1", "scale_2"))
    quats = t("rot_0", "rot_1", "rot_2", "rot_3")
    quats = quats / quats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return GaussianFrame(means[None], quats[None], scales[None], opac[None], rgb[None])
