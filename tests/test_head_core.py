"""Head-model interface, LBS, LOD subdivision and the FLAME loader (synthetic FLAME files)."""

import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse
import torch

from avatar_core import rotation
from avatar_core.errors import HeadModelError, ParameterError
from avatar_core.head.flame import load_flame
from avatar_core.head.lod import edges_of, lod_binding, lod_counts, subdivide_array, subdivide_head, subdivide_once
from avatar_core.head.synthetic import icosphere


def test_rotation_conversions_round_trip():
    g = torch.Generator().manual_seed(1)
    aa = torch.randn(200, 3, generator=g)
    R = rotation.axis_angle_to_matrix(aa)
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3).expand(200, 3, 3), atol=1e-5)
    q = rotation.matrix_to_quaternion(R)
    assert torch.allclose(rotation.quaternion_to_matrix(q), R, atol=1e-5)
    # a quarter turn about z maps x to y
    Rz = rotation.axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.pi / 2]))
    assert torch.allclose(Rz @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1.0, 0]), atol=1e-6)
    # gradient is finite at zero rotation
    z = torch.zeros(3, requires_grad=True)
    rotation.axis_angle_to_matrix(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_neutral_forward_is_template_and_jaw_moves_jaw(test_head):
    out = test_head()
    assert torch.allclose(out.vertices[0], test_head.v_template, atol=1e-6)
    pose = torch.zeros(1, 5, 3)
    pose[0, 2, 0] = 0.4  # open the jaw about x
    moved = (test_head(pose=pose).vertices[0] - test_head.v_template).norm(dim=1)
    jaw = test_head.lbs_weights[:, 2] > 0.9
    rest = test_head.lbs_weights[:, 2] < 1e-3
    assert moved[jaw].min() > 1e-3 and moved[rest].max() < 1e-4


def test_forward_is_batched_and_differentiable(test_head):
    B = 3
    expr = torch.zeros(B, test_head.num_expr, requires_grad=True)
    pose = (torch.randn(B, 5, 3) * 0.1).requires_grad_()
    out = test_head(expression=expr, pose=pose, translation=torch.randn(B, 3))
    assert out.vertices.shape == (B, test_head.num_vertices, 3)
    assert out.joints.shape == (B, 5, 3) and out.transforms.shape == (B, 5, 4, 4)
    out.vertices.square().sum().backward()
    assert expr.grad.abs().sum() > 0 and pose.grad.abs().sum() > 0


def test_bad_parameters_raise_one_clear_error(test_head):
    with pytest.raises(ParameterError, match="expected \\[B, 5, 3\\]"):
        test_head(pose=torch.zeros(1, 4, 3))
    with pytest.raises(ParameterError, match="Unknown expression name 'smile'"):
        test_head(expression={"smile": 1.0})
    with pytest.raises(ParameterError, match="NaN"):
        test_head(expression=torch.full((1, test_head.num_expr), float("nan")))


def test_subdivision_counts_match_flame_sizes():
    # Euler: V - E + F = 2 for a sphere; each step adds E vertices, F -> 4F.
    v, f = icosphere(0)
    assert lod_counts(f, v.shape[0]) == [12, 42, 162]
    # a FLAME-sized open mesh: counts are V + E; check the recurrence on a strip of quads
    assert edges_of(f).shape[0] == 30


def test_lod_prefix_and_edge_averaging(test_head):
    h1 = subdivide_head(test_head, 1)
    h2 = subdivide_head(test_head, 2)
    V0, V1 = test_head.num_vertices, h1.num_vertices
    assert torch.equal(h2.v_template[:V1], h1.v_template) and torch.equal(h1.v_template[:V0], test_head.v_template)
    assert h2.num_faces == 16 * test_head.num_faces
    assert torch.allclose(h2.lbs_weights.sum(1), torch.ones(h2.num_vertices), atol=1e-5)
    # the binding to LOD-0 faces reproduces every LOD-2 per-vertex array
    b = lod_binding(test_head.faces, V0, 2)
    for a0, a2 in ((test_head.v_template, h2.v_template), (test_head.exprdirs, h2.exprdirs),
                   (test_head.lbs_weights, h2.lbs_weights)):
        shape = (-1,) + (1,) * (a0.dim() - 1)
        interp = sum(b.bary[:, i].reshape(shape) * a0[b.vertex_ids[:, i]] for i in range(3))
        assert torch.allclose(interp, a2, atol=1e-6)


def test_deform_then_subdivide_equals_subdivide_then_deform(test_head):
    g = torch.Generator().manual_seed(3)
    shape = torch.randn(2, test_head.num_shape, generator=g)
    expr = torch.rand(2, test_head.num_expr, generator=g)
    pose = torch.zeros(2, 5, 3)
    pose[:, 0] = torch.randn(2, 3, generator=g) * 0.3  # a rigid global rotation
    trans = torch.randn(2, 3, generator=g) * 0.1
    h2 = subdivide_head(test_head, 2)
    f, e1 = subdivide_once(test_head.faces, test_head.num_vertices)
    _, e2 = subdivide_once(f, test_head.num_vertices + e1.shape[0])
    coarse = test_head(shape, expr, pose, trans).vertices
    fine = h2(shape, expr, pose, trans).vertices
    via = torch.stack([subdivide_array(subdivide_array(c, e1), e2) for c in coarse])
    assert torch.allclose(via, fine, atol=1e-6)


def test_articulated_lod_deformation_stays_close(test_head):
    """With joint articulation, per-vertex LBS on carried weights differs from interpolating the
    deformed coarse mesh only by LBS's bilinearity (weights x positions); it stays tiny."""
    pose = torch.zeros(1, 5, 3)
    pose[0, 2, 0] = 0.3
    pose[0, 1, 1] = 0.4
    h1 = subdivide_head(test_head, 1)
    _, e1 = subdivide_once(test_head.faces, test_head.num_vertices)
    via = subdivide_array(test_head(pose=pose).vertices[0], e1)
    err = (via - h1(pose=pose).vertices[0]).norm(dim=1).max()
    edge = (test_head.v_template[e1[:, 0]] - test_head.v_template[e1[:, 1]]).norm(dim=1).mean()
    assert err < 0.25 * edge


# --------------------------------------------------------------------------- FLAME loader
class _FakeCh:
    """Pickles like chumpy.ch.Ch: class path chumpy.ch.Ch, state dict with the array in 'x'."""

    def __init__(self, x):
        self.x = x

    def __getstate__(self):
        return {"x": self.x, "_dirty_vars": set(), "_itr": None}


def _flame_dict(V=40, S=6, E=4):
    g = np.random.default_rng(0)
    faces = np.stack([np.arange(V - 2), np.arange(1, V - 1), np.arange(2, V)], 1).astype(np.uint32)
    jr = np.zeros((5, V))
    for j in range(5):
        jr[j, j * 3:(j * 3) + 3] = 1.0 / 3
    w = g.random((V, 5))
    return {
        "v_template": g.standard_normal((V, 3)) * 0.1,
        "f": faces,
        "shapedirs": _FakeCh(g.standard_normal((V, 3, 300 + E)) * 1e-3),
        "posedirs": g.standard_normal((V, 3, 36)) * 1e-4,
        "J_regressor": scipy.sparse.csc_matrix(jr),
        "weights": _FakeCh(w / w.sum(1, keepdims=True)),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "bs_style": "lbs", "bs_type": "lrotmin",
    }


def _write_fake_flame_pickle(path, d):
    fake = types.ModuleType("chumpy.ch")
    _FakeCh.__module__, _FakeCh.__qualname__ = "chumpy.ch", "Ch"
    fake.Ch = _FakeCh
    sys.modules["chumpy"] = types.ModuleType("chumpy")
    sys.modules["chumpy.ch"] = fake
    try:
        with open(path, "wb") as f:
            pickle.dump(d, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def test_flame_pickle_loads_without_chumpy(tmp_path):
    d = _flame_dict()
    p = tmp_path / "generic_model.pkl"
    _write_fake_flame_pickle(p, d)
    assert "chumpy" not in sys.modules
    head = load_flame(p)
    assert head.name == "flame2020" and head.num_vertices == 40 and head.num_shape == 300
    assert head.num_expr == 4 and head.expr_names[0] == "exp_000"
    assert np.allclose(head.exprdirs.numpy(), d["shapedirs"].x[..., 300:], atol=1e-7)
    assert np.allclose(head.j_regressor.numpy(), d["J_regressor"].toarray(), atol=1e-7)
    assert head.parents.tolist() == [-1, 0, 1, 1, 1]
    out = head(expression=torch.ones(1, 4), pose=torch.full((1, 5, 3), 0.1))
    assert torch.isfinite(out.vertices).all()


def test_flame_npz_same_keys(tmp_path):
    d = _flame_dict()
    p = tmp_path / "flame2023_Open.npz"
    np.savez(p, **{k: (v.x if isinstance(v, _FakeCh) else v.toarray() if scipy.sparse.issparse(v) else v)
                   for k, v in d.items()})
    head = load_flame(p)
    assert head.name == "flame2023" and head.num_expr == 4


@pytest.mark.parametrize("content,match", [
    (None, "does not exist"),
    (b"\x80\x02}q\x00(X", "truncated"),
    (b"hello, not a pickle", "not a FLAME pickle|truncated or corrupt"),
])
def test_flame_bad_files(tmp_path, content, match):
    p = tmp_path / "generic_model.pkl"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(HeadModelError, match=match):
        load_flame(p)


def test_flame_wrong_keys_and_malicious_pickle(tmp_path):
    p = tmp_path / "other.pkl"
    with open(p, "wb") as f:
        pickle.dump({"v_template": np.zeros((3, 3))}, f)
    with pytest.raises(HeadModelError, match="lacks f, shapedirs"):
        load_flame(p)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with open(p, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(HeadModelError, match="refusing to load builtins.print"):
        load_flame(p)
