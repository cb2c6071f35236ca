"""glTF binary (.glb) files with the ratified KHR_gaussian_splatting extension.

One mesh with one ``POINTS`` primitive, all attributes float32 in their own buffer views:

===========================================  ======  ==========================================
attribute                                    type    content
===========================================  ======  ==========================================
``POSITION``                                 VEC3    Gaussian centres, metres (min/max given)
``KHR_gaussian_splatting:ROTATION``          VEC4    unit quaternion, glTF order (x, y, z, w)
``KHR_gaussian_splatting:SCALE``             VEC3    linear standard deviations, metres
``KHR_gaussian_splatting:OPACITY``           SCALAR  0..1
``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``  VEC3  f_dc: rgb = 0.5 + 0.282095 * f_dc
``COLOR_0``                                  VEC4    point-cloud fallback: linear RGB (sRGB
                                                     decoded, clamped), alpha = opacity
===========================================  ======  ==========================================

The primitive's extension object says ``kernel: "ellipse"``, ``colorSpace:
"srgb_rec709_display"`` (the avatar is fitted to photographs' sRGB pixels),
``projection: "perspective"``, ``sortingMethod: "cameraDistance"``; ``extensionsUsed`` lists
``KHR_gaussian_splatting`` (not ``extensionsRequired``: viewers without it show the points).

Coordinates: glTF is metres, +Y up, the asset's front toward +Z; avatar_core's head frame is
the same (metres, +Y up, the face looking toward +Z), so nothing is converted.
Colours are the avatar's own RGB channels (``features[..., :3]``); the neural refiner is not
part of them (``asset.extras.headsplat`` says so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch

from avatar_core.atomic import atomic_path
from avatar_core.errors import AvatarFileError
from avatar_core.gaussians.frame import GaussianFrame

SH_C0 = 0.28209479177387814
EXTENSION = "KHR_gaussian_splatting"
ROTATION = EXTENSION + ":ROTATION"
SCALE = EXTENSION + ":SCALE"
OPACITY = EXTENSION + ":OPACITY"
SH0 = EXTENSION + ":SH_DEGREE_0_COEF_0"
EXTENSION_OBJECT = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
                    "projection": "perspective", "sortingMethod": "cameraDistance"}
_FLOAT = 5126
_ARRAY_BUFFER = 34962
_POINTS = 0


def _pygltflib():
    try:
        import pygltflib
    except ImportError:
        raise AvatarFileError("glTF files need the Python package pygltflib, which is not installed "
                              "(pip install pygltflib).") from None
    return pygltflib


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def frame_arrays(frame: GaussianFrame, b: int = 0) -> Dict[str, np.ndarray]:
    """Frame ``b`` as the primitive's attribute arrays (float32, [N, k]), see the module doc."""
    means = frame.means[b].detach().cpu().float().numpy()
    quats = frame.quats[b].detach().cpu().double().numpy()
    quats = quats / np.linalg.norm(quats, axis=1, keepdims=True).clip(1e-12)
    rgb = frame.features[b, :, :3].detach().cpu().double().numpy()
    opac = frame.opacities[b].detach().cpu().double().numpy().clip(0.0, 1.0)
    colour = np.concatenate([_srgb_to_linear(rgb.clip(0.0, 1.0)), opac[:, None]], 1)
    f32 = lambda a: np.ascontiguousarray(a, dtype="<f4")  # noqa: E731
    return {
        "POSITION": f32(means),
        ROTATION: f32(quats[:, [1, 2, 3, 0]]),                               # (w,x,y,z) -> (x,y,z,w)
        SCALE: f32(frame.scales[b].detach().cpu().numpy().clip(0.0, None)),
        OPACITY: f32(opac),
        SH0: f32((rgb - 0.5) / SH_C0),
        "COLOR_0": f32(colour),
    }


