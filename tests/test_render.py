"""The torch rasterizer: analytic checks, ordering, culling, input errors, gradients.

Small scenes only (tens of pixels, a few hundred Gaussians): the whole file runs in seconds.
"""

import math
import sys

import pytest
import torch

from avatar_core.errors import ParameterError
from avatar_core.gaussians.frame import GaussianFrame
from avatar_core.render import Camera, intrinsics, look_at, orbit_camera, render, resolve_backend
from avatar_core.render.project import ALPHA_THRESHOLD, MAX_ALPHA, T_THRESHOLD, project_gaussians


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
def random_cloud(n=150, channels=3, batch=1, spread=0.05, dtype=torch.float64, seed=0,
                 opacity=(0.1, 1.0), scale=(0.001, 0.007)):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(batch, n, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(batch, n, 4, generator=g, dtype=dtype)
    scales = torch.rand(batch, n, 3, generator=g, dtype=dtype) * (scale[1] - scale[0]) + scale[0]
    op = torch.rand(batch, n, generator=g, dtype=dtype) * (opacity[1] - opacity[0]) + opacity[0]
    feats = torch.rand(batch, n, channels, generator=g, dtype=dtype)
    return GaussianFrame(means, quats, scales, op, feats)


def one_gaussian(mean, scale, opacity, color, dtype=torch.float64):
    return GaussianFrame(torch.tensor([[mean]], dtype=dtype), torch.tensor([[[1.0, 0, 0, 0]]], dtype=dtype),
                         torch.tensor([[[scale] * 3]], dtype=dtype), torch.tensor([[opacity]], dtype=dtype),
                         torch.tensor([[color]], dtype=dtype))


def front_camera(size=33, focal=400.0, distance=1.0, dtype=torch.float64):
    """Camera on +Z looking at the origin; the origin lands on pixel ((size-1)/2, (size-1)/2)."""
    return orbit_camera(distance=distance, focal=focal, width=size, height=size, dtype=dtype)


def with_grad(frame):
    return GaussianFrame(*(t.detach().clone().requires_grad_(True) for t in
                           (frame.means, frame.quats, frame.scales, frame.opacities, frame.features)))


def brute_force_render(frame, camera, background):
    """Ground truth: every splat against every pixel, front to back, one splat at a time."""
    B = max(frame.batch, camera.batch)
    cam = camera.expand(B)

    def bc(t):
        return t.expand(B, *t.shape[1:]) if t.shape[0] != B else t

    sp = project_gaussians(bc(frame.means), bc(frame.quats), bc(frame.scales), bc(frame.opacities),
                           cam.viewmat, cam.K, cam.width, cam.height)
    W, H = cam.width, cam.height
    feats = bc(frame.features)
    dtype = feats.dtype
    ys, xs = torch.meshgrid(torch.arange(H, dtype=dtype) + 0.5, torch.arange(W, dtype=dtype) + 0.5, indexing="ij")
    images, alphas, depths = [], [], []
    for b in range(B):
        T = torch.ones(H, W, dtype=dtype)
        done = torch.zeros(H, W, dtype=torch.bool)
        acc = torch.zeros(H, W, feats.shape[-1], dtype=dtype)
        dacc = torch.zeros(H, W, dtype=dtype)
        for n in torch.argsort(sp.depths[b].detach(), stable=True).tolist():
            if not bool((sp.radii[b, n] > 0).all()):
                continue
            mx, my = sp.means2d[b, n]
            ca, cb, cc = sp.conics[b, n]
            dx, dy = mx - xs, my - ys
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            alpha = torch.clamp(sp.opacities[b, n] * torch.exp(-sigma), max=MAX_ALPHA)
            use = (alpha >= ALPHA_THRESHOLD) & ~done
            next_T = T * (1 - alpha)
            stop = use & (next_T <= T_THRESHOLD)
            done = done | stop
            use = use & ~stop
            w = torch.where(use, alpha * T, torch.zeros_like(T))
            acc = acc + w[..., None] * feats[b, n]
            dacc = dacc + w * sp.depths[b, n]
            T = torch.where(use, next_T, T)
        images.append(acc + T[..., None] * background[b])
        alphas.append(1 - T)
        depths.append(dacc)
    return torch.stack(images), torch.stack(alphas)[..., None], torch.stack(depths)[..., None]


# ------------------------------------------------------------------------------------------
# analytic checks
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opacity", [0.3, 0.8])
def test_single_gaussian_peak_and_footprint(opacity):
    size, focal, dist, s = 33, 400.0, 1.0, 0.004
    cam = front_camera(size, focal, dist)
    out = render(one_gaussian([0.0, 0.0, 0.0], s, opacity, [1.0, 0.5, 0.25]), cam)
    c = (size - 1) // 2
    # projected variance: (f s / z)^2 plus the 0.3 px low-pass
    var = (focal * s / dist) ** 2 + 0.3
    ii, jj = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    r2 = (ii - c) ** 2 + (jj - c) ** 2
    expected = opacity * torch.exp(-0.5 * r2 / var)
    expected = torch.where(expected >= ALPHA_THRESHOLD, expected, torch.zeros_like(expected))
    alpha = out.alpha[0, ..., 0]
    assert alpha[c, c].item() == pytest.approx(opacity, rel=1e-9)  # peak on the centre pixel
    assert torch.allclose(alpha, expected, atol=1e-9)
    # footprint: exactly the pixels where o exp(-r^2 / 2 var) >= 1/255
    radius = math.sqrt(2 * var * math.log(opacity / ALPHA_THRESHOLD))
    assert int((alpha > 0).sum()) == int((r2.sqrt() <= radius).sum())
    # colour = alpha * rgb (black background); expected depth = the Gaussian's distance
    assert torch.allclose(out.image[0, c, c], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64) * opacity)
    assert out.depth[0, c, c, 0].item() == pytest.approx(dist, rel=1e-9)


