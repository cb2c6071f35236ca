"""Evaluation: LPIPS, face metrics, the self-reenactment and novel-view commands.

Fast unit tests run everywhere; the LPIPS weights, the GRID clip and the head scan come from
../shared/data and the tests that need them skip with the reason when it is absent.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import ROOT, shared_data

from avatar_core.eval.face_metrics import LIP_LANDMARKS, akd, box_psnr, mouth_box
from avatar_core.eval.lpips import ALEX_CONVS, LPIPS, LPIPSWeightsError, alexnet_state_from_flax

LPIPS_NPZ = ("metrics", "lpips_alexnet_flax_layout.npz")


def _photo(size=128):
    import cv2
    from skimage import data
    return cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _flax_arrays(rng):
    arrays = {}
    for k, (cin, cout, ks, _, _, _) in enumerate(ALEX_CONVS):
        arrays[f"AlexNet_0/Conv_{k}/kernel"] = rng.standard_normal((ks, ks, cin, cout)).astype(np.float32)
        arrays[f"AlexNet_0/Conv_{k}/bias"] = rng.standard_normal(cout).astype(np.float32)
        arrays[f"NetLinLayer_{k}/Conv_0/kernel"] = rng.random((1, 1, cout, 1)).astype(np.float32)
    return arrays


# ----------------------------------------------------------------------------- LPIPS
def test_lpips_loader_maps_hwio_to_oihw():
    arrays = _flax_arrays(np.random.default_rng(0))
    state = alexnet_state_from_flax(arrays)
    for k, (cin, cout, ks, _, _, _) in enumerate(ALEX_CONVS):
        w = state[f"convs.{k}.weight"]
        assert tuple(w.shape) == (cout, cin, ks, ks)
        kern = arrays[f"AlexNet_0/Conv_{k}/kernel"]
        # weight[o, i, y, x] == kernel[y, x, i, o]
        assert float(w[3, 1, 2, 0]) == pytest.approx(float(kern[2, 0, 1, 3]))
        assert tuple(state[f"heads.{k}.weight"].shape) == (1, cout, 1, 1)
    net = LPIPS()
    net.load_state_dict(state, strict=False)   # every tensor has the module's shape
    assert torch.equal(net.convs[1].weight, state["convs.1.weight"])


def test_lpips_loader_rejects_wrong_shapes(tmp_path):
    arrays = _flax_arrays(np.random.default_rng(0))
    arrays["AlexNet_0/Conv_2/kernel"] = arrays["AlexNet_0/Conv_2/kernel"][..., :5]
    with pytest.raises(LPIPSWeightsError, match="Conv_2/kernel"):
        alexnet_state_from_flax(arrays)
    with pytest.raises(LPIPSWeightsError, match="does not exist"):
        LPIPS.load(tmp_path / "absent.npz")


def test_lpips_real_weights_identity_and_ordering():
    import cv2
    net = LPIPS.load(shared_data(*LPIPS_NPZ))
    with np.load(shared_data(*LPIPS_NPZ)) as z:
        assert np.allclose(net.convs[0].weight.numpy(), z["AlexNet_0/Conv_0/kernel"].transpose(3, 2, 0, 1))
    x = _photo()
    blurred = cv2.GaussianBlur(x, (0, 0), 1.0)
    noisy = np.clip(x + np.random.default_rng(1).normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    d = net(np.stack([x, x, x]), np.stack([x, blurred, noisy]))
    assert float(d[0]) == pytest.approx(0.0, abs=1e-6)
    assert 0.0 < float(d[1]) < float(d[2])
    # a mask restricts the spatial average: a difference outside it does not count
    y = x.copy()
    y[:, 64:] = noisy[:, 64:]
    mask = np.zeros((128, 128), np.float32)
    mask[:, :48] = 1
    assert float(net(x, y, mask=mask)[0]) < 0.2 * float(net(x, y)[0])


# ----------------------------------------------------------------------------- face metrics
def _synthetic_landmarks():
    lms = np.zeros((478, 3))
    rng = np.random.default_rng(0)
    lms[:, :2] = rng.uniform(40, 80, (478, 2))
    lips = np.linspace(0, 2 * math.pi, len(LIP_LANDMARKS), endpoint=False)
    lms[LIP_LANDMARKS, 0] = 60 + 10 * np.cos(lips)       # lips: x 50..70, y 85..91
    lms[LIP_LANDMARKS, 1] = 88 + 3 * np.sin(lips)
    return lms


def test_akd_on_synthetic_landmarks():
    a = _synthetic_landmarks()
    b = a.copy()
    b[:, 0] += 3.0
    b[:, 1] -= 4.0
    assert akd(a, b) == pytest.approx(5.0)
    assert akd(a, a) == 0.0
    assert math.isnan(akd(a, None))
    assert math.isnan(akd(a, np.full_like(a, np.nan)))


def test_mouth_box_and_box_psnr():
    lms = _synthetic_landmarks()
    x0, y0, x1, y1 = mouth_box(lms, (128, 128))
    # lips span x 50..70, y 85..91; padded by a quarter of 20 px on every side
    assert (x0, y0) == (45, 80) and (x1, y1) == (76, 97)
    assert mouth_box(lms * 10, (128, 128))[2] == 128        # clipped to the image
    assert mouth_box(None, (128, 128)) is None
    a = _photo()
    b = a.copy()
    b[:40] = 0.0                                            # outside the box: no effect
    assert box_psnr(a, b, (x0, y0, x1, y1)) > 100
    b[85:90, 55:65] += 0.1
    p = box_psnr(a, np.clip(b, 0, 1), (x0, y0, x1, y1))
    assert 20 < p < 60
    assert math.isnan(box_psnr(a, b, None))


def test_report_helpers(tmp_path):
    from avatar_core.eval.report import md_table, write_csv, write_json
    write_csv(tmp_path / "a.csv", [{"x": 1.0, "y": float("nan")}], ["x", "y"])
    assert (tmp_path / "a.csv").read_text() == "x,y\n1,\n"
    write_json(tmp_path / "a.json", {"v": float("nan"), "a": np.arange(2)})
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": None, "a": [0, 1]}
    assert md_table(["a", "b"], [[1, 2]]).splitlines()[1] == "| :--- | ---: |"


# ----------------------------------------------------------------------------- novel-view alignment
def _orbit_viewmats(yaws, distance):
    """Blender-like level cameras orbiting the origin (Z up, face toward -Y), OpenCV viewmats."""
    out = []
    for yaw in yaws:
        a = math.radians(yaw)
        eye = np.array([distance * math.sin(a), -distance * math.cos(a), 0.0])
        z = -eye / np.linalg.norm(eye)
        x = np.cross(z, [0.0, 0.0, -1.0])       # camera x: right, y: down (world -Z)
        x /= np.linalg.norm(x)
        y = np.cross(z, x)
        V = np.eye(4)
        V[:3, :3] = np.stack([x, y, z])
        V[:3, 3] = -V[:3, :3] @ eye
        out.append(V)
    return np.stack(out)


def test_novel_cameras_reproduce_blender_views_on_a_scaled_copy():
    from avatar_core.eval.novelview import ScanViews, fit_scale_shift, novel_cameras
    yaws = [-30.0, 0.0, 30.0]
    V = _orbit_viewmats(yaws, 0.7)
    K = np.array([[500.0, 0, 191.5], [0, 500.0, 191.5], [0, 0, 1]])
    views = ScanViews(rgba=np.zeros((3, 4, 4, 4), np.float32), yaws=np.array(yaws), K=K, viewmats=V,
                      centre=np.zeros(3), distance=0.7, depth_front=np.zeros((2, 2)), meta={}, files=[])
    rng = np.random.default_rng(0)
    pw = rng.normal(0, 0.06, (200, 3)) + [0, -0.05, 0]        # a head-sized cloud near the centre
    cam0 = pw @ V[1, :3, :3].T + V[1, :3, 3]
    k = 1.3                                                   # the avatar's frame: camera-0 scaled
    G = np.eye(4)                                             # and an arbitrary avatar world frame
    G[:3, :3] = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], float)
    G[:3, 3] = [0.1, -0.2, 0.3]
    pa_world = (k * cam0 - G[:3, 3]) @ G[:3, :3]             # A = G: p_cam = R p_world + t
    kk, t, rms = fit_scale_shift(k * cam0, cam0)
    assert kk == pytest.approx(k) and np.allclose(t, 0, atol=1e-9) and rms < 1e-9
    mats, centre, residual = novel_cameras(G, views, kk, t)
    assert residual < 1e-9 and np.allclose(centre, [0, 0, k * 0.7])
    for i in range(3):
        pb = pw @ V[i, :3, :3].T + V[i, :3, 3]
        pa = pa_world @ mats[i, :3, :3].T + mats[i, :3, 3]
        uv_b = (pb @ K.T)[:, :2] / pb[:, 2:]
        uv_a = (pa @ K.T)[:, :2] / pa[:, 2:]
        assert np.abs(uv_a - uv_b).max() < 1e-6


def test_novelview_renders_the_scan_with_blender(tmp_path):
    pytest.importorskip("bpy", reason="the scan is rendered with Blender's Python module (bpy)")
    from avatar_core.eval.novelview import render_scan
    scan = shared_data("headscan", "LeePerrySmith.glb").parent
    renderer = ROOT / "scripts" / "render_headscan.py"
    views = render_scan(scan, tmp_path / "r", [-30, 0, 30], renderer, size=96, samples=4, depth_grid=48)
    assert views.rgba.shape == (3, 96, 96, 4)
    cover = (views.rgba[..., 3] > 0.5).mean(axis=(1, 2))
    assert np.all(cover > 0.1) and np.all(cover < 0.9)
    assert views.meta["material"] in ("maps", "procedural skin")
    # every camera looks at the orbit centre: it projects to the image centre
    for V in views.viewmats:
        c = V[:3, :3] @ views.centre + V[:3, 3]
        uv = (views.K @ c)[:2] / c[2]
        assert np.allclose(uv, 47.5, atol=1e-3)
    z = views.depth_front
    assert 0.1 < np.isfinite(z).mean() < 0.9 and 0.5 < np.nanmin(z) < 0.7 < np.nanmax(z) < 0.9
    # a second call with the same job reuses the renders
    again = render_scan(scan, tmp_path / "r", [-30, 0, 30], renderer, size=96, samples=4, depth_grid=48, reuse=True)
    assert np.array_equal(again.rgba, views.rgba)


def test_selfreenact_judges_only_what_the_video_frame_shows():
    """Where the crop runs past the video's frame neither the real frame nor the avatar is seen:
    ``photo_region`` is the crop's share inside the frame, at the evaluation size."""
    from types import SimpleNamespace
    from avatar_core.eval.selfreenact import photo_region
    inside = np.ones((128, 128), bool)
    inside[96:] = False                       # the video ends a quarter above the crop's bottom
    region = photo_region(SimpleNamespace(portrait=SimpleNamespace(inside=inside)), 64)
    assert region.shape == (64, 64) and region.dtype == np.float32
    assert region[:48].min() == 1.0 and region[48:].max() == 0.0
    assert photo_region(SimpleNamespace(portrait=SimpleNamespace()), 32).min() == 1.0


