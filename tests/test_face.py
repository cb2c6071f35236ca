"""The face pipeline (our torch face models, weights fetched once) on real files, including bad input.

The portrait is scikit-image's astronaut (the same photo as ../shared/data/portraits/
astronaut.png, always available); the shared file is used where the file itself matters.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from avatar_core.errors import Cancelled, FaceNotFoundError, FaceTooSmallError, ImageError, ParameterError
from avatar_core.face import FaceTracker, crop_with, load_image, process_portrait
from avatar_core.face.landmarks import LEFT_IRIS, LOWER_LIP, NOSE_TIP, RIGHT_IRIS, UPPER_LIP
from avatar_core.face.matte import face_hull_mask
from tests.conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
PORTRAITS = ROOT.parent / "shared" / "data" / "portraits"

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """[512, 512, 3] uint8."""
    from skimage import data
    return data.astronaut()


@pytest.fixture(scope="module")
def portrait(astronaut):
    return process_portrait(astronaut)


def _landmarks_in_original(fp) -> np.ndarray:
    """[478, 2] landmark x, y in the original photo's pixels."""
    m = fp.original_from_crop
    return fp.landmarks[:, :2] @ m[:, :2].T + m[:, 2]


def _assert_sane(fp, size=512):
    lm = fp.landmarks
    assert fp.image.shape == (size, size, 3) and fp.image.dtype == np.float32
    assert fp.alpha.shape == (size, size) and fp.alpha.dtype == np.float32
    assert lm.shape == (478, 3) and np.isfinite(lm).all()
    assert (lm[:, :2] >= 0).all() and (lm[:, :2] < size).all(), "landmarks leave the crop"
    eyes_y = lm[[LEFT_IRIS, RIGHT_IRIS], 1].mean()
    mouth_y = lm[[UPPER_LIP, LOWER_LIP], 1].mean()
    assert eyes_y + 0.1 * size < mouth_y, "eyes are not above the mouth"
    # the subject's right eye appears on the image's left
    assert lm[RIGHT_IRIS, 0] < lm[NOSE_TIP, 0] < lm[LEFT_IRIS, 0]
    face = face_hull_mask(lm, size)
    assert fp.alpha[face].mean() > 0.98, "the matte does not cover the face"
    assert 0.15 < fp.alpha.mean() < 0.85
    x0, y0, x1, y1 = fp.face_box
    assert x0 < lm[NOSE_TIP, 0] < x1 and y0 < lm[NOSE_TIP, 1] < y1


def test_astronaut_portrait(portrait):
    fp = portrait
    _assert_sane(fp)
    assert fp.original_size == (512, 512) and fp.source is None
    # the head is centred and takes a sensible part of the crop
    eye_dist = np.linalg.norm(fp.landmarks[LEFT_IRIS, :2] - fp.landmarks[RIGHT_IRIS, :2])
    assert 0.12 * fp.size < eye_dist < 0.25 * fp.size
    assert abs(fp.landmarks[NOSE_TIP, 0] - fp.size / 2) < 0.1 * fp.size
    # background (top corners) and padding are out of the matte
    assert fp.alpha[~fp.inside].max() == 0.0 and fp.inside.mean() > 0.8
    assert fp.alpha[:40, :40].mean() < 0.05 and fp.alpha[:40, -40:].mean() < 0.05
    # the transform and its inverse agree, and crop_with reproduces the crop
    m, inv = fp.crop_from_original, fp.original_from_crop
    np.testing.assert_allclose(np.vstack([m, [0, 0, 1]]) @ np.vstack([inv, [0, 0, 1]]), np.eye(3), atol=1e-9)


def test_crop_with_and_tracker_match_the_photo(portrait, astronaut):
    fp = portrait
    again = crop_with(astronaut.astype(np.float32) / 255.0, fp.transform)
    assert np.abs(again - fp.image).mean() < 1e-3
    with FaceTracker() as tracker:
        tracked = [tracker.track(astronaut) for _ in range(3)]
        assert tracker.track(np.zeros((240, 320, 3), np.uint8)) is None
    lm_orig = _landmarks_in_original(fp)
    for t in tracked:
        assert t is not None and t.shape == (478, 3)
        assert np.median(np.linalg.norm(t[:, :2] - lm_orig, axis=1)) < 3.0


