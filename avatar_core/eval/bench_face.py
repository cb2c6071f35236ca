"""What ``python -m avatar_core bench face`` measures (``avatar_core/cli/bench_face.py`` runs it).

``parity``: our landmarks (against mediapipe's face_mesh with refine_landmarks=True, in
pixels of the 512 head crop), detection boxes (IoU of each BlazeFace model's best box) and
mattes (IoU of the selfie segmentations at 0.5) on a list of images. ``tracking``: clips
cropped like ``track`` crops them, mediapipe's video mode against ``FaceTracker.track_batch``
(median landmark distance per clip), and the CPU speed of both on one clip in alternating
rounds. ``throughput``: batched landmarks on a device. ``recon``: each photo reconstructed
twice, with our face models and with mediapipe's in their place (``mediapipe_face_path``),
everything else the same code. ``Mediapipe`` wraps the reference (mediapipe 0.10.21, Python 3.11
only).
"""

from __future__ import annotations

import contextlib
import os
import time

import json
from pathlib import Path

import numpy as np


def video_frames(path, step=1, max_frames=None):
    import cv2
    cap = cv2.VideoCapture(str(path))
    out, i = [], 0
    while True:
        ok, bgr = cap.read()
        if not ok or (max_frames and len(out) >= max_frames):
            break
        if i % step == 0:
            out.append(np.ascontiguousarray(bgr[..., ::-1]))
        i += 1
    cap.release()
    return out


def _iou_box(a, b) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = float(np.prod(np.clip(hi - lo, 0, None)))
    union = float(np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)
    return inter / union if union > 0 else 0.0


def _iou_mask(a, b) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class Mediapipe:
    def __init__(self):
        os.environ.setdefault("GLOG_minloglevel", "2")
        from mediapipe.python import solutions
        self.s = solutions
        self.mesh = solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                                 min_detection_confidence=0.5)
        self.det = [solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=0.5)
                    for m in (0, 1)]
        self.selfie = [solutions.selfie_segmentation.SelfieSegmentation(model_selection=m) for m in (0, 1)]

    def landmarks(self, img):
        h, w = img.shape[:2]
        r = self.mesh.process(img)
        if not r.multi_face_landmarks:
            return None
        return np.array([[p.x * w, p.y * h, p.z * w] for p in r.multi_face_landmarks[0].landmark])

    def box(self, img, model):
        h, w = img.shape[:2]
        r = self.det[model].process(img)
        if not r.detections:
            return None
        d = max(r.detections, key=lambda d: d.score[0])
        bb = d.location_data.relative_bounding_box
        return np.array([bb.xmin, bb.ymin, bb.xmin + bb.width, bb.ymin + bb.height]) * np.array([w, h, w, h])

    def matte(self, img, model):
        return np.array(self.selfie[model].process(img).segmentation_mask) > 0.5

    def video_tracker(self):
        return self.s.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5)


@contextlib.contextmanager
def mediapipe_face_path():
    """Within the block, ``avatar_core.face`` runs mediapipe's models (detection, face mesh,
    selfie segmentation) where it runs ours; the code around them (tiling, crops, matte
    refinement) is unchanged, so that a reconstruction differs only by the face models."""
    from mediapipe.python import solutions

    from avatar_core.face import detect, landmarks, matte
    os.environ.setdefault("GLOG_minloglevel", "2")
    detectors = {m: solutions.face_detection.FaceDetection(model_selection=m, min_detection_confidence=detect.MIN_CONFIDENCE)
                 for m in (0, 1)}
    meshes, selfies = {}, {}

    def to_u8(image):
        return np.ascontiguousarray(image[0].permute(1, 2, 0).cpu().numpy().astype(np.uint8))

    def run_detection(image, model, x0=0, y0=0):
        u8 = to_u8(image)
        h, w = u8.shape[:2]
        found = detectors[model].process(u8).detections or []
        out = []
        for d in found:
            bb = d.location_data.relative_bounding_box
            box = np.array([bb.xmin * w + x0, bb.ymin * h + y0, (bb.xmin + bb.width) * w + x0,
                            (bb.ymin + bb.height) * h + y0])
            kps = np.array([[k.x * w + x0, k.y * h + y0] for k in d.location_data.relative_keypoints])
            out.append(detect.FaceDetection(box=box, score=float(d.score[0]), keypoints=kps))
        return out

    def static_landmarks(crop_u8, max_faces, min_detection, min_presence=landmarks.MIN_PRESENCE):
        key = (max_faces, min_detection)
        if key not in meshes:
            meshes[key] = solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=max_faces,
                                                       refine_landmarks=True, min_detection_confidence=min_detection)
        h, w = crop_u8.shape[:2]
        r = meshes[key].process(np.ascontiguousarray(crop_u8))
        return [np.array([[p.x * w, p.y * h, p.z * w] for p in f.landmark]) for f in (r.multi_face_landmarks or [])]

    def segment_person(rgb, model=matte.SELFIE_MODEL):
        from avatar_core.face import _models
        if model not in selfies:
            selfies[model] = solutions.selfie_segmentation.SelfieSegmentation(model_selection=model)
        mask = selfies[model].process(np.ascontiguousarray(_models.to_u8(rgb))).segmentation_mask
        return np.clip(np.asarray(mask, dtype=np.float32), 0.0, 1.0)

    saved = (detect._run, landmarks._static_landmarks, matte.segment_person)
    detect._run, landmarks._static_landmarks, matte.segment_person = run_detection, static_landmarks, segment_person
    try:
        yield
    finally:
        detect._run, landmarks._static_landmarks, matte.segment_person = saved
        for m in (*detectors.values(), *meshes.values(), *selfies.values()):
            m.close()