def test_anisotropic_gaussian_orientation():
    """A Gaussian stretched along world X is wide in the image, and rotating it 90 deg about Z makes it tall."""
    cam = front_camera(41, 400.0, 1.0)
    f = one_gaussian([0.0, 0.0, 0.0], 0.002, 0.9, [1.0, 1.0, 1.0])
    f.scales = torch.tensor([[[0.01, 0.002, 0.002]]], dtype=torch.float64)
    wide = render(f, cam).alpha[0, ..., 0] > 0
    q = math.sqrt(0.5)
    f.quats = torch.tensor([[[q, 0.0, 0.0, q]]], dtype=torch.float64)
    tall = render(f, cam).alpha[0, ..., 0] > 0
    w_w, w_h = wide.any(0).sum(), wide.any(1).sum()
    t_w, t_h = tall.any(0).sum(), tall.any(1).sum()
    assert w_w > 2 * w_h and t_h > 2 * t_w and w_w == t_h


def test_pixel_convention_matches_opencv():
    """A point on the optical axis lands on pixel (cx, cy): integer coordinates are pixel centres."""
    K = intrinsics(300.0, 40, 30, cx=12.0, cy=21.0, dtype=torch.float64)
    view = look_at((0.0, 0.0, 1.0), (0.0, 0.0, 0.0)).to(torch.float64)
    cam = Camera(K, view, 40, 30)
    out = render(one_gaussian([0.0, 0.0, 0.0], 0.002, 0.9, [1.0, 1.0, 1.0]), cam)
    a = out.alpha[0, ..., 0]
    i, j = divmod(int(a.argmax()), 40)
    assert (i, j) == (21, 12)
    assert a[21, 11].item() == pytest.approx(a[21, 13].item()) and a[20, 12].item() == pytest.approx(a[22, 12].item())


