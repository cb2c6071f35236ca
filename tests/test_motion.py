"""Motion in: the sequence type and its file, FLAME npz and ARKit CSV readers, retargeting,
and the ``animate`` command."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_core.errors import MotionError
from avatar_core.motion import ExpressionRetargeter, MotionSequence, landmark_basis, load_motion, retarget
from avatar_core.motion.arkit import ARKIT_NAMES, euler_to_axis_angle
from avatar_core.motion.arkit_csv import estimate_fps
from avatar_core.motion.retarget import align_embeddings
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
T = 7


def rng(seed=0):
    return np.random.default_rng(seed)


def rotate(aa, v):
    """Apply axis-angle [3] to a vector [3]."""
    from scipy.spatial.transform import Rotation
    return Rotation.from_rotvec(aa).apply(v)


# ------------------------------------------------------------------------------ sequence
def make_seq(T=T, E=4, fps=30.0, seed=0):
    r = rng(seed)
    return MotionSequence(fps=fps, expr_names=[f"e{i}" for i in range(E)],
                          expression=r.normal(size=(T, E)), pose=0.2 * r.normal(size=(T, 5, 3)),
                          translation=0.01 * r.normal(size=(T, 3)), shape=r.normal(size=5), source="synthetic")


def test_sequence_validation():
    s = make_seq()
    assert s.num_frames == T and s.expression.dtype == np.float32 and s.pose.shape == (T, 5, 3)
    with pytest.raises(MotionError, match=r"pose has shape \[7, 4, 3\]"):
        MotionSequence(30, ["a"], np.zeros((T, 1)), np.zeros((T, 4, 3)), np.zeros((T, 3)), source="x.npz")
    with pytest.raises(MotionError, match="x.npz: translation"):
        MotionSequence(30, ["a"], np.zeros((T, 1)), np.zeros((T, 5, 3)), np.zeros((T + 1, 3)), source="x.npz")
    with pytest.raises(MotionError, match="2 expression names for 1"):
        MotionSequence(30, ["a", "b"], np.zeros((T, 1)), np.zeros((T, 5, 3)), np.zeros((T, 3)))
    bad = np.zeros((T, 1))
    bad[3, 0] = np.nan
    with pytest.raises(MotionError, match=r"expression contains NaN .*index \(3, 0\)"):
        MotionSequence(30, ["a"], bad, np.zeros((T, 5, 3)), np.zeros((T, 3)))
    with pytest.raises(MotionError, match="fps"):
        MotionSequence(0, ["a"], np.zeros((T, 1)), np.zeros((T, 5, 3)), np.zeros((T, 3)))


def test_sequence_slice_resample_frame(small_avatar):
    s = make_seq(T=9)
    sl = s.slice(2, 8, 2)
    assert sl.num_frames == 3 and sl.fps == 15.0
    np.testing.assert_array_equal(sl.expression, s.expression[2:8:2])
    up = s.resample(60.0)
    assert up.num_frames == 18 and up.fps == 60.0
    np.testing.assert_allclose(up.expression[::2], s.expression, atol=1e-6)
    np.testing.assert_allclose(up.expression[1], 0.5 * (s.expression[0] + s.expression[1]), atol=1e-6)
    # rotations are interpolated on the sphere: the midpoint of a rotation about one axis
    a = MotionSequence(10, ["a"], np.zeros((2, 1)), np.zeros((2, 5, 3)), np.zeros((2, 3)))
    a.pose[1, 1] = [0.0, 1.2, 0.0]
    np.testing.assert_allclose(a.resample(20).pose[1, 1], [0.0, 0.6, 0.0], atol=1e-6)
    down = s.resample(15.0)
    assert down.num_frames == 4 or down.num_frames == 5
    # frame(t) feeds Avatar.animate directly
    seq = MotionSequence.zeros(3, small_avatar.expr_names)
    seq.expression[1, 0] = 1.0
    p = seq.frame(1)
    assert p["expression"].shape == (1, len(small_avatar.expr_names)) and p["pose"].shape == (1, 5, 3)
    g = small_avatar.animate(lod=0, **p)
    assert g.means.shape[0] == 1 and torch.isfinite(g.means).all()
    assert seq.frame(-1)["expression"].shape[0] == 1
    with pytest.raises(MotionError):
        seq.frame(3)


def test_sequence_save_load_roundtrip(tmp_path):
    s = make_seq()
    s.warnings.append("something was repaired")
    path = s.save(tmp_path / "m.npz")
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]  # no temporary left behind
    back = load_motion(path)
    for k in ("expression", "pose", "translation", "shape"):
        np.testing.assert_array_equal(getattr(back, k), getattr(s, k))
    assert back.expr_names == s.expr_names and back.fps == s.fps and back.warnings == s.warnings
    # loads without pickle
    with np.load(path, allow_pickle=False) as d:
        assert int(d["headsplat_motion"]) == 1
    with pytest.raises(MotionError, match="does not exist"):
        s.save(tmp_path / "nope" / "m.npz")
    with pytest.raises(MotionError, match=".npz"):
        s.save(tmp_path / "m.bin")


# ------------------------------------------------------------------------------ FLAME npz
def flame_arrays(T=T, E=10, seed=1):
    r = rng(seed)
    return dict(expr=r.normal(size=(T, E)), root=0.1 * r.normal(size=(T, 3)), neck=0.1 * r.normal(size=(T, 3)),
                jaw=0.1 * r.normal(size=(T, 3)), eyes=0.1 * r.normal(size=(T, 6)), trans=0.01 * r.normal(size=(T, 3)),
                shape=r.normal(size=20))


VARIANTS = {
    # GaussianAvatars / VHAP flame_param.npz
    "vhap": lambda a: dict(expr=a["expr"], rotation=a["root"], neck_pose=a["neck"], jaw_pose=a["jaw"],
                           eyes_pose=a["eyes"], translation=a["trans"], shape=a["shape"]),
    # smplx-style names, betas per frame, [T, 1, 3] joints, separate eyes
    "smplx": lambda a: dict(exp=a["expr"], global_orient=a["root"][:, None], neck_pose=a["neck"][:, None],
                            jaw_pose=a["jaw"][:, None], leye_pose=a["eyes"][:, :3], reye_pose=a["eyes"][:, 3:],
                            transl=a["trans"], betas=np.repeat(a["shape"][None], T, 0)),
    "expression_root_pose": lambda a: dict(expression=a["expr"], root_pose=a["root"], neck_pose=a["neck"],
                                           jaw_pose=a["jaw"], eyes_pose=a["eyes"].reshape(T, 2, 3),
                                           trans=a["trans"], shape=a["shape"][None]),
    # a tracker's combined pose [T, 15]: root, neck, jaw, left eye, right eye
    "pose15": lambda a: dict(expr=a["expr"], pose=np.concatenate([a["root"], a["neck"], a["jaw"], a["eyes"]], 1),
                             translation=a["trans"], shape=a["shape"]),
    "params": lambda a: dict(expression_params=a["expr"], global_pose=a["root"], neck_pose=a["neck"],
                             jaw_pose=a["jaw"], eye_pose=a["eyes"], translation=a["trans"], shape_params=a["shape"]),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_flame_npz_variants(tmp_path, variant):
    a = flame_arrays()
    path = tmp_path / f"{variant}.npz"
    np.savez(path, fps=25.0, **VARIANTS[variant](a))
    s = load_motion(path)
    assert s.warnings == [], s.warnings
    assert s.fps == 25.0 and s.num_frames == T
    assert s.expr_names == [f"exp_{i:03d}" for i in range(10)]
    np.testing.assert_allclose(s.expression, a["expr"], atol=1e-6)
    for j, key in ((0, "root"), (1, "neck"), (2, "jaw")):
        np.testing.assert_allclose(s.pose[:, j], a[key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(s.pose[:, 3], a["eyes"][:, :3], atol=1e-6)
    np.testing.assert_allclose(s.pose[:, 4], a["eyes"][:, 3:], atol=1e-6)
    np.testing.assert_allclose(s.translation, a["trans"], atol=1e-6)
    np.testing.assert_allclose(s.shape, a["shape"], atol=1e-6)


def test_flame_npz_pose6_and_defaults(tmp_path):
    a = flame_arrays()
    path = tmp_path / "deca.npz"
    np.savez(path, exp=a["expr"][:, :5], pose=np.concatenate([a["root"], a["jaw"]], 1))
    s = load_motion(path)
    np.testing.assert_allclose(s.pose[:, 0], a["root"], atol=1e-6)
    np.testing.assert_allclose(s.pose[:, 2], a["jaw"], atol=1e-6)
    assert np.all(s.pose[:, [1, 3, 4]] == 0) and np.all(s.translation == 0)
    assert s.fps == 30.0 and any("no frame-rate key" in w for w in s.warnings)
    assert load_motion(path, fps=50).fps == 50.0
    # expression only: the head is held still, with a warning
    np.savez(tmp_path / "expr_only.npz", expr=a["expr"], fps=30)
    s = load_motion(tmp_path / "expr_only.npz")
    assert np.all(s.pose == 0) and any("no pose key" in w for w in s.warnings)
    # a separate joint key beats the combined pose, with a warning
    np.savez(tmp_path / "both.npz", expr=a["expr"], pose=np.zeros((T, 15)), jaw_pose=a["jaw"], fps=30)
    s = load_motion(tmp_path / "both.npz")
    np.testing.assert_allclose(s.pose[:, 2], a["jaw"], atol=1e-6)
    assert any("override" in w for w in s.warnings)


def test_flame_npz_bad_inputs(tmp_path):
    a = flame_arrays()
    np.savez(tmp_path / "noexpr.npz", jaw_pose=a["jaw"], rotation=a["root"])
    with pytest.raises(MotionError, match=r"noexpr.npz' has no expression key \(it has jaw_pose, rotation\)"):
        load_motion(tmp_path / "noexpr.npz")
    np.savez(tmp_path / "mismatch.npz", expr=a["expr"], jaw_pose=a["jaw"][:-1])
    with pytest.raises(MotionError, match=r"different frame counts \(expr: 7, jaw_pose: 6\)"):
        load_motion(tmp_path / "mismatch.npz")
    np.savez(tmp_path / "width.npz", expr=a["expr"], jaw_pose=a["eyes"])
    with pytest.raises(MotionError, match=r"jaw_pose has shape \[7, 6\]; expected \[T, 3\]"):
        load_motion(tmp_path / "width.npz")
    np.savez(tmp_path / "pose.npz", expr=a["expr"], pose=np.zeros((T, 9)))
    with pytest.raises(MotionError, match=r"\[T, 15\]"):
        load_motion(tmp_path / "pose.npz")
    # unknown and known-but-unused keys: warnings, not errors
    np.savez(tmp_path / "extra.npz", expr=a["expr"], jaw_pose=a["jaw"], fps=30, static_offset=np.zeros((1, 5, 3)),
             camera_K=np.eye(3), frame_id=np.arange(T))
    s = load_motion(tmp_path / "extra.npz")
    assert any("static_offset" in w for w in s.warnings)
    assert any("unknown keys camera_K, frame_id" in w for w in s.warnings)
    # pickled objects are refused, not unpickled
    np.savez(tmp_path / "obj.npz", expr=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MotionError, match="pickled"):
        load_motion(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(MotionError, match="not an .npz archive"):
        load_motion(tmp_path / "junk.npz")
    with pytest.raises(MotionError, match="does not exist"):
        load_motion(tmp_path / "missing.npz")
    (tmp_path / "clip.bin").write_bytes(bytes(range(256)))
    with pytest.raises(MotionError, match="not a motion file"):
        load_motion(tmp_path / "clip.bin")


def test_flame_npz_nan_policy(tmp_path):
    a = flame_arrays()
    expr = a["expr"].copy()
    expr[3, 2] = np.nan                      # an isolated bad frame: interpolated
    jaw = a["jaw"].copy()
    jaw[0] = np.nan                          # a bad first frame: the nearest valid one is copied
    np.savez(tmp_path / "gap.npz", expr=expr, jaw_pose=jaw, fps=30)
    s = load_motion(tmp_path / "gap.npz")
    np.testing.assert_allclose(s.expression[3], 0.5 * (expr[2] + expr[4]), atol=1e-6)
    np.testing.assert_allclose(s.pose[0, 2], jaw[1], atol=1e-6)
    assert any("interpolated expr over 1 frame(s)" in w and "(3)" in w for w in s.warnings)
    expr[2:5] = np.nan                       # three bad frames in a row: refused
    np.savez(tmp_path / "long.npz", expr=expr, fps=30)
    with pytest.raises(MotionError, match=r"3 consecutive frames with NaN or inf \(frames 2-4\)"):
        load_motion(tmp_path / "long.npz")


# ------------------------------------------------------------------------------ ARKit CSV
LLF_ANGLES = ["HeadYaw", "HeadPitch", "HeadRoll", "LeftEyeYaw", "LeftEyePitch", "LeftEyeRoll",
              "RightEyeYaw", "RightEyePitch", "RightEyeRoll"]


def capitalised(n):
    return n[0].upper() + n[1:]


def llf_csv(path, n, fps, tc_rate, values=None, angles=None, offset=0):
    """A Live Link Face style CSV: n rows at ``fps`` (an integer) with timecodes at ``tc_rate``,
    the first row ``offset`` rows after 12:34:56:00."""
    header = ["Timecode", "BlendShapeCount"] + [capitalised(x) for x in ARKIT_NAMES] + LLF_ANGLES
    lines = [",".join(header)]
    for i in range(n):
        a = (12 * 3600 + 34 * 60 + 56) * fps + offset + i   # rows since midnight
        sec, rem = divmod(a, fps)
        frame, sub = divmod(rem * tc_rate, fps)             # timecode frame and its fraction (exact)
        tc = f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}:{frame:02d}.{1000 * sub // fps:03d}"
        v = values[i] if values is not None else np.zeros(52)
        ang = angles[i] if angles is not None else np.zeros(9)
        lines.append(",".join([tc, "61"] + [f"{x:.6f}" for x in v] + [f"{x:.6f}" for x in ang]))
    Path(path).write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("fps,tc_rate,n", [(60, 60, 150), (60, 30, 150), (30, 30, 95), (50, 25, 120),
                                           (60, 60, 40), (60, 30, 45)])
def test_llf_csv_fps_from_timecodes(tmp_path, fps, tc_rate, n):
    # short takes (under a second) cross one whole-second change only
    s = load_motion(llf_csv(tmp_path / "take.csv", n, fps, tc_rate, offset=fps // 2 if n < fps else 0))
    assert s.fps == fps and s.num_frames == n
    assert s.warnings == [], s.warnings


def test_llf_csv_values_and_angles(tmp_path):
    n = 12
    vals = rng(3).uniform(0, 1, size=(n, 52))
    ang = np.zeros((n, 9))
    ang[:, 1] = 0.3                       # head pitch
    ang[5, 0] = 0.4                       # head yaw on frame 5
    ang[:, 3] = -0.2                      # left eye yaw
    ang[:, 7] = 0.1                       # right eye pitch
    s = load_motion(llf_csv(tmp_path / "t.csv", n, 60, 60, vals, ang))
    assert s.expr_names == list(ARKIT_NAMES)
    np.testing.assert_allclose(s.expression, vals, atol=1e-5)
    assert np.all(s.pose[:, 0] == 0)      # the root stays; head angles drive the neck
    # positive pitch looks down: the face direction +Z gets a negative Y component
    face = rotate(s.pose[0, 1], [0, 0, 1])
    assert face[1] < -0.25 and abs(face[0]) < 1e-6
    # positive yaw turns toward +X (the subject's left)
    face5 = rotate(s.pose[5, 1], [0, 0, 1])
    assert face5[0] > 0.3
    np.testing.assert_allclose(s.pose[0, 3], [0, -0.2, 0], atol=1e-6)
    np.testing.assert_allclose(s.pose[0, 4], [0.1, 0, 0], atol=1e-6)
    # signs can be flipped and the head rotation put on the root
    s2 = load_motion(tmp_path / "t.csv", head_joint="root", euler_signs=(1, -1, 1))
    np.testing.assert_allclose(s2.pose[0, 0], -s.pose[0, 1], atol=1e-6)
    assert np.all(s2.pose[:, 1] == 0)
    # roll about +Z raises the +X side
    aa = euler_to_axis_angle(np.array([0.0]), np.array([0.0]), np.array([0.2]))[0]
    assert rotate(aa, [1, 0, 0])[1] > 0.19


def test_arkit_csv_names_only_and_headerless(tmp_path):
    vals = rng(4).uniform(0, 1, size=(5, 52))
    header = ",".join(ARKIT_NAMES)        # our own spelling, no timecode
    (tmp_path / "names.csv").write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in vals))
    s = load_motion(tmp_path / "names.csv")
    np.testing.assert_allclose(s.expression, vals, atol=1e-6)
    assert s.fps == 60.0 and any("no Timecode column" in w for w in s.warnings)
    (tmp_path / "bare.csv").write_text("\n".join(",".join(map(str, r)) for r in vals))
    s = load_motion(tmp_path / "bare.csv", fps=30)
    np.testing.assert_allclose(s.expression, vals, atol=1e-6)
    assert s.fps == 30 and any("no header row" in w for w in s.warnings)
    # a subset of names plus an unknown column: missing ones are 0, both warned about
    (tmp_path / "part.csv").write_text("JawOpen,EyeBlinkLeft,Mood\n0.5,0.25,happy\n0.4,0.2,sad\n")
    s = load_motion(tmp_path / "part.csv")
    assert s.expression[0, ARKIT_NAMES.index("jawOpen")] == 0.5
    assert any("lacks 50 of the 52" in w for w in s.warnings) and any("unknown columns Mood" in w for w in s.warnings)


def test_arkit_csv_bad_inputs(tmp_path):
    (tmp_path / "none.csv").write_text("a,b,c\n1,2,3\n")
    with pytest.raises(MotionError, match="names none of the 52 ARKit blendshapes"):
        load_motion(tmp_path / "none.csv")
    (tmp_path / "text.csv").write_text("JawOpen,EyeBlinkLeft\n0.5,0.2\n0.5,oops\n")
    with pytest.raises(MotionError, match=r"line 3, column EyeBlinkLeft: 'oops' is not a number"):
        load_motion(tmp_path / "text.csv")
    (tmp_path / "short.csv").write_text("JawOpen,EyeBlinkLeft\n0.5\n")
    with pytest.raises(MotionError, match="line 2: 1 cells for 2"):
        load_motion(tmp_path / "short.csv")
    (tmp_path / "empty.csv").write_text("JawOpen,EyeBlinkLeft\n")
    with pytest.raises(MotionError, match="no frames"):
        load_motion(tmp_path / "empty.csv")
    # an empty cell in one frame is interpolated; many in a row are refused
    rows = "JawOpen,JawForward\n0.2,0\n,0\n0.4,0\n"
    (tmp_path / "gap.csv").write_text(rows)
    s = load_motion(tmp_path / "gap.csv")
    assert abs(s.expression[1, ARKIT_NAMES.index("jawOpen")] - 0.3) < 1e-6
    (tmp_path / "gap3.csv").write_text("JawOpen,JawForward\n0.2,0\n,0\n,0\n,0\n0.4,0\n")
    with pytest.raises(MotionError, match="3 consecutive frames"):
        load_motion(tmp_path / "gap3.csv")


def test_estimate_fps_unclear():
    assert estimate_fps(["12:00:00:01.000"])[0] == 60.0
    fps, note = estimate_fps(["12:00:00:01.000", "12:00:00:02.000"])  # no whole-second change
    assert fps == 60.0 and "less than a second" in note
    fps, note = estimate_fps(["12:00:01:00.000", "12:00:00:59.000"])
    assert fps == 60.0 and "backwards" in note
    fps, note = estimate_fps(["bad", "12:00:00:02.000"])
    assert fps == 60.0 and "'bad'" in note


# ------------------------------------------------------------------------------ retargeting
def mixed_heads(test_head, M):
    """Head B whose basis is head A's mixed by M: B.exprdirs = A.exprdirs @ M."""
    import dataclasses
    dirs = torch.einsum("vie,ef->vif", test_head.exprdirs, torch.as_tensor(M, dtype=torch.float32))
    names = [f"b{i}" for i in range(M.shape[1])]
    return dataclasses.replace(test_head, exprdirs=dirs, expr_names=names, name="mixed")