def recon(paths, quality: str = "default", device: str = "auto", repeats: int = 1):
    """Each photo reconstructed with our face models and with mediapipe's, ``repeats`` times
    each, alternating: PSNR at the finest LOD (dB, masked, source view) and the fit's median landmark error (% of the face box)
    of both (medians over the repeats, and their spread: the optimisation's thread count, chosen
    by the machine's load, changes its result a little), and their differences."""
    from avatar_core.recon.pipeline import reconstruct
    rows = {}
    for path in paths:
        runs = {"ours": [], "mediapipe": []}
        for _ in range(repeats):
            for name in runs:
                t0 = time.perf_counter()
                with (mediapipe_face_path() if name == "mediapipe" else contextlib.nullcontext()):
                    _, report = reconstruct(str(path), quality=quality, device=device)
                lod = max(report.psnr)  # the finest level the quality builds (2 for fast and default)
                runs[name].append((report.psnr[lod], 100 * report.landmark_error_frac, time.perf_counter() - t0))
        row = {}
        for name, r in runs.items():
            a = np.asarray(r)
            row[name] = {"psnr": round(float(np.median(a[:, 0])), 3), "lod": lod,
                         "landmark_error_pct": round(float(np.median(a[:, 1])), 3),
                         "seconds": round(float(np.median(a[:, 2])), 1),
                         "psnr_spread": round(float(a[:, 0].max() - a[:, 0].min()), 3)}
        row["psnr_diff"] = round(row["ours"]["psnr"] - row["mediapipe"]["psnr"], 3)
        row["landmark_error_diff"] = round(row["ours"]["landmark_error_pct"] - row["mediapipe"]["landmark_error_pct"], 3)
        rows[Path(path).name] = row
        print(Path(path).name, json.dumps(row), flush=True)
    diffs = [r["psnr_diff"] for r in rows.values()]
    return {"quality": quality, "repeats": repeats, "photos": rows, "psnr_diff_min": min(diffs),
            "psnr_diff_max": max(diffs), "within_0.3_db": sum(abs(d) <= 0.3 for d in diffs),
            "landmark_error_no_worse": sum(r["landmark_error_diff"] <= 0.0 for r in rows.values())}


def _ours_landmarks(img):
    from avatar_core.face.landmarks import _static_landmarks
    found = _static_landmarks(img, 1, 0.5)
    return found[0] if found else None


def _ours_box(img, model, device):
    from avatar_core.face import _models
    from avatar_core.face.nets import DETECTORS
    boxes, scores, _ = _models.get("detection", model, device)(
        _models.to_tensor(img, device), 0.5, DETECTORS[model].candidate_score)[0]
    return boxes[int(np.argmax(scores))] if len(boxes) else None


def _ours_matte(img, model, device):
    from avatar_core.face import _models
    return _models.get("selfie", model, device)(_models.to_tensor(img, device))[0].cpu().numpy() > 0.5


def _crop_scale(ref_lms) -> float:
    """Pixels of the 512 head crop per image pixel (avatar_core.face.crop.head_crop)."""
    from avatar_core.face.crop import head_crop
    return head_crop(ref_lms, 512).scale


def _summary(values, kind="px"):
    v = np.asarray(values, dtype=np.float64)
    if not len(v):
        return {"n": 0}
    if kind == "px":
        return {"n": int(len(v)), "median": round(float(np.median(v)), 4), "p95": round(float(np.percentile(v, 95)), 4),
                "max": round(float(v.max()), 4)}
    return {"n": int(len(v)), "min": round(float(v.min()), 4), "mean": round(float(v.mean()), 4)}