def test_near_occludes_far():
    cam = front_camera(21)
    near = one_gaussian([0.0, 0.0, 0.1], 0.01, 0.99, [1.0, 0.0, 0.0])
    far = one_gaussian([0.0, 0.0, -0.1], 0.01, 0.99, [0.0, 0.0, 1.0])
    for order in ((near, far), (far, near)):  # array order must not matter
        f = GaussianFrame(*(torch.cat([getattr(order[0], k), getattr(order[1], k)], 1)
                            for k in ("means", "quats", "scales", "opacities", "features")))
        px = render(f, cam).image[0, 10, 10]
        assert px[0].item() == pytest.approx(0.99, abs=1e-9)
        assert px[2].item() == pytest.approx(0.01 * 0.99, abs=1e-9)


def test_empty_scene_gives_background():
    cam = front_camera(16)
    empty = GaussianFrame(torch.zeros(1, 0, 3), torch.zeros(1, 0, 4), torch.zeros(1, 0, 3), torch.zeros(1, 0),
                          torch.zeros(1, 0, 4))
    out = render(empty, cam.to(dtype=torch.float32), background=torch.tensor([0.1, 0.2, 0.3, 0.4]))
    assert out.image.shape == (1, 16, 16, 4)
    assert torch.allclose(out.image, torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(1, 16, 16, 4))
    assert float(out.alpha.abs().max()) == 0.0


def test_behind_camera_and_off_screen_gaussians_vanish():
    cam = front_camera(16)  # camera at z = 1 looking toward -z
    f = with_grad(GaussianFrame(
        torch.tensor([[[0.0, 0.0, 1.5], [0.0, 0.0, 0.995], [5.0, 0.0, 0.0]]], dtype=torch.float64),  # behind, inside near plane, off screen
        torch.tensor([[[1.0, 0, 0, 0]] * 3], dtype=torch.float64),
        torch.full((1, 3, 3), 0.05, dtype=torch.float64), torch.full((1, 3), 0.9, dtype=torch.float64),
        torch.ones(1, 3, 3, dtype=torch.float64)))
    out = render(f, cam, background=0.5)
    assert torch.allclose(out.image, torch.full_like(out.image, 0.5))
    assert float(out.alpha.detach().max()) == 0.0
    (out.image.sum() + out.alpha.sum()).backward()
    for t in (f.means, f.scales, f.quats, f.opacities, f.features):
        assert torch.isfinite(t.grad).all() and float(t.grad.abs().max()) == 0.0


def test_zero_opacity_and_zero_scale_are_fine():
    cam = front_camera(16)
    f = with_grad(random_cloud(20, seed=3))
    with torch.no_grad():
        f.opacities[0, :5] = 0.0
        f.scales[0, 5:10] = 0.0
    out = render(f, cam)
    out.image.sum().backward()
    assert torch.isfinite(out.image).all()
    for t in (f.means, f.scales, f.quats, f.opacities, f.features):
        assert torch.isfinite(t.grad).all()


# ------------------------------------------------------------------------------------------
# input checking
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("means", float("nan")), ("scales", float("inf")),
                                         ("opacities", float("nan")), ("features", float("-inf")),
                                         ("quats", float("nan"))])
def test_nan_and_inf_rejected(field, value):
    f = random_cloud(10)
    getattr(f, field).view(-1)[0] = value
    with pytest.raises(ParameterError, match=field):
        render(f, front_camera(8))


def test_bad_shapes_and_camera_rejected():
    f = random_cloud(10)
    with pytest.raises(ParameterError, match="quats"):
        render(GaussianFrame(f.means, f.quats[..., :3], f.scales, f.opacities, f.features), front_camera(8))
    cam = front_camera(8)
    cam.K[0, 0, 0] = float("nan")
    with pytest.raises(ParameterError, match="Camera"):
        render(f, cam)
    with pytest.raises(ParameterError, match="batch"):
        render(random_cloud(10, batch=2), orbit_camera(yaw_deg=[0, 10, 20], width=8, height=8, dtype=torch.float64))
    with pytest.raises(ParameterError, match="background"):
        render(f, front_camera(8), background=torch.zeros(5))