def embedding(head, K=200, seed=5):
    r = rng(seed)
    face_idx = r.choice(head.num_faces, size=K, replace=False)
    bary = r.dirichlet(np.ones(3), size=K)
    return face_idx, bary


def test_landmark_basis(test_head):
    face_idx, bary = embedding(test_head, K=10)
    B = landmark_basis(test_head, (face_idx, bary))
    assert B.shape == (10, 3, test_head.num_expr)
    f = test_head.faces[face_idx[0]]
    want = sum(bary[0, c] * test_head.exprdirs[f[c]].numpy() for c in range(3))
    np.testing.assert_allclose(B[0], want, atol=1e-7)
    with pytest.raises(MotionError, match="another head model"):
        landmark_basis(test_head, (np.array([10 ** 6]), np.ones((1, 3)) / 3))


def test_retarget_recovers_known_mixing(test_head):
    E = test_head.num_expr
    M = np.eye(E) + 0.3 * rng(6).normal(size=(E, E))          # invertible mix
    head_b = mixed_heads(test_head, M)
    emb = embedding(test_head)
    R = ExpressionRetargeter(landmark_basis(test_head, emb), landmark_basis(head_b, emb),
                             source_names=test_head.expr_names, target_names=head_b.expr_names, reg=1e-8)
    np.testing.assert_allclose(R.W, np.linalg.inv(M), atol=1e-3)
    assert R.residual < 1e-3 and not R.nonneg
    # a motion on A, retargeted to B, moves B's surface like A's
    seq = MotionSequence(30, test_head.expr_names, rng(7).uniform(-1, 1, size=(4, E)), np.zeros((4, 5, 3)),
                         np.zeros((4, 3)), source="a.npz")
    out = retarget(seq, head_b, R)
    assert out.expr_names == head_b.expr_names and any("retargeted 6 expressions" in w for w in out.warnings)
    va = test_head(expression=torch.as_tensor(seq.expression)).vertices
    vb = head_b(expression=torch.as_tensor(out.expression)).vertices
    assert (va - vb).abs().max() < 1e-5
    # from_heads with embeddings that found different landmark subsets
    import types
    fa, ba = emb
    ea = types.SimpleNamespace(landmark_ids=np.arange(200), face_idx=fa, bary=ba)
    eb = types.SimpleNamespace(landmark_ids=np.arange(50, 250), face_idx=np.concatenate([fa[50:], fa[:50]]),
                               bary=np.concatenate([ba[50:], ba[:50]]))
    (fa2, _), (fb2, _) = align_embeddings(ea, eb)
    np.testing.assert_array_equal(fa2, fb2)
    R2 = ExpressionRetargeter.from_heads(test_head, ea, head_b, eb, reg=1e-8)
    np.testing.assert_allclose(R2.W, np.linalg.inv(M), atol=1e-2)


