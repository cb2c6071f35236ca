"""The torch triangle rasteriser (avatar_core.render.mesh) against analytic answers."""

import math

import pytest
import torch

from avatar_core.errors import ParameterError
from avatar_core.render.mesh import rasterize_mesh, shade, visible_vertices

F, CX, CY, W, H = 100.0, 32.0, 24.0, 64, 48
K = torch.tensor([[F, 0.0, CX], [0.0, F, CY], [0.0, 0.0, 1.0]], dtype=torch.float64)
EYE4 = torch.eye(4, dtype=torch.float64)


def unproject(u, v, z):
    """The world point (identity view) seen at pixel coordinates (u, v) at depth z."""
    return [(u - CX) * z / F, (v - CY) * z / F, z]


def test_single_triangle_coverage_bary_depth():
    # corners at pixel coordinates (10.25, 10.25), (50.25, 10.25), (10.25, 40.25), depth 2:
    # no pixel centre lies exactly on an edge
    z = 2.0
    corners = [(10.25, 10.25), (50.25, 10.25), (10.25, 40.25)]
    verts = torch.tensor([unproject(u, v, z) for u, v in corners], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    ras = rasterize_mesh(verts, faces, K, EYE4, W, H)
    ii, jj = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    b1 = (jj - 10.25) / 40.0
    b2 = (ii - 10.25) / 30.0
    b0 = 1.0 - b1 - b2
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    assert torch.equal(ras.face_id >= 0, inside)
    assert int(inside.sum()) > 400
    assert (ras.face_id[inside] == 0).all()
    expected = torch.stack([b0, b1, b2], -1)
    torch.testing.assert_close(ras.bary[inside], expected[inside], atol=1e-9, rtol=0)
    torch.testing.assert_close(ras.depth[inside], torch.full_like(ras.depth[inside], z))
    assert torch.isinf(ras.depth[~inside]).all()
    assert (ras.bary[~inside] == 0).all()


def test_tilted_triangle_is_perspective_correct():
    verts = torch.tensor([unproject(8.0, 6.0, 1.5), unproject(58.0, 12.0, 3.0), unproject(20.0, 44.0, 2.2)],
                         dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    ras = rasterize_mesh(verts, faces, K, EYE4, W, H)
    hit = ras.face_id >= 0
    ii, jj = (t.to(torch.float64) for t in torch.nonzero(hit, as_tuple=True))
    # the surface point from the barycentrics lies on the pixel's ray at the reported depth
    point = (ras.bary[hit][:, :, None] * verts[None]).sum(1)  # [P, 3]
    ray = torch.stack([(jj - CX) / F, (ii - CY) / F, torch.ones_like(ii)], -1)
    torch.testing.assert_close(point, ray * ras.depth[hit][:, None], atol=1e-9, rtol=0)
    # and on the triangle's plane
    n = torch.cross(verts[1] - verts[0], verts[2] - verts[0], dim=0)
    torch.testing.assert_close((point - verts[0]) @ n, torch.zeros(point.shape[0], dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert (ras.bary[hit] >= -1e-9).all()


def test_near_triangle_occludes_far_one_in_any_order():
    near = [unproject(u, v, 1.0) for u, v in ((20.3, 10.3), (44.3, 10.3), (20.3, 34.3))]
    far = [unproject(u, v, 2.0) for u, v in ((5.3, 5.3), (60.3, 5.3), (5.3, 45.3))]
    verts = torch.tensor(near + far, dtype=torch.float64)
    for order in ([[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]):
        faces = torch.tensor(order)
        near_id = order.index([0, 1, 2])
        ras = rasterize_mesh(verts, faces, K, EYE4, W, H)
        only_near = rasterize_mesh(verts, torch.tensor([[0, 1, 2]]), K, EYE4, W, H).face_id >= 0
        assert only_near.sum() > 100
        assert (ras.face_id[only_near] == near_id).all()
        torch.testing.assert_close(ras.depth[only_near], torch.ones_like(ras.depth[only_near]))
        rest = (ras.face_id >= 0) & ~only_near
        assert rest.sum() > 100 and (ras.face_id[rest] == 1 - near_id).all()
        torch.testing.assert_close(ras.depth[rest], torch.full_like(ras.depth[rest], 2.0))


def uv_sphere(centre, radius, rings=24, segments=48):
    """A closed UV sphere with outward (counter-clockwise seen from outside) faces."""
    verts = [[0.0, radius, 0.0]]
    for r in range(1, rings):
        th = math.pi * r / rings
        for s in range(segments):
            ph = 2 * math.pi * s / segments
            verts.append([radius * math.sin(th) * math.cos(ph), radius * math.cos(th),
                          radius * math.sin(th) * math.sin(ph)])
    verts.append([0.0, -radius, 0.0])
    faces = []
    idx = lambda r, s: 1 + (r - 1) * segments + (s % segments)  # noqa: E731
    for s in range(segments):
        faces.append([0, idx(1, s + 1), idx(1, s)])
    for r in range(1, rings - 1):
        for s in range(segments):
            a, b, c, d = idx(r, s), idx(r, s + 1), idx(r + 1, s), idx(r + 1, s + 1)
            faces += [[a, b, d], [a, d, c]]
    last = len(verts) - 1
    for s in range(segments):
        faces.append([last, idx(rings - 1, s), idx(rings - 1, s + 1)])
    v = torch.tensor(verts, dtype=torch.float64) + torch.tensor(centre, dtype=torch.float64)
    return v, torch.tensor(faces)


def test_sphere_winding_is_outward():
    v, f = uv_sphere((0, 0, 0), 1.0)
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    n = torch.cross(b - a, c - a, dim=1)
    assert ((n * (a + b + c)).sum(1) > 0).all()


def test_visible_vertices_on_a_sphere_marks_the_front_half():
    centre = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    v, f = uv_sphere(centre.tolist(), 1.0)
    K2 = torch.tensor([[200.0, 0, 127.5], [0, 200.0, 127.5], [0, 0, 1]], dtype=torch.float64)
    vis = visible_vertices(v, f, K2, EYE4, 256, 256)
    # seen from the origin, the cap with cos(angle to the camera) > 1/3 is visible
    cos = ((v - centre) @ -centre / centre.norm())
    assert vis[cos > 1 / 3 + 0.1].all()
    assert not vis[cos < 1 / 3 - 0.1].any()
    assert not vis[v[:, 2] > 3.0].any()  # the whole back half is hidden
    assert vis[v[:, 2] < 2.5].all()


def test_visible_vertices_behind_an_occluder():
    v, f = uv_sphere((0, 0, 3), 1.0)
    occ = torch.tensor([unproject(u, v_, 1.0) for u, v_ in ((-100.0, -100.0), (300.0, -100.0), (-100.0, 300.0))],
                       dtype=torch.float64)
    verts = torch.cat([v, occ])
    faces = torch.cat([f, torch.tensor([[v.shape[0], v.shape[0] + 1, v.shape[0] + 2]])])
    vis = visible_vertices(verts, faces, K, EYE4, W, H)
    assert not vis[: v.shape[0]].any()  # everything on the sphere is behind the big triangle


def test_chunking_does_not_change_the_result():
    v, f = uv_sphere((0.1, -0.05, 3), 1.0)
    a = rasterize_mesh(v, f, K, EYE4, W, H)
    b = rasterize_mesh(v, f, K, EYE4, W, H, chunk_pairs=97)
    assert torch.equal(a.face_id, b.face_id)
    torch.testing.assert_close(a.bary, b.bary)
    torch.testing.assert_close(a.depth, b.depth)


def test_backface_culling_and_shading():
    v, f = uv_sphere((0, 0, 3), 1.0)
    K2 = torch.tensor([[120.0, 0, 63.5], [0, 120.0, 63.5], [0, 0, 1]], dtype=torch.float64)
    ras = rasterize_mesh(v, f, K2, EYE4, 128, 128)
    culled = rasterize_mesh(v, f, K2, EYE4, 128, 128, cull_backfaces=True)
    assert torch.equal(ras.face_id, culled.face_id)  # a closed sphere shows only front faces
    inside_out = rasterize_mesh(v, f[:, [0, 2, 1]], K2, EYE4, 128, 128, cull_backfaces=True)
    assert torch.equal(inside_out.face_id >= 0, ras.face_id >= 0)  # now the far half is drawn
    # light from the camera (-Z in world): the middle is bright, the rim darker, background white
    img = shade(ras, v, f, light=(0.0, 0.0, -1.0), albedo=1.0, ambient=0.2)
    assert img[64, 64].min() > 0.95
    assert img[0, 0].tolist() == [1.0, 1.0, 1.0]
    rim = img[64][ras.face_id[64] >= 0][0]
    assert rim.max() < 0.7
    flipped = shade(ras, v, f[:, [0, 2, 1]], light=(0.0, 0.0, -1.0), albedo=1.0, ambient=0.2)
    assert flipped[64, 64].max() < 0.25  # inverted normals show up dark


def test_bary_and_depth_carry_gradients():
    verts = torch.tensor([unproject(u, v, 2.0) for u, v in ((10.3, 10.3), (50.3, 12.3), (12.3, 40.3))],
                         dtype=torch.float64, requires_grad=True)
    ras = rasterize_mesh(verts, torch.tensor([[0, 1, 2]]), K, EYE4, W, H)
    hit = ras.face_id >= 0
    (ras.depth[hit].sum() + ras.bary[hit][:, 0].sum()).backward()
    assert verts.grad is not None and verts.grad.abs().sum() > 0


def test_camera_transform_and_bad_input():
    # the same triangle seen through a viewmat equals the pre-transformed one
    verts = torch.tensor([unproject(10.3, 10.3, 2.0), unproject(50.3, 12.3, 2.5), unproject(12.3, 40.3, 3.0)],
                         dtype=torch.float64)
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    view = torch.eye(4, dtype=torch.float64)
    view[:3, :3], view[:3, 3] = R, t
    world = (verts - t) @ R  # R^T (p - t): world points that the view maps back onto verts
    faces = torch.tensor([[0, 1, 2]])
    a = rasterize_mesh(verts, faces, K, EYE4, W, H)
    b = rasterize_mesh(world, faces, K, view, W, H)
    assert torch.equal(a.face_id, b.face_id)
    torch.testing.assert_close(a.depth, b.depth)
    with pytest.raises(ParameterError):
        rasterize_mesh(verts, torch.tensor([[0, 1, 3]]), K, EYE4, W, H)
    with pytest.raises(ParameterError):
        rasterize_mesh(verts[:, :2], faces, K, EYE4, W, H)


def test_speed_of_a_head_sized_mesh():
    import time
    v, f = uv_sphere((0, 0, 0.6), 0.1, rings=50, segments=100)  # ~5k vertices, ~10k faces
    K2 = torch.tensor([[900.0, 0, 255.5], [0, 900.0, 255.5], [0, 0, 1]])
    t = time.perf_counter()
    ras = rasterize_mesh(v.float(), f, K2, torch.eye(4), 512, 512)
    elapsed = time.perf_counter() - t
    assert ras.mask.sum() > 50000
    assert elapsed < 5.0  # well under a second on an idle core; generous for a shared machine