def test_shared_astronaut_file_matches_array(portrait):
    path = PORTRAITS / "astronaut.png"
    if not path.exists():
        pytest.skip(f"shared portrait {path} is absent (it lives beside the repository in ../shared/data)")
    fp = process_portrait(str(path), size=256)
    _assert_sane(fp, 256)
    assert fp.source == str(path)
    d = np.linalg.norm(_landmarks_in_original(fp) - _landmarks_in_original(portrait), axis=1)
    assert np.median(d) < 1.5


def test_exif_orientation(tmp_path, astronaut):
    upright = tmp_path / "upright.jpg"
    rotated = tmp_path / "rotated.jpg"
    Image.fromarray(astronaut).save(upright, quality=95)
    # stored rotated 90 degrees counter-clockwise; orientation 6 says "rotate 90 CW to display"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(astronaut).transpose(Image.Transpose.ROTATE_90).save(rotated, quality=95, exif=exif)
    assert Image.open(rotated).size == (512, 512)
    a, b = process_portrait(str(upright), size=256), process_portrait(str(rotated), size=256)
    d = np.linalg.norm(_landmarks_in_original(a) - _landmarks_in_original(b), axis=1)
    assert np.median(d) < 1.5
    # a non-square image shows the width/height swap
    wide = tmp_path / "wide.jpg"
    Image.fromarray(astronaut[:, :400]).transpose(Image.Transpose.ROTATE_90).save(wide, exif=exif)
    img = load_image(str(wide))
    assert img.original_size == (400, 512) and img.rgb.shape == (512, 400, 3)
    assert np.abs(img.rgb - astronaut[:, :400] / 255.0).mean() < 0.03


def _save_16bit_png(path, rgb_u8):
    import cv2
    assert cv2.imwrite(str(path), (rgb_u8[:, :, ::-1].astype(np.uint16) * 257))


@pytest.mark.parametrize("kind", ["png16", "grey16", "grey", "rgba", "palette", "webp", "tiff", "bmp"])
def test_formats_load(tmp_path, astronaut, kind):
    im = Image.fromarray(astronaut)
    path = tmp_path / f"img_{kind}"
    want, want_alpha = astronaut / 255.0, None
    tol = 0.01
    grey = np.asarray(im.convert("L")) / 255.0
    if kind == "png16":
        path = path.with_suffix(".png")
        _save_16bit_png(path, astronaut)
    elif kind == "grey16":
        path = path.with_suffix(".png")
        Image.fromarray((grey * 65535).astype(np.uint16)).save(path)
        want = np.repeat(grey[:, :, None], 3, 2)
    elif kind == "grey":
        path = path.with_suffix(".png")
        im.convert("L").save(path)
        want = np.repeat(grey[:, :, None], 3, 2)
    elif kind == "rgba":
        path = path.with_suffix(".png")
        a = np.zeros((512, 512), np.uint8)
        a[:, 100:] = 255
        Image.fromarray(np.dstack([astronaut, a])).save(path)
        want_alpha = a / 255.0
    elif kind == "palette":
        path = path.with_suffix(".png")
        im.quantize(256).save(path)
        tol = 0.05
    elif kind == "webp":
        path = path.with_suffix(".webp")
        im.save(path, quality=95)
        tol = 0.03
    elif kind == "tiff":
        path = path.with_suffix(".tif")
        im.save(path, compression="tiff_lzw")
    elif kind == "bmp":
        path = path.with_suffix(".bmp")
        im.save(path)
    img = load_image(str(path))
    assert img.rgb.shape == (512, 512, 3) and img.rgb.dtype == np.float32
    assert 0.0 <= img.rgb.min() and img.rgb.max() <= 1.0
    assert np.abs(img.rgb - want).mean() < tol, kind
    if want_alpha is None:
        assert img.alpha is None
    else:
        np.testing.assert_allclose(img.alpha, want_alpha, atol=1e-6)