def test_retarget_nonneg_for_arkit_targets(test_head):
    E = test_head.num_expr
    perm = rng(8).permutation(E)
    M = np.zeros((E, E))
    M[np.arange(E), perm] = rng(9).uniform(0.5, 2.0, size=E)   # permutation with positive gains
    head_b = mixed_heads(test_head, M)
    head_b.expr_names = [ARKIT_NAMES[i] for i in range(E)]      # an ARKit target: W >= 0 by default
    emb = embedding(test_head)
    S, Tb = landmark_basis(test_head, emb), landmark_basis(head_b, emb)
    R = ExpressionRetargeter(S, Tb, source_names=[f"exp_{i:03d}" for i in range(E)],
                             target_names=head_b.expr_names, reg=1e-8)
    assert R.nonneg and R.source_signed and R.W_neg is not None
    np.testing.assert_allclose(R.W, np.linalg.inv(M), atol=1e-3)
    assert (R.W >= 0).all() and (R.W_neg >= 0).all()
    e = rng(10).uniform(0, 1, size=(5, E))
    np.testing.assert_allclose(R.apply(e), e @ np.linalg.inv(M).T, atol=1e-3)
    # negative source coefficients go through their own non-negative map: the output stays >= 0
    out = R.apply(-e)
    assert (out >= 0).all()
    np.testing.assert_allclose(out, e @ R.W_neg.T, atol=1e-6)