# ----------------------------------------------------------------------------- self-reenactment CLI
def _grid_clip_with_blank_frames(path, n=6, blank=(3,)):
    import cv2
    from avatar_core.fit.track import read_video
    frames, fps = read_video(shared_data("grid", "s1", "bbaf2n.mpg"), max_frames=n)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames.shape[2], frames.shape[1]))
    assert w.isOpened()
    for t, f in enumerate(frames):
        w.write(np.full_like(f, 128) if t in blank else f[..., ::-1])
    w.release()
    return path


def test_selfreenact_end_to_end_writes_the_report(tmp_path, capsys):
    from avatar_core.__main__ import main
    clip = _grid_clip_with_blank_frames(tmp_path / "clip.avi")
    shared_data(*LPIPS_NPZ)
    out = tmp_path / "report"
    rc = main(["eval", "selfreenact", str(clip), "--out", str(out), "--quality", "test", "--size", "64",
               "--track-steps", "30", "--strip-frames", "2", "--lpips-weights", str(shared_data(*LPIPS_NPZ))])
    assert rc == 0, capsys.readouterr().err
    for name in ("report.md", "summary.json", "per_frame.csv", "clip/metrics.png", "clip/strip.png", "clip/result.json"):
        assert (out / name).is_file(), name
    assert not (out / "clip" / "avatar.safetensors").exists()
    rows = (out / "per_frame.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("clip,frame,source,face,psnr_avatar,psnr_baseline")
    summary = json.loads((out / "summary.json").read_text())
    clip_summary = summary["clips"]["clip"]
    assert clip_summary["frames_without_face"] == [3]
    for m in ("avatar", "baseline"):
        assert set(clip_summary[m]) == {"psnr", "ssim", "lpips", "head_psnr", "akd", "mouth_psnr"}
        assert clip_summary[m]["psnr"] > 10 and 0 <= clip_summary[m]["lpips"] < 1
    report = (out / "report.md").read_text()
    assert "had no face" in report and "interpolated" in report and "| clip |" in report
    # resuming takes the saved numbers
    rc = main(["eval", "selfreenact", str(clip), "--out", str(out), "--quality", "test", "--size", "64",
               "--track-steps", "30", "--strip-frames", "2", "--reuse"])
    assert rc == 0 and "earlier run" in capsys.readouterr().err


def test_selfreenact_bad_videos_get_clear_errors(tmp_path, capsys):
    import cv2
    from avatar_core.__main__ import main
    weights = ["--lpips-weights", str(shared_data("metrics", "lpips_alexnet_flax_layout.npz"))]
    empty = tmp_path / "empty.mpg"
    empty.write_bytes(b"")
    assert main(["eval", "selfreenact", str(empty), "--out", str(tmp_path / "o1")] + weights) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "Traceback" not in err and "empty.mpg" in err
    noface = tmp_path / "noface.avi"
    w = cv2.VideoWriter(str(noface), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (160, 120))
    for _ in range(3):
        w.write(np.full((120, 160, 3), 90, np.uint8))
    w.release()
    assert main(["eval", "selfreenact", str(noface), "--out", str(tmp_path / "o2")] + weights) == 1
    err = capsys.readouterr().err
    assert "No face was found in any of the 3 frames" in err and "Traceback" not in err
    assert main(["eval", "selfreenact", str(tmp_path / "absent.mp4"), "--out", str(tmp_path / "o3")] + weights) == 1
    assert "does not exist" in capsys.readouterr().err