def test_grey_and_16bit_portraits_process(tmp_path, astronaut, portrait):
    grey = tmp_path / "grey.png"
    Image.fromarray(astronaut).convert("L").save(grey)
    fp = process_portrait(str(grey), size=256)
    _assert_sane(fp, 256)
    png16 = tmp_path / "rgb16.png"
    _save_16bit_png(png16, astronaut)
    fp = process_portrait(str(png16), size=256)
    d = np.linalg.norm(_landmarks_in_original(fp) - _landmarks_in_original(portrait), axis=1)
    assert np.median(d) < 1.5


def test_file_alpha_is_the_matte(tmp_path, astronaut, portrait):
    # a cut-out: the matte we computed becomes the file's own alpha
    cut = Image.fromarray(astronaut).convert("RGBA")
    a = crop_with(portrait.alpha, portrait.original_from_crop, 512)  # crop -> original pixels
    cut.putalpha(Image.fromarray((np.clip(a, 0, 1) * 255).astype(np.uint8)))
    path = tmp_path / "cutout.png"
    cut.save(path)
    fp = process_portrait(str(path))
    assert np.abs(fp.alpha - portrait.alpha).mean() < 0.03


def test_no_face(tmp_path):
    rng = np.random.default_rng(0)
    for i, arr in enumerate([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8),
                             np.full((480, 640, 3), 128, np.uint8)]):
        path = tmp_path / f"noface{i}.png"
        Image.fromarray(arr).save(path)
        with pytest.raises(FaceNotFoundError, match=r"No face was found in .*noface"):
            process_portrait(str(path))


def test_several_faces(astronaut):
    import cv2
    small = cv2.resize(astronaut, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 512 + small.shape[1], 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[60:60 + small.shape[0], 512:] = small
    fp = process_portrait(canvas, size=256)
    assert fp.warnings[0].startswith("2 faces found; using the largest (index 0)")
    nose = _landmarks_in_original(fp)[NOSE_TIP]
    assert nose[0] < 512, "the smaller face was chosen"
    fp1 = process_portrait(canvas, size=256, face_index=1)
    assert _landmarks_in_original(fp1)[NOSE_TIP][0] > 512
    assert "face index 1" in fp1.warnings[0]
    with pytest.raises(FaceNotFoundError, match="face_index 5"):
        process_portrait(canvas, face_index=5)


def test_small_face(tmp_path, astronaut):
    path = tmp_path / "tiny.png"
    Image.fromarray(astronaut).resize((205, 205), Image.Resampling.LANCZOS).save(path)  # face ~38 px
    with pytest.raises(FaceTooSmallError, match=r"tiny\.png.*at least 64 pixels wide, or crop closer"):
        process_portrait(str(path))


def test_not_an_image(tmp_path, astronaut):
    text = tmp_path / "notes.jpg"
    text.write_text("these are not the pixels you are looking for\n")
    with pytest.raises(ImageError, match=r"notes\.jpg"):
        process_portrait(str(text))
    full = tmp_path / "full.jpg"
    Image.fromarray(astronaut).save(full)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageError, match=r"truncated\.jpg is truncated or corrupt"):
        process_portrait(str(truncated))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png is empty"):
        load_image(str(empty))
    with pytest.raises(ImageError, match=r"missing\.png does not exist"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ImageError, match=r"shape"):
        load_image(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ParameterError, match="size"):
        process_portrait(astronaut, size=10)


def test_pil_input_threads_and_lazy_import(astronaut, portrait):
    results = {}

    def work(i):
        results[i] = process_portrait(Image.fromarray(astronaut), size=512)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for fp in results.values():
        np.testing.assert_allclose(fp.landmarks, portrait.landmarks, atol=1e-6)
    code = "import sys, avatar_core.face; assert 'mediapipe' not in sys.modules and 'cv2' not in sys.modules"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


def test_rounded_corners_alpha_is_not_the_matte(tmp_path, astronaut, portrait):
    a = np.full((512, 512), 255, np.uint8)
    a[:20, :20] = 0  # a transparent corner: not a cut-out
    path = tmp_path / "corner.png"
    Image.fromarray(np.dstack([astronaut, a])).save(path)
    fp = process_portrait(str(path))
    assert np.abs(fp.alpha - portrait.alpha).mean() < 0.01