def test_backend_selection():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ParameterError, match="CUDA"):
        render(random_cloud(4), front_camera(8), backend="gsplat")
    with pytest.raises(ParameterError, match="backend"):
        render(random_cloud(4), front_camera(8), backend="vulkan")


def test_import_is_light():
    """Importing the renderer must not import gsplat or the CUDA backend."""
    import subprocess
    code = ("import sys, avatar_core.render, avatar_core.render.rasterize_torch; "
            "sys.exit(int('gsplat' in sys.modules or 'cuda_backend' in sys.modules or 'bpy' in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------------------------
# agreement with the brute-force reference, batching, channels
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile_size,chunk", [(8, 8), (16, 32), (4, 3)])
def test_matches_brute_force_forward_and_backward(tile_size, chunk):
    # dense and opaque enough that many pixels stop early (T < 1e-4) and some alphas clamp
    f = with_grad(random_cloud(120, channels=4, batch=2, spread=0.02, seed=1, opacity=(0.6, 1.0),
                               scale=(0.003, 0.012)))
    cam = orbit_camera(distance=0.5, yaw_deg=[0.0, 40.0], fov_deg=20, width=30, height=26, dtype=torch.float64)
    bg = torch.tensor([[0.2, 0.5, 0.7, 0.1], [0.0, 1.0, 0.0, 0.5]], dtype=torch.float64)
    out = render(f, cam, background=bg, tile_size=tile_size, chunk=chunk)
    im, al, dep = brute_force_render(f, cam, bg)
    assert float((1 - out.alpha.detach()).min()) < 2e-4  # the early stop was exercised
    assert torch.allclose(out.image, im, atol=1e-12)
    assert torch.allclose(out.alpha, al, atol=1e-12)
    assert torch.allclose(out.depth * out.alpha, dep, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    gi, ga, gd = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (im, al, dep))
    params = [f.means, f.quats, f.scales, f.opacities, f.features]
    g1 = torch.autograd.grad((out.image * gi).sum() + (out.alpha * ga).sum() + (out.depth * out.alpha * gd).sum(),
                             params)
    g2 = torch.autograd.grad((im * gi).sum() + (al * ga).sum() + (dep * gd).sum(), params)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10, rtol=1e-8)


def test_batch_broadcast():
    f1 = random_cloud(60, seed=2)
    cams = orbit_camera(distance=0.6, yaw_deg=[-20.0, 0.0, 30.0], width=20, height=20, dtype=torch.float64)
    many_views = render(f1, cams)
    assert many_views.image.shape == (3, 20, 20, 3)
    for b in range(3):
        single = render(f1, cams.index(b))
        assert torch.allclose(many_views.image[b], single.image[0], atol=1e-12)
    frames = GaussianFrame(*(torch.cat([getattr(f1, k), getattr(random_cloud(60, seed=9), k)], 0)
                             for k in ("means", "quats", "scales", "opacities", "features")))
    many_frames = render(frames, cams.index(1))
    assert many_frames.image.shape == (2, 20, 20, 3)
    assert torch.allclose(many_frames.image[0], many_views.image[1], atol=1e-12)


@pytest.mark.parametrize("channels", [1, 5, 32])
def test_any_number_of_channels(channels):
    f = random_cloud(40, channels=channels, seed=4)
    out = render(f, front_camera(16, distance=0.5), background=0.25)
    assert out.image.shape == (1, 16, 16, channels)
    assert out.alpha.shape == (1, 16, 16, 1) and out.depth.shape == (1, 16, 16, 1)
    ref = render(GaussianFrame(f.means, f.quats, f.scales, f.opacities, f.features[..., :1]),
                 front_camera(16, distance=0.5), background=0.25)
    assert torch.allclose(out.image[..., :1], ref.image, atol=1e-12)


def test_float32_matches_float64():
    f = random_cloud(80, seed=6)
    cam = front_camera(24, distance=0.5)
    a = render(f, cam).image
    b = render(f.to(dtype=torch.float32), cam.to(dtype=torch.float32)).image
    assert b.dtype == torch.float32 and float((a - b.double()).abs().max()) < 1e-5