def test_retarget_routes():
    seq = MotionSequence(30, ["jawOpen", "eyeBlinkLeft", "cheekPuff"], np.ones((2, 3)), np.zeros((2, 5, 3)),
                         np.zeros((2, 3)), source="take.csv")
    assert retarget(seq, ["jawOpen", "eyeBlinkLeft", "cheekPuff"]) is seq
    out = retarget(seq, ["eyeBlinkLeft", "jawOpen", "browInnerUp"])
    np.testing.assert_array_equal(out.expression, [[1, 1, 0], [1, 1, 0]])
    assert any("1 of its 3 expressions are not in the avatar's space" in w and "cheekPuff" in w for w in out.warnings)
    flame = MotionSequence(30, [f"exp_{i:03d}" for i in range(50)], np.zeros((2, 50)), np.zeros((2, 5, 3)),
                           np.zeros((2, 3)), source="talk.npz")
    with pytest.raises(MotionError, match=r"talk.npz uses the expressions 50 FLAME components exp_000..exp_049, "
                                          r"but the avatar expects 3 ARKit names such as eyeBlinkLeft"):
        retarget(flame, ["eyeBlinkLeft", "jawOpen", "browInnerUp"])


# ------------------------------------------------------------------------------ animate CLI
def _renderer_built():
    try:
        from avatar_core.render import render  # noqa: F401
        return True
    except ImportError:
        return False