def write_glb(path: Union[str, Path], frame: GaussianFrame, b: int = 0, name: str = "HeadSplat avatar",
              extras: Optional[dict] = None) -> Path:
    """Write frame ``b`` of ``frame`` as a .glb with a KHR_gaussian_splatting points primitive.

    Args:
        frame: GaussianFrame; RGB = features[..., :3]. extras: JSON-able metadata stored under
            ``asset.extras.headsplat`` (what was exported, how).
    """
    gl = _pygltflib()

    arrays = frame_arrays(frame, b)
    n = arrays["POSITION"].shape[0]
    if n == 0:
        raise AvatarFileError(f"Cannot write {str(path)!r}: the frame has no Gaussians.")
    types = {1: "SCALAR", 3: "VEC3", 4: "VEC4"}
    blob, views, accessors, attributes = bytearray(), [], [], {}
    for key, arr in arrays.items():
        width = 1 if arr.ndim == 1 else arr.shape[1]
        data = arr.tobytes()
        views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=_ARRAY_BUFFER))
        blob += data + b"\0" * (-len(data) % 4)
        acc = gl.Accessor(bufferView=len(views) - 1, componentType=_FLOAT, count=n, type=types[width])
        if key == "POSITION":  # required by glTF for POSITION
            acc.min = [float(v) for v in arr.min(0)]
            acc.max = [float(v) for v in arr.max(0)]
        accessors.append(acc)
        attributes[key] = len(accessors) - 1
    meta = {"colours": "the avatar's own RGB channels (features 0-2); the neural refiner is not part of them",
            "coordinates": "metres, +Y up, face toward +Z (glTF's axes; avatar_core's head frame)"}
    meta.update(extras or {})
    gltf = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator="HeadSplat", extras={"headsplat": meta}),
        extensionsUsed=[EXTENSION],
        scene=0,
        scenes=[gl.Scene(nodes=[0])],
        nodes=[gl.Node(mesh=0, name=name)],
        meshes=[gl.Mesh(name=name, primitives=[gl.Primitive(
            attributes=gl.Attributes(**attributes), mode=_POINTS,
            extensions={EXTENSION: dict(EXTENSION_OBJECT)})])],
        accessors=accessors,
        bufferViews=views,
        buffers=[gl.Buffer(byteLength=len(blob))],
    )
    gltf.set_binary_blob(bytes(blob))
    with atomic_path(path, "glTF file") as tmp:
        gltf.save_binary(str(tmp))
    return Path(path)


def read_glb(path: Union[str, Path]) -> GaussianFrame:
    """Read the first KHR_gaussian_splatting primitive of a .glb as a GaussianFrame (B = 1).

    Float accessors only (what ``write_glb`` and most exporters write); node transforms are
    not applied. Features are RGB from the degree-0 SH coefficient.
    """
    gl = _pygltflib()

    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"The glTF file {str(path)!r} does not exist.")
    try:
        gltf = gl.GLTF2.load_binary(str(path))
    except Exception as exc:  # pygltflib raises assorted errors on foreign bytes
        raise AvatarFileError(f"{str(path)!r} is not a readable .glb file ({exc}).") from None
    if gltf is None:
        raise AvatarFileError(f"{str(path)!r} is not a readable .glb file.")
    blob = gltf.binary_blob() or b""
    for mesh in gltf.meshes or []:
        for prim in mesh.primitives:
            if EXTENSION not in (prim.extensions or {}):
                continue
            attrs = {k: v for k, v in vars(prim.attributes).items() if v is not None}
            missing = [k for k in ("POSITION", ROTATION, SCALE, OPACITY, SH0) if k not in attrs]
            if missing:
                raise AvatarFileError(f"{str(path)!r} has a {EXTENSION} primitive without {', '.join(missing)}.")
            get = lambda k: _accessor(gltf, blob, attrs[k], path)  # noqa: E731
            q = get(ROTATION)[:, [3, 0, 1, 2]]
            rgb = 0.5 + SH_C0 * get(SH0)
            t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None]  # noqa: E731
            return GaussianFrame(t(get("POSITION")), t(q), t(get(SCALE)), t(get(OPACITY).reshape(-1)), t(rgb))
    raise AvatarFileError(f"{str(path)!r} has no {EXTENSION} primitive.")


def _accessor(gltf, blob: bytes, index: int, path: Path) -> np.ndarray:
    acc = gltf.accessors[index]
    if acc.componentType != _FLOAT or acc.bufferView is None:
        raise AvatarFileError(f"{str(path)!r}: accessor {index} is not a plain float accessor; "
                              f"HeadSplat reads float attributes only.")
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc.type]
    view = gltf.bufferViews[acc.bufferView]
    stride = view.byteStride or 4 * width
    start = (view.byteOffset or 0) + (acc.byteOffset or 0)
    if start + stride * (acc.count - 1) + 4 * width > len(blob):
        raise AvatarFileError(f"{str(path)!r} is truncated: accessor {index} runs past the binary chunk.")
    arr = np.ndarray((acc.count, width), dtype="<f4", buffer=blob, offset=start, strides=(stride, 4))
    return np.array(arr, dtype=np.float32)