def test_progress_and_cancel(astronaut):
    seen = []
    process_portrait(astronaut, size=128, progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        process_portrait(astronaut, cancel=cancel)


_BIG_CHILD = r"""
import json, resource, sys, time
from avatar_core.face import process_portrait
from skimage import data


def status(key):  # kB, from /proc/self/status
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])


process_portrait(data.astronaut(), size=256)            # warm up the face models
try:  # reset the peak-RSS mark (Linux), so the peak below is this call's own
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, how = status("VmRSS"), "VmHWM after clear_refs"
except OSError:
    base, how = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
t = time.perf_counter()
fp = process_portrait(sys.argv[1])
dt = time.perf_counter() - t
peak = status("VmHWM") if how.startswith("VmHWM") else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = fp.original_from_crop
nose = (fp.landmarks[1, :2] @ m[:, :2].T + m[:, 2]).tolist()
print(json.dumps({"extra_mb": (peak - base) / 1024, "how": how, "seconds": dt, "size": fp.original_size,
                  "nose": nose}))
"""


def test_huge_image_bounded_memory(tmp_path, astronaut, portrait):
    big = tmp_path / "huge.jpg"
    Image.fromarray(astronaut).resize((10000, 10000), Image.Resampling.NEAREST).save(big, quality=90)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _BIG_CHILD, str(big)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print("10000x10000 JPEG:", res)
    assert res["size"] == [10000, 10000]
    assert res["extra_mb"] < 1500, res
    want = _landmarks_in_original(portrait)[NOSE_TIP] * (10000 / 512)
    assert np.linalg.norm(np.array(res["nose"]) - want) < 40  # 2 px of the 512 image


# ------------------------------------------------------------------ our torch face models


def test_ssd_anchors_and_weighted_nms():
    from avatar_core.face.nets import DETECTORS, ssd_anchors, weighted_nms
    short, full = DETECTORS[0], DETECTORS[1]
    a = ssd_anchors(short.size, short.strides, short.interpolated)
    assert a.shape == (896, 2)                       # 16x16x2 + 8x8x6
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    assert ssd_anchors(full.size, full.strides, full.interpolated).shape == (2304, 2)   # 48x48
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.6, 0.8])
    kps = np.zeros((3, 6, 2))
    b, s, _ = weighted_nms(boxes, scores, kps)
    assert len(b) == 2 and s.tolist() == [0.9, 0.8]
    np.testing.assert_allclose(b[0], (boxes[0] * 0.9 + boxes[1] * 0.6) / 1.5)


def test_graph_ops_follow_tflite_semantics():
    import torch
    from avatar_core.face.graph import TfliteGraph, _same_pads
    assert _same_pads(128, 3, 2) == (0, 1) and _same_pads(128, 5, 1) == (2, 2)
    g = TfliteGraph({"ops": [], "inputs": [0], "outputs": [0], "names": {"0": "x"}, "ranks": {}, "shapes": {}}, {})
    x = torch.arange(2 * 8 * 2 * 3, dtype=torch.float32).reshape(2, 8, 2, 3)        # NCHW, C = 8
    y = g._depth_to_space({}, x, [0], {"block_size": 2}, 2, 0)
    nhwc, out = x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)                       # TF: DCR order
    for h, w, i, j in [(0, 0, 0, 1), (1, 2, 1, 0), (1, 1, 1, 1)]:
        assert torch.equal(out[:, 2 * h + i, 2 * w + j], nhwc[:, h, w, (i * 2 + j) * 2:(i * 2 + j) * 2 + 2])


@pytest.mark.parametrize("name,size", [("face_landmark_with_attention", (192, 192)),
                                       ("face_detection_short_range", (128, 128)),
                                       ("selfie_segmentation_landscape", (144, 256))])