def test_gradients_match_finite_differences():
    f = random_cloud(6, channels=2, spread=0.01, seed=7, opacity=(0.3, 0.8), scale=(0.004, 0.008))
    cam = orbit_camera(distance=0.4, yaw_deg=10.0, focal=150.0, width=12, height=12, dtype=torch.float64)
    w = torch.randn(1, 12, 12, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fn(means, quats, scales, opacities, features):
        out = render(GaussianFrame(means, quats, scales, opacities, features), cam, background=0.3)
        return (out.image * w).sum(), out.alpha.sum()

    inputs = tuple(t.clone().requires_grad_(True) for t in (f.means, f.quats, f.scales, f.opacities, f.features))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------------------------
# pieces of the real-time path that run on the CPU too
# ------------------------------------------------------------------------------------------
def test_static_binning_matches_sorted_tile_lists():
    """cuda_backend's fixed-capacity binning (pure torch) lists the same splats per tile, front to back."""
    from avatar_core.render.rasterize_torch import bin_splats
    from cuda_backend.static_binning import bin_static, count_intersections
    f = random_cloud(300, batch=2, seed=11, dtype=torch.float32)
    cam = orbit_camera(distance=0.5, yaw_deg=[0.0, 30.0], fov_deg=20, width=70, height=50)
    sp = project_gaussians(f.means, f.quats, f.scales, f.opacities, cam.viewmat, cam.K, 70, 50)
    total = int(count_intersections(sp.means2d, sp.radii, 70, 50, 16))
    offsets, flat_ids, overflow = bin_static(sp.means2d, sp.radii, sp.depths, 70, 50, 16, total + 50)
    assert not bool(overflow)
    bi, ni = torch.nonzero(sp.visible, as_tuple=True)
    ref = bin_splats(sp.means2d[bi, ni], sp.radii[bi, ni], sp.depths[bi, ni], bi, 2, 70, 50, 16)
    ends = torch.cat([offsets.reshape(-1)[1:].long(), torch.tensor([flat_ids.numel()])])
    for t, start in enumerate(offsets.reshape(-1).long().tolist()):
        mine = flat_ids[start:ends[t]].long()
        theirs = (bi * 300 + ni)[ref.gauss[ref.starts[t]:ref.starts[t] + ref.counts[t]]]
        assert torch.equal(mine, theirs)
    assert bool(bin_static(sp.means2d, sp.radii, sp.depths, 70, 50, 16, total - 1)[2])  # overflow flagged


def test_frame_pipeline_cpu_matches_render_and_refine():
    from avatar_core.gaussians.build import synthetic_avatar
    from avatar_core.head.synthetic import make_test_head
    from avatar_core.render.realtime import FramePipeline
    from avatar_core.render.refiner import Refiner, RefinerConfig, refine
    avatar = synthetic_avatar(make_test_head(subdivisions=2), channels=8, lods=(0,))
    cam = orbit_camera(distance=0.9, focal=60.0, width=24, height=24)
    e = torch.full((1, avatar.num_expr), 0.3)
    frame = avatar.animate(expression=e, lod=0)
    refiner = Refiner(RefinerConfig(in_channels=8, widths=(8, 8, 8)))
    torch.nn.init.normal_(refiner.head.weight, std=0.1)
    for ref in (None, refiner):
        pipe = FramePipeline(avatar, cam, lod=0, refiner=ref, background=1.0)
        assert pipe.mode == "eager" and pipe.backend == "torch"
        rgb = pipe(e)
        bg = torch.zeros(8)
        bg[:3] = 1.0
        with torch.no_grad():
            expected = refine(render(frame, cam, background=bg).image, ref)
        assert rgb.shape == (1, 24, 24, 3)
        assert torch.allclose(rgb, expected, atol=1e-5)
    with pytest.raises(ParameterError, match="expression"):
        pipe(torch.full((1, avatar.num_expr), float("nan")))