def parity(images, mp, device):
    """Per-image comparisons over a list of (name, [H, W, 3] uint8)."""
    dists, misses = [], []
    per_image_median = []
    ious = {"short_range": [], "full_range": []}
    mattes = {"general": [], "landscape": []}
    for name, img in images:
        ref, ours = mp.landmarks(img), _ours_landmarks(img)
        if (ref is None) != (ours is None):
            misses.append(name)
        elif ref is not None:
            d = np.linalg.norm(ours[:, :2] - ref[:, :2], axis=1) * _crop_scale(ref)
            dists.append(d)
            per_image_median.append(float(np.median(d)))
        for m, key in enumerate(ious):
            a, b = mp.box(img, m), _ours_box(img, m, device)
            if (a is None) != (b is None):
                misses.append(f"{name}:{key}")
            elif a is not None:
                ious[key].append(_iou_box(a, b))
        for m, key in enumerate(mattes):
            mattes[key].append(_iou_mask(mp.matte(img, m), _ours_matte(img, m, device)))
    all_d = np.concatenate(dists) if dists else np.zeros(0)
    return {"images": len(images), "landmarks_px_at_512": _summary(all_d),
            "worst_image_median_px": round(max(per_image_median), 4) if per_image_median else None,
            "detection_iou": {k: _summary(v, "iou") for k, v in ious.items()},
            "matte_iou": {k: _summary(v, "iou") for k, v in mattes.items()},
            "found_by_one_only": misses}


def clip_crops(frames, mp):
    """The clip's frames cropped like ``track`` crops them: the 512 head crop of the first face."""
    from avatar_core.face.crop import crop_with, head_crop
    for f in frames:
        ref = mp.landmarks(f) if mp is not None else _ours_landmarks(f)
        if ref is not None:
            t = head_crop(ref, 512)
            return np.stack([crop_with(x, t) for x in frames])
    return None


def tracking(clips, mp, device, speed_clip, repeats: int = 3):
    from avatar_core.face import FaceTracker
    per_clip, speed = {}, None
    for name, frames in clips:
        crops = clip_crops(frames, mp)
        if crops is None:
            per_clip[name] = None
            continue
        timed = name == speed_clip
        if timed:  # warm both up on this clip first (graph set-up, TorchScript's shape profiling)
            with mp.video_tracker() as vt:
                for c in crops:
                    vt.process(c)
            with FaceTracker(device=device) as tr:
                tr.track_batch(crops)
        t_mp, t_ours = [], []
        for _ in range(repeats if timed else 1):   # timed: alternately, so both see the same machine load
            with mp.video_tracker() as vt:
                t0 = time.perf_counter()
                ref = []
                for c in crops:
                    r = vt.process(c)
                    ref.append(np.array([[p.x * 512, p.y * 512] for p in r.multi_face_landmarks[0].landmark])
                               if r.multi_face_landmarks else None)
                t_mp.append(time.perf_counter() - t0)
            with FaceTracker(device=device) as tr:
                t0 = time.perf_counter()
                ours = tr.track_batch(crops)
                t_ours.append(time.perf_counter() - t0)
        d = [np.linalg.norm(o[:, :2] - r, axis=1) for o, r in zip(ours, ref) if r is not None and np.isfinite(o).all()]
        d = np.concatenate(d) if d else np.zeros(0)
        per_clip[name] = {"frames": len(crops), "median_px": round(float(np.median(d)), 4) if len(d) else None,
                          "p95_px": round(float(np.percentile(d, 95)), 4) if len(d) else None,
                          "missing_mp": int(sum(r is None for r in ref)),
                          "missing_ours": int((~np.isfinite(ours[:, 0, 0])).sum())}
        if timed:
            import torch
            from avatar_core.face.graph import cpu_workers
            m_mp, m_ours = float(np.median(t_mp)), float(np.median(t_ours))
            speed = {"clip": name, "frames": len(crops), "mediapipe_s": round(m_mp, 3), "ours_s": round(m_ours, 3),
                     "ratio_mediapipe_over_ours": round(m_mp / m_ours, 3),
                     "rounds": [{"mediapipe_s": round(a, 3), "ours_s": round(b, 3), "ratio": round(a / b, 3)}
                                for a, b in zip(t_mp, t_ours)],
                     "fps_mediapipe": round(len(crops) / m_mp, 1), "fps_ours": round(len(crops) / m_ours, 1),
                     "torch_threads": torch.get_num_threads(), "face_workers": cpu_workers(), "cpus": os.cpu_count(),
                     "load_1min": round(os.getloadavg()[0], 2)}
    medians = [v["median_px"] for v in per_clip.values() if v and v["median_px"] is not None]
    return {"clips": per_clip, "worst_clip_median_px": max(medians) if medians else None}, speed


def throughput(device, batch: int, repeats: int = 20):
    """Batched landmarks: frames/s of the attention mesh (crop + model + decoding) at 192 x 192."""
    import torch

    from avatar_core.face import _models
    mesh = _models.get("mesh", 0, device)
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(batch, 3, 256, 256, generator=g) * 255).to(device)
    rois = torch.tensor([[128.0, 128.0, 200.0, 200.0, 0.1]], device=device).expand(batch, 5)
    res = {}
    for name, dtype in (("fp32", None),):
        for _ in range(3):
            mesh(images, rois)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            mesh(images, rois)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        res[name] = round(batch * repeats / dt, 1)
    return {"device": str(device), "batch": batch, "frames_per_s": res,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}