needs_renderer = pytest.mark.skipif(not _renderer_built(), reason="renderer not built yet")


@pytest.fixture(scope="module")
def animate_inputs(tmp_path_factory, small_avatar):
    from avatar_core.io import save_avatar
    d = tmp_path_factory.mktemp("animate")
    save_avatar(small_avatar, d / "avatar.safetensors")
    n = 5
    vals = np.zeros((n, 52))
    vals[:, ARKIT_NAMES.index("jawOpen")] = np.linspace(0, 1, n)
    ang = np.zeros((n, 9))
    ang[:, 0] = np.linspace(0, 0.3, n)
    llf_csv(d / "take.csv", n, 30, 30, vals, ang, offset=28)  # crosses one whole second: 30 fps
    return d


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "avatar_core", "animate", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@needs_renderer
def test_animate_cli_png_and_mp4(animate_inputs):
    import cv2
    d = animate_inputs
    r = _cli(d / "avatar.safetensors", "--motion", d / "take.csv", "-o", d / "frames", "--res", 64, "--lod", 0)
    assert r.returncode == 0, r.stderr
    frames = sorted((d / "frames").glob("frame_*.png"))
    assert len(frames) == 5
    img = cv2.imread(str(frames[-1]))
    assert img.shape == (64, 64, 3) and img.std() > 1.0     # something was drawn
    assert "warning:" in r.stderr and "dropped" in r.stderr  # 46 ARKit names the test head lacks
    r = _cli(d / "avatar.safetensors", "--motion", d / "take.csv", "-o", d / "out.mp4", "--res", 64, "--lod", 0,
             "--camera", "orbit", "--fps", 60)
    assert r.returncode == 0, r.stderr
    cap = cv2.VideoCapture(str(d / "out.mp4"))
    count = 0
    while cap.read()[0]:
        count += 1
    assert count == 10 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temporaries left