def test_merged_graph_matches_the_op_list_eager_frozen_and_split(name, size, monkeypatch):
    """The CPU plan (in-place adds, conv + add, pool + pad + add, stacked parallel branches,
    oneDNN weights, matrix-product 1 x 1 convolutions), eagerly, traced and frozen, and split over
    two workers, gives the plain op list's outputs."""
    import torch
    from avatar_core.face.graph import TfliteGraph
    from avatar_core.face.weights import load_model
    spec, tensors = load_model(name)
    plain, merged = TfliteGraph(spec, tensors, fuse=False).eval(), TfliteGraph(spec, tensors).eval()
    assert len(merged._plan) <= len(plain._plan)
    if name == "face_landmark_with_attention":
        assert len(merged._plan) < 0.5 * len(plain._plan)           # 341 ops -> 145 calls
    x = torch.rand(8, 3, *size, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("HEADSPLAT_FACE_WORKERS", "2")
    with torch.inference_mode():
        want = plain._eager(x)
        for got in (merged._eager(x), merged(x), merged(x[:3])):
            n = got[next(iter(got))].shape[0]
            for k, v in want.items():
                torch.testing.assert_close(got[k], v[:n], rtol=1e-4, atol=1e-4 * float(v.abs().max()))
    assert merged._frozen, "the CPU graph was not traced"


def test_weights_errors_name_the_command(tmp_path, monkeypatch):
    import shutil
    from avatar_core.face import weights
    from avatar_core.face.weights import FaceModelsMissing
    monkeypatch.setenv("HEADSPLAT_CACHE_DIR", str(tmp_path))
    weights._loaded.clear()
    with pytest.raises(FaceModelsMissing, match=r"run `python -m avatar_core fetch-models` once"):
        weights.load_model("face_detection_short_range")
    monkeypatch.delenv("HEADSPLAT_CACHE_DIR")
    good = weights.model_path("face_detection_short_range")
    monkeypatch.setenv("HEADSPLAT_CACHE_DIR", str(tmp_path))
    target = weights.model_path("face_detection_short_range")
    target.parent.mkdir(parents=True)
    shutil.copy(good, target)
    target.write_bytes(target.read_bytes()[:-100])                                    # truncated
    with pytest.raises(FaceModelsMissing, match=r"corrupt.*fetch-models --force"):
        weights.load_model("face_detection_short_range")
    assert not weights.models_ready()
    with pytest.raises(FaceModelsMissing, match="does not exist"):
        weights.fetch_models(tmp_path / "nowhere.whl")
    weights._loaded.clear()


def test_cli_without_weights_says_the_command(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HEADSPLAT_CACHE_DIR=str(tmp_path))
    photo = PORTRAITS / "astronaut.png"
    if not photo.exists():
        pytest.skip(f"shared portrait {photo} is absent")
    code = ("import sys; from avatar_core.face import process_portrait; from avatar_core.errors import AvatarError\n"
            "try:\n    process_portrait(sys.argv[1])\nexcept AvatarError as e:\n    print(e); sys.exit(1)")
    out = subprocess.run([sys.executable, "-c", code, str(photo)], capture_output=True, text=True, env=env)
    assert out.returncode == 1 and "python -m avatar_core fetch-models" in out.stdout
    assert "Traceback" not in out.stderr


def test_fetch_models_is_fast_when_done_and_no_mediapipe_or_jax_is_imported():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "avatar_core", "fetch-models"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0 and "already" in out.stdout, out.stderr
    code = ("import sys\nfrom skimage import data\nfrom avatar_core.face import process_portrait\n"
            "process_portrait(data.astronaut(), size=128)\n"
            "assert 'mediapipe' not in sys.modules and 'jax' not in sys.modules, 'mediapipe or jax imported'")
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode == 0


def test_tracker_batches_agree_with_frame_by_frame():
    from avatar_core.fit.track import read_video
    frames, _ = read_video(shared_data("grid", "s1", "bbaf2n.mpg"), max_frames=20)
    with FaceTracker(batch_size=8) as tr:
        batched = tr.track_batch(frames)
    with FaceTracker() as tr:
        single = np.stack([tr.track(f) for f in frames])
    assert np.isfinite(batched).all()
    d = np.linalg.norm(batched[:, :, :2] - single[:, :, :2], axis=-1)
    assert np.median(d) < 0.3 and np.percentile(d, 95) < 1.0, (np.median(d), np.percentile(d, 95))


def test_fetch_models_from_the_installed_mediapipe_folder_matches_the_cache(tmp_path, monkeypatch):
    mp = pytest.importorskip("mediapipe", reason="the parity tests need mediapipe 0.10.21 (Python 3.11 only)")
    from safetensors.numpy import load_file
    from avatar_core.face import weights
    cached = {n: load_file(str(weights.model_path(n))) for n in weights.MODELS}
    monkeypatch.setenv("HEADSPLAT_CACHE_DIR", str(tmp_path))
    out = weights.fetch_models(Path(mp.__file__).parent / "modules")
    assert (out / "NOTICE").read_text().startswith("The files in this folder are converted") and (out / "LICENSE").exists()
    for name, tensors in cached.items():
        again = load_file(str(out / f"{name}.safetensors"))
        assert again.keys() == tensors.keys() and all(np.array_equal(again[k], tensors[k]) for k in tensors)
    t = __import__("time").perf_counter()
    weights.fetch_models(Path("/nonexistent"))          # already done: the source is not even read
    assert __import__("time").perf_counter() - t < 1.0
    weights._loaded.clear()


def test_parity_with_mediapipe_on_portraits_and_a_clip():
    pytest.importorskip("mediapipe", reason="the parity tests need mediapipe 0.10.21 (Python 3.11 only)")
    import torch
    from avatar_core.eval import bench_face
    from avatar_core.fit.track import read_video
    paths = [shared_data("portraits", n) for n in ("obama.jpg", "painting_s5.jpg")]
    import cv2
    images = [(p.name, np.ascontiguousarray(cv2.imread(str(p))[..., ::-1])) for p in paths]
    frames, _ = read_video(shared_data("grid", "s1", "bbaf3s.mpg"), max_frames=30)
    images += [(f"grid:{i}", f) for i, f in enumerate(frames[::10])]
    mp = bench_face.Mediapipe()
    res = bench_face.parity(images, mp, torch.device("cpu"))
    print(res)
    assert not res["found_by_one_only"]
    assert res["landmarks_px_at_512"]["median"] <= 1.0 and res["landmarks_px_at_512"]["p95"] <= 3.0
    assert res["detection_iou"]["short_range"]["min"] >= 0.9 and res["detection_iou"]["full_range"]["min"] >= 0.9
    assert res["matte_iou"]["general"]["min"] >= 0.97 and res["matte_iou"]["landscape"]["min"] >= 0.97
    track, _ = bench_face.tracking([("clip", frames)], mp, torch.device("cpu"), None)
    assert track["clips"]["clip"]["median_px"] <= 1.0, track


def test_photo_detection_averages_the_candidates_mediapipe_does():
    """mediapipe's face-detection solution suppresses every candidate from its graph's score
    (short range 0.5, full range 0.6), whatever min_detection_confidence says: on obama two
    short-range candidates at 0.52-0.53 move the face's box by ~1 px, and ours must average
    them too (with candidates from our 0.6 threshold the crops, and the landmarks, were 0.6 px
    apart)."""
    pytest.importorskip("mediapipe", reason="the parity tests need mediapipe 0.10.21 (Python 3.11 only)")
    import cv2

    from avatar_core.eval import bench_face
    from avatar_core.face import _models
    from avatar_core.face import detect as detect_mod
    photo = shared_data("portraits", "obama.jpg")
    image = _models.to_tensor(np.ascontiguousarray(cv2.imread(str(photo))[..., ::-1]), "cpu")
    ours = detect_mod._run(image, 0)
    with bench_face.mediapipe_face_path():
        theirs = detect_mod._run(image, 0)
    assert len(ours) == len(theirs) == 1
    np.testing.assert_allclose(ours[0].box, theirs[0].box, atol=0.02)
    raw = _models.get("detection", 0, "cpu")(image, detect_mod.MIN_CONFIDENCE)[0][0]  # candidates from 0.6
    assert np.abs(raw[0] - theirs[0].box).max() > 0.3
    # the full-range letterbox: with the warp matrix built in float64 instead of mediapipe's
    # float32 corners, this box was 0.2 px off
    ours, theirs = detect_mod._run(image, 1), None
    with bench_face.mediapipe_face_path():
        theirs = detect_mod._run(image, 1)
    np.testing.assert_allclose(ours[0].box, theirs[0].box, atol=0.005)


def test_photo_landmarks_match_mediapipes_to_a_thousandth_of_a_pixel():
    """The same photo through both face paths: the same detection box to ~1e-4 px, the same
    crops (square crops snap to 1/16 px, so that noise cannot change OpenCV's fixed-point warp),
    mediapipe's own warp of the mesh's crop: landmarks ~0.001 px apart. Before, biden's were
    0.029 px apart (median at the 512 crop) and his fit's error 0.003 points worse."""
    pytest.importorskip("mediapipe", reason="the parity tests need mediapipe 0.10.21 (Python 3.11 only)")
    from avatar_core.eval import bench_face
    photo = shared_data("portraits", "biden.jpg")
    ours = process_portrait(photo)
    with bench_face.mediapipe_face_path():
        theirs = process_portrait(photo)
    np.testing.assert_array_equal(ours.crop_from_original, theirs.crop_from_original)
    d = np.linalg.norm(ours.landmarks[:, :2] - theirs.landmarks[:, :2], axis=1)
    assert np.median(d) < 0.004 and np.percentile(d, 95) < 0.01, (np.median(d), np.percentile(d, 95))


def test_square_crops_do_not_see_float_noise(astronaut):
    """A face box 1e-4 px off gives the same crop, to the bit (and one 1 px off does not)."""
    from avatar_core.face.crop import square_crop
    centre, side = np.array([255.37, 230.81]), 201.3
    base = crop_with(astronaut, square_crop(centre, side, 384))
    np.testing.assert_array_equal(base, crop_with(astronaut, square_crop(centre + 1e-4, side - 1e-4, 384)))
    assert (base != crop_with(astronaut, square_crop(centre + 1.0, side, 384))).any()


def test_photo_to_avatar_with_mediapipe_models_swapped_in():
    """``bench face --recon-only``'s second path: inside ``mediapipe_face_path`` the portrait
    pipeline runs mediapipe's detection, mesh and segmentation (ours are not called), and a
    reconstruction from it lands within a fraction of a dB of ours; outside it, ours again."""
    pytest.importorskip("mediapipe", reason="the parity tests need mediapipe 0.10.21 (Python 3.11 only)")
    from avatar_core.eval import bench_face
    from avatar_core.face import _models, process_portrait
    from avatar_core.face import detect as detect_mod
    photo = shared_data("portraits", "obama.jpg")
    ours = process_portrait(photo)
    calls = []
    real_get = _models.get
    with bench_face.mediapipe_face_path():
        _models.get = lambda *a, **k: calls.append(a) or real_get(*a, **k)
        try:
            theirs = process_portrait(photo)
        finally:
            _models.get = real_get
    assert calls == []
    assert detect_mod._run.__name__ == "_run"
    d = np.linalg.norm(ours.landmarks[:, :2] - theirs.landmarks[:, :2], axis=1)
    assert 0 < np.median(d) < 0.05  # the same detection box, the same crops
    assert ((ours.alpha > 0.5) == (theirs.alpha > 0.5)).mean() > 0.97
    res = bench_face.recon([photo], quality="test", device="cpu")
    row = res["photos"]["obama.jpg"]
    assert abs(row["psnr_diff"]) < 1.5 and row["ours"]["psnr"] > 15, row


def test_cpu_workers_count_this_process_own_load_as_its_own(monkeypatch):
    """The batch split reads the 1-minute load average less this process's own CPU use over
    that minute: a minute of our own work is not another program keeping the cores busy."""
    import time

    from avatar_core.face import graph
    clock = {"wall": 1000.0, "cpu": 0.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["wall"])
    monkeypatch.setattr(time, "process_time", lambda: clock["cpu"])
    monkeypatch.setattr(graph, "_own_samples", [])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.delenv("HEADSPLAT_FACE_WORKERS", raising=False)
    load = {"now": 1.6}
    monkeypatch.setattr(os, "getloadavg", lambda: (load["now"], 0.0, 0.0))
    assert graph._own_load() == 1.0                       # no history yet: one thread of ours
    clock["wall"], clock["cpu"] = 1030.0, 45.0            # 1.5 cores of our own for 30 s
    assert graph._own_load() == pytest.approx(1.5)
    assert graph.cpu_workers() == 2                       # load 1.6, 1.5 of it ours: both cores idle
    load["now"] = 2.6                                     # another program keeps one core busy
    assert graph.cpu_workers() == 1
    clock["wall"], clock["cpu"] = 1100.0, 45.0            # idle for the last 70 s (the window: a minute or more)
    assert graph._own_load() == 0.0
