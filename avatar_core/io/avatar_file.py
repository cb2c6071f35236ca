"""The avatar file: one safetensors file with JSON metadata.

Layout: tensors ``rig.*`` and ``gauss.*`` (see ``Avatar``), optional ``source.*`` (the
fitted source camera and parameters) and ``refiner.*`` (refiner weights); metadata key
``headsplat`` holds JSON with the format name and version, the head-model identity, LOD
counts, split configuration, expression and joint names and free-form info. Written
atomically; a truncated, foreign or newer file is refused with a clear message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from avatar_core.atomic import OutputError, atomic_path, check_free_space
from avatar_core.errors import AvatarFileError
from avatar_core.gaussians.avatar import Avatar
from avatar_core.validate import check_avatar_metadata, check_avatar_tensors

FORMAT_NAME = "headsplat-avatar"
FORMAT_VERSION = 1


def save_avatar(avatar: Avatar, path: Union[str, Path]) -> Path:
    """Write ``avatar`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, "avatar file") as tmp:
        write_avatar(avatar, tmp, name=path)
    return path


def write_avatar(avatar: Avatar, path: Union[str, Path], name: Union[str, Path, None] = None) -> None:
    """Write ``avatar`` to ``path`` as is (not atomically: for a temporary file of ``atomic_paths``);
    ``name`` is the file the user will see, for messages. Refuses, before writing, when the disk
    lacks the room; a write error is an OutputError sentence."""
    path = Path(path)
    name = path if name is None else Path(name)
    tensors = {}
    for field in Avatar.RIG_FIELDS:
        tensors["rig." + field[4:]] = getattr(avatar, field)
    for field in Avatar.GAUSSIAN_FIELDS:
        tensors["gauss." + field] = getattr(avatar, field)
    for k, v in avatar.source.items():
        tensors["source." + k] = torch.as_tensor(v)
    for k, v in (avatar.refiner_state or {}).items():
        tensors["refiner." + k] = v
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "head": {"name": avatar.head_name, "identity": avatar.head_identity},
        "expr_names": list(avatar.expr_names),
        "joint_names": list(avatar.joint_names),
        "lod_counts": {str(k): v for k, v in avatar.lod_counts().items()},
        "num_gaussians": avatar.num_gaussians,
        "channels": avatar.channels,
        "split": {"k": avatar.split_k, "levels": avatar.split_levels},
        "refiner": avatar.refiner_config if avatar.refiner_state else None,
        "info": avatar.info,
    }
    header = json.dumps(meta)
    size = sum(t.numel() * t.element_size() for t in tensors.values()) + 128 * len(tensors) + len(header)
    check_free_space(path.parent if str(path.parent) else Path("."), size, "avatar file", name)
    try:
        save_file(tensors, str(path), metadata={"headsplat": header})
    except SafetensorError as exc:  # an OSError inside the Rust writer (disk full, I/O)
        raise OutputError(f"Cannot write the avatar file {str(name)!r}: {exc}.") from None


def read_metadata(path: Union[str, Path]) -> dict:
    """The JSON metadata of an avatar file, validated (format, version)."""
    path = Path(path)
    if not path.is_file():
        raise AvatarFileError(f"The avatar file {str(path)!r} does not exist.")
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("headsplat")
    except (SafetensorError, OSError, ValueError) as exc:
        raise AvatarFileError(
            f"{str(path)!r} is not a readable avatar file (truncated or not safetensors: {exc}).") from None
    if raw is None:
        raise AvatarFileError(f"{str(path)!r} is a safetensors file but not a HeadSplat avatar (no 'headsplat' metadata).")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        raise AvatarFileError(f"{str(path)!r} has corrupt avatar metadata (not JSON).") from None
    return check_avatar_metadata(meta, repr(str(path)), FORMAT_NAME, FORMAT_VERSION)


def load_avatar(path: Union[str, Path], device=None) -> Avatar:
    """Read an avatar file written by ``save_avatar``."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AvatarFileError(f"{str(path)!r} is truncated or corrupt ({exc}).") from None
    fields = {}
    missing = []
    for name in Avatar.RIG_FIELDS:
        key = "rig." + name[4:]
        if key not in tensors:
            missing.append(key)
        else:
            fields[name] = tensors[key]
    for name in Avatar.GAUSSIAN_FIELDS:
        key = "gauss." + name
        if key not in tensors:
            missing.append(key)
        else:
            fields[name] = tensors[key]
    if missing:
        raise AvatarFileError(f"{str(path)!r} lacks the tensors {', '.join(missing[:4])}; it is not a complete avatar.")
    n = fields["offset"].shape[0]
    bad = [k for k in Avatar.GAUSSIAN_FIELDS if fields[k].shape[0] != n]
    if bad:
        raise AvatarFileError(f"{str(path)!r} is inconsistent: {bad[0]} has {fields[bad[0]].shape[0]} rows, expected {n}.")
    check_avatar_tensors(fields, meta, repr(str(path)))
    source = {k[len("source."):]: v for k, v in tensors.items() if k.startswith("source.")}
    refiner = {k[len("refiner."):]: v for k, v in tensors.items() if k.startswith("refiner.")} or None
    return Avatar(
        **fields,
        expr_names=list(meta.get("expr_names", [])),
        joint_names=list(meta.get("joint_names", [])),
        head_name=meta.get("head", {}).get("name", ""),
        head_identity=meta.get("head", {}).get("identity", ""),
        split_k=int(meta.get("split", {}).get("k", 2)),
        split_levels=int(meta.get("split", {}).get("levels", 0)),
        source=source,
        refiner_state=refiner,
        refiner_config=meta.get("refiner") or {},
        info=meta.get("info", {}),
    )