@needs_renderer
def test_animate_cli_errors(animate_inputs, tmp_path, capsys):
    from avatar_core.__main__ import main
    d = animate_inputs
    av, take = d / "avatar.safetensors", d / "take.csv"
    assert main(["animate", str(tmp_path / "none.safetensors"), "--motion", str(take), "-o", str(tmp_path / "x.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["animate", str(av), "--motion", str(tmp_path / "none.csv"), "-o", str(tmp_path / "x.mp4")]) == 1
    assert "motion file" in capsys.readouterr().err
    assert main(["animate", str(av), "--motion", str(take), "-o", str(tmp_path / "no" / "x.mp4")]) == 1
    assert "does not exist" in capsys.readouterr().err
    os.chmod(tmp_path, 0o500)
    try:
        if not os.access(tmp_path, os.W_OK):  # root ignores permissions
            assert main(["animate", str(av), "--motion", str(take), "-o", str(tmp_path / "x.mp4")]) == 1
            assert "not writable" in capsys.readouterr().err
    finally:
        os.chmod(tmp_path, 0o700)
    np.savez(tmp_path / "flame.npz", expr=np.zeros((3, 50)), fps=30)
    assert main(["animate", str(av), "--motion", str(tmp_path / "flame.npz"), "-o", str(tmp_path / "x.mp4")]) == 1
    err = capsys.readouterr().err
    assert "50 FLAME components" in err and "--motion-head" in err
    assert not list(tmp_path.glob("*.mp4")) and not list(tmp_path.glob(".*"))


@needs_renderer
def test_cameras_and_render_motion(small_avatar):
    import dataclasses
    import threading
    from avatar_core.camera import intrinsics, look_at
    from avatar_core.motion.playback import make_cameras, render_motion
    # no source camera: a frontal one, or one per frame for orbit
    cam = make_cameras(small_avatar, 6, "source", 32, "cpu")
    assert cam.batch == 1 and (cam.width, cam.height) == (32, 32)
    orbit = make_cameras(small_avatar, 6, "orbit", 32, "cpu")
    assert orbit.batch == 6 and not torch.allclose(orbit.viewmat[0], orbit.viewmat[1])
    # the fitted source camera, scaled to the requested longer side
    src = {"K": intrinsics(500.0, 640, 480), "viewmat": look_at((0.0, 0.0, 0.9), (0.0, 0.0, 0.0)),
           "width": torch.tensor(640), "height": torch.tensor(480)}
    av = dataclasses.replace(small_avatar, source=src)
    cam = make_cameras(av, 6, "source", 64, "cpu")
    assert (cam.width, cam.height) == (64, 48) and abs(float(cam.K[0, 0, 0]) - 50.0) < 1e-4
    # frames in order, progress reported, cancel honoured
    seq = MotionSequence.zeros(3, small_avatar.expr_names)
    seen = []
    cam = make_cameras(small_avatar, 3, "source", 24, "cpu")
    frames = list(render_motion(small_avatar, seq, cam, lod=0, batch=2, progress=lambda f, m: seen.append(f)))
    assert [i for i, _ in frames] == [0, 1, 2] and frames[0][1].shape == (24, 24, 3) and seen[-1] == 1.0
    stop = threading.Event()
    stop.set()
    from avatar_core.errors import Cancelled
    with pytest.raises(Cancelled):
        list(render_motion(small_avatar, seq, cam, lod=0, cancel=stop))
    with pytest.raises(MotionError, match="expression space"):
        list(render_motion(small_avatar, MotionSequence.zeros(2, ["x"]), cam))


@needs_renderer
def test_render_motion_with_refiner(small_avatar):
    refiner_mod = pytest.importorskip("avatar_core.render.refiner", reason="refiner not built yet")
    import dataclasses
    from avatar_core.motion.playback import load_refiner, make_cameras, render_motion
    assert load_refiner(small_avatar, "cpu") is None  # no weights: the 3DGS image
    net = refiner_mod.Refiner(refiner_mod.RefinerConfig(in_channels=small_avatar.channels, widths=(8, 8, 8)))
    av = dataclasses.replace(small_avatar, refiner_state=net.state_dict(), refiner_config=net.config.to_dict())
    refiner = load_refiner(av, "cpu")
    assert refiner is not None and not refiner.training
    seq = MotionSequence.zeros(2, small_avatar.expr_names)
    cam = make_cameras(small_avatar, 2, "source", 24, "cpu")
    on = [rgb for _, rgb in render_motion(av, seq, cam, lod=0, refiner=refiner)]
    off = [rgb for _, rgb in render_motion(av, seq, cam, lod=0)]
    # a fresh refiner's last layer is zero: refined == splatted RGB
    assert all(np.abs(a.astype(int) - b.astype(int)).max() <= 1 for a, b in zip(on, off))


def test_driving_an_avatar_keeps_the_tracked_lip_opening(tmp_path):
    """Self-reenactment's drive (``motion.drive.drive_params``, relative expressions) moves the
    avatar's lips as far as the tracked head's: the photo fit and the tracker split the same
    frame between units differently, and clamping the changes at 0 dropped every one that
    undid the tracker's frame-0 value (on d13 the lips opened to 0.52 of the tracked
    amplitude)."""
    from avatar_core.camera import Camera
    from avatar_core.eval.transfer import measures
    from avatar_core.fit.correspondence import landmark_embedding
    from avatar_core.fit.track import read_video, track_frames
    from avatar_core.head import load_head
    from avatar_core.motion.drive import drive_params
    from avatar_core.recon.pipeline import reconstruct
    frames, fps = read_video(shared_data("driving", "d13.mp4"), 120)
    head = load_head("open")
    emb = landmark_embedding(head)
    track = track_frames(frames, fps, head, emb)
    avatar, _ = reconstruct(frames[0], tmp_path / "a.avatar", head=head, quality="test")
    params, viewmats = drive_params(track, avatar, head, 0)
    cam = avatar.source_camera(int(track.fit.camera.width))
    with torch.no_grad():
        verts, _ = avatar.deform_rig(**params)
        pts = emb.points(verts.float(), avatar.rig_faces)
        uv, _ = Camera(cam.K.expand(len(viewmats), 3, 3), viewmats.to(cam.K.dtype), cam.width, cam.height).project(pts)
    driven = np.full((len(frames), 478, 2), np.nan)
    tracked = np.full_like(driven, np.nan)
    driven[:, emb.landmark_ids] = uv.numpy()
    tracked[:, emb.landmark_ids] = track.fit.projected
    a = measures(driven)["lip_opening"][1:] - measures(driven)["lip_opening"][0]
    b = measures(tracked)["lip_opening"][1:] - measures(tracked)["lip_opening"][0]
    amplitude = float(np.sqrt((a ** 2).mean() / (b ** 2).mean()))
    assert np.corrcoef(a, b)[0, 1] > 0.95 and 0.9 < amplitude < 1.1, (np.corrcoef(a, b)[0, 1], amplitude)
