"""Self-reenactment: measuring an avatar driven by the rest of the clip it was made from
(``python -m avatar_core eval selfreenact``, ``avatar_core.cli.eval_selfreenact``).

For each clip (``evaluate_clip``): the frames are cropped like the source photo would be (``track_frames`` crops
every frame with the first face frame's head crop), an avatar is reconstructed from the
source frame (frame 0, or the first frame with a face), the clip is tracked, and each frame is
rendered through the avatar's fitted source camera with the tracked head motion since the
source frame (a turn about the neck joint plus a shift, see ``motion.drive.drive_params``); by default
(``--expression relative``) expressions and jaw/eye rotations are also applied as changes
from the source frame's tracked values, on top of the avatar's own source expression, so the
source frame renders as reconstructed.

Every frame is compared with the real frame on the matted head: the real crop is matted the
way the source photo is (``portrait_matte``) and composited over the render background. Where
the crop runs past the video's frame, nothing is seen: the render too is the background there
(``photo_region``; the avatar's body goes on past its photo's edge).
Metrics per frame, for the avatar and for the static baseline (the matted source frame
repeated): PSNR, SSIM and LPIPS-alex over the whole crop; PSNR inside the real frame's matte;
AKD, the mean distance between MediaPipe's 478 landmarks found on the image and on the real
frame (pixels at ``--size``); PSNR inside the mouth box (the real frame's lip landmarks,
padded by a quarter of the box). Clip means leave the source frame out (the baseline is
that frame itself).

``write_reports`` writes ``report.md``, ``summary.json``, ``per_frame.csv`` (all clips), and per
clip ``<clip>/metrics.png`` (each metric per frame, avatar vs baseline), ``<clip>/strip.png``
(real | render | error for a few frames), ``<clip>/result.json`` (the clip's numbers; with
``--reuse`` a later run with the same settings takes them instead of recomputing, so a long
run can be resumed or clips evaluated elsewhere merged into one report) and, with
``--keep-avatars``, ``<clip>/avatar.safetensors``. The report files are rewritten after every clip, so a long run can be read
while it goes; a clip that cannot be evaluated (unreadable, empty, no face) is reported and
skipped, and the exit status is 1 if any clip failed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from avatar_core.eval.report import EvalError

log = logging.getLogger(__name__)

METRICS = ("psnr", "ssim", "lpips", "head_psnr", "akd", "mouth_psnr")
BETTER = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "head_psnr": "higher", "akd": "lower",
          "mouth_psnr": "higher"}
LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "lpips": "LPIPS", "head_psnr": "head PSNR dB", "akd": "AKD px",
          "mouth_psnr": "mouth PSNR dB"}
METHODS = ("avatar", "baseline")
BACKGROUND = 1.0   # the reconstructor's background (white)


def clip_names(videos) -> List[str]:
    """File stems, made unique with the parent folder's name (then a counter) where they clash."""
    stems = [Path(v).stem for v in videos]
    names = []
    for v, s in zip(videos, stems):
        n = s if stems.count(s) == 1 else f"{Path(v).parent.name}_{s}"
        k, base = 2, n
        while n in names:
            n, k = f"{base}_{k}", k + 1
        names.append(n)
    return names


# ----------------------------------------------------------------------------- one clip
@dataclasses.dataclass
class ClipResult:
    """name, video; per-frame metric arrays per[method][metric] [T]; means[method][metric];
    valid [T] (the real frame had a face); source frame; warnings; timings (s); error (skipped)."""

    name: str
    video: str
    frames: int = 0
    source: int = 0
    per: Dict[str, Dict[str, np.ndarray]] = dataclasses.field(default_factory=dict)
    means: Dict[str, Dict[str, float]] = dataclasses.field(default_factory=dict)
    valid: Optional[np.ndarray] = None
    render_landmarks_missing: int = 0
    track_error_px: float = float("nan")
    motion_reference: int = 0
    warnings: List[str] = dataclasses.field(default_factory=list)
    timings: Dict[str, float] = dataclasses.field(default_factory=dict)
    recon: Dict = dataclasses.field(default_factory=dict)
    error: Optional[str] = None
    reused: bool = False          # taken from an earlier run's result.json (--reuse)
    transfer: Dict = dataclasses.field(default_factory=dict)   # eval.transfer figures


RESULT_KEY = ("quality", "size", "frames", "lod", "head", "track_steps", "track_smooth", "expression", "background")


def save_result(clip_dir: Path, res: "ClipResult", key: Dict) -> None:
    """The clip's result as <clip>/result.json (settings key, means, per-frame values)."""
    from avatar_core.eval.report import write_json
    d = dataclasses.asdict(res)
    d["valid"] = None if res.valid is None else [bool(v) for v in res.valid]
    write_json(clip_dir / "result.json", {"key": key, "result": d})


def load_result(clip_dir: Path, key: Dict) -> Optional["ClipResult"]:
    """A result saved by ``save_result`` with the same settings key, else None."""
    import json
    path = clip_dir / "result.json"
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if d.get("key") != json.loads(json.dumps(key)):
            return None
        r = d["result"]

        def arr(v):
            return np.array([np.nan if x is None else x for x in v], np.float64)
        r["per"] = {m: {k: arr(v) for k, v in per.items()} for m, per in r["per"].items()}
        r["means"] = {m: {k: (np.nan if v is None else v) for k, v in mm.items()} for m, mm in r["means"].items()}
        r["valid"] = np.array(r["valid"], bool)
        return ClipResult(**r)
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s (%s)", path, exc)
        return None


def evaluate_clip(video, name: str, clip_dir: Path, cfg, head, lpips_net, size: int = 256,
                  max_frames: Optional[int] = None, lod: Optional[int] = None, device: str = "cpu",
                  track_steps: int = 150, track_smooth: float = 5.0, expression: str = "relative",
                  strip_frames: int = 4, reuse: bool = False, keep_avatar: bool = True,
                  progress=None) -> ClipResult:
    """Evaluate one clip (see the module docstring); writes the clip's plot and strip, and its
    avatar (deleted at the end unless ``keep_avatar``)."""
    from avatar_core.camera import Camera
    from avatar_core.eval.report import plot_series, write_png
    from avatar_core.fit.track import read_video, track_frames
    from avatar_core.motion.drive import drive_params, fit_limit, motion_reference

    say = progress or (lambda m: None)
    timings: Dict[str, float] = {}
    t_start = time.perf_counter()
    frames, fps = read_video(video, max_frames)
    T = len(frames)
    if T < 2:
        raise EvalError(f"The video {str(video)!r} has only {T} frame; self-reenactment needs a source frame "
                        "and at least one more.")
    say(f"tracking {T} frames")
    t0 = time.perf_counter()
    track = track_frames(frames, fps, head, size=cfg.crop_size, steps=track_steps, smooth=track_smooth,
                         source=repr(str(video)))
    timings["track"] = time.perf_counter() - t0
    warnings = list(track.warnings)
    src = int(np.argmax(track.valid)) if track.valid.any() else 0
    if src != 0:
        warnings.append(f"frame 0 has no face; the avatar is reconstructed from frame {src}.")

    clip_dir.mkdir(exist_ok=True)
    avatar_path = clip_dir / "avatar.safetensors"
    t0 = time.perf_counter()
    if reuse and avatar_path.is_file():
        from avatar_core.io import load_avatar
        say("loading the avatar of an earlier run")
        avatar = load_avatar(avatar_path)
        recon_info = {k: avatar.info.get(k) for k in ("quality", "psnr_masked_source") if k in avatar.info}
        recon_info["reused"] = True
    else:
        from avatar_core.recon.pipeline import reconstruct
        say(f"reconstructing from frame {src} ({cfg.name})")
        avatar, report = reconstruct(frames[src], avatar_path, head=head, quality=cfg, device=device)
        warnings.extend(report.warnings)
        recon_info = {k: v for k, v in report.as_dict().items() if k in (
            "quality", "device", "psnr_masked_source", "ssim_masked_source", "landmark_error_px", "num_gaussians")}
        drift = float(np.abs(report.source_image - track.frames[src] / 255.0).mean())
        if drift > 0.02:
            warnings.append(f"the avatar's source crop differs from the tracked crop (mean |diff| {drift:.3f}); "
                            "the comparison is misaligned.")
    timings["reconstruct"] = time.perf_counter() - t0

    say("rendering")
    t0 = time.perf_counter()
    ref = motion_reference(track, src)
    if ref != src:
        err = track.fit.errors_px
        warnings.append(f"the tracker's fit of frame {src} is off (median landmark error {err[src]:.1f} px, clip "
                        f"median {np.nanmedian(err):.1f} px); motion is taken relative to frame {ref} instead, "
                        f"as if the head had not moved between them.")
    bad = np.nonzero(np.asarray(track.fit.errors_px) > fit_limit(track))[0]
    if len(bad):
        warnings.append(f"the tracker fits {len(bad)} of {T} frames loosely (landmark error over "
                        f"{fit_limit(track):.1f} px: frames {_frame_list(bad)}); the avatar is driven wrongly there.")
    params, viewmats = drive_params(track, avatar, head, ref, expression)
    cams = avatar.source_camera(size)
    cams = Camera(cams.K.expand(len(viewmats), 3, 3), viewmats, cams.width, cams.height)
    renders = render_frames(avatar, params, size, lod=lod, device=device, cameras=cams)
    # where the crop runs past the video's frame neither the real frame nor the avatar is seen:
    # both are the background there (the avatar's body goes on past the photo's edge)
    seen = photo_region(track, size)[..., None]
    renders = renders * seen + BACKGROUND * (1.0 - seen)
    timings["render"] = time.perf_counter() - t0

    say("measuring")
    t0 = time.perf_counter()
    real, alpha = matted_frames(track, size)
    baseline = np.broadcast_to(real[src], real.shape)
    per, extra = measure(real, alpha, {"avatar": renders, "baseline": baseline}, lpips_net,
                         tracked_landmarks=track.landmarks * (size / cfg.crop_size))
    from avatar_core.eval.transfer import transfer_figures
    transfer = transfer_figures(extra["real_landmarks"], extra["avatar_landmarks"], src)
    timings["metrics"] = time.perf_counter() - t0
    missing = int(np.isnan(per["avatar"]["akd"]).sum() - np.isnan(extra["real_landmarks"][:, 0, 0]).sum())
    if missing > 0:
        warnings.append(f"MediaPipe found no face on {missing} of {T} avatar renders (AKD left out there).")

    # the source frame is left out of the means (the baseline is that frame itself)
    driven = np.arange(T) != src
    means = {m: {k: _nanmean(v[driven]) for k, v in per[m].items()} for m in per}
    res = ClipResult(name=name, video=str(video), frames=T, source=src, per=per, means=means,
                     valid=track.valid.copy(), render_landmarks_missing=max(missing, 0), warnings=warnings,
                     track_error_px=float(np.nanmedian(track.fit.errors_px)), motion_reference=ref,
                     timings=timings, recon=recon_info, transfer=transfer)
    x = np.arange(T)
    plot_series(clip_dir / "metrics.png", x, {LABELS[k]: {m: np.where(driven, per[m][k], np.nan) for m in METHODS}
                                              for k in METRICS},
                title=f"{name}: avatar vs static source frame (frame {src}, not plotted)", better={LABELS[k]: v for k, v in BETTER.items()})
    write_png(clip_dir / "strip.png", strip(real, alpha, renders, per, extra, src, strip_frames))
    if not keep_avatar:
        avatar_path.unlink(missing_ok=True)
    timings["total"] = time.perf_counter() - t_start
    return res


def _nanmean(v) -> float:
    from avatar_core.eval.report import nanmean
    return nanmean(v)


def _frame_list(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx[:8])) + (" ..." if len(idx) > 8 else "")


def render_frames(avatar, params: Dict, size: int, lod: Optional[int] = None, device: str = "cpu",
                  batch: int = 4, cameras=None) -> np.ndarray:
    """Render the avatar for every frame of ``params`` through ``cameras`` (default: the source
    camera at ``size``): RGB [T, size, size, 3] float32 in [0, 1] over the white background."""
    import torch

    from avatar_core.motion.playback import load_refiner
    from avatar_core.render import render

    avatar = avatar.to(device)
    lods = avatar.available_lods()
    lod = lods[-1] if lod is None else lod
    if lod not in lods:
        raise EvalError(f"--lod {lod} is not in the avatar; it has LODs {lods}.")
    cam = (cameras if cameras is not None else avatar.source_camera(size)).to(device=device)
    refiner = load_refiner(avatar, device)
    index = avatar.select(lod)
    T = params["expression"].shape[0]
    out = np.zeros((T, cam.height, cam.width, 3), np.float32)
    for s in range(0, T, batch):
        e = min(T, s + batch)
        with torch.no_grad():
            frame = avatar.animate(index=index, **{k: v[s:e].to(device) for k, v in params.items()})
            c = cam if cam.batch == 1 else cam.__class__(cam.K[s:e], cam.viewmat[s:e], cam.width, cam.height)
            r = render(frame, c, background=BACKGROUND)
            img = refiner(r.image) if refiner is not None else r.image[..., :3]
            out[s:e] = img.clamp(0, 1).float().cpu().numpy()
    return out


# ----------------------------------------------------------------------------- real frames
def photo_region(track, size: int) -> np.ndarray:
    """[size, size] float32 in [0, 1]: the share of each pixel of the crop that lies inside the
    video's frame (1 everywhere when the crop lies inside it)."""
    import cv2

    inside = getattr(track.portrait, "inside", None)
    if inside is None:
        return np.ones((size, size), np.float32)
    m = np.asarray(inside, np.float32)
    return m if m.shape[0] == size else cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA)


def matted_frames(track, size: int):
    """The tracked crops matted the way ``process_portrait`` mattes the source photo
    (``portrait_matte`` at the crop size, times the crop's inside-the-photo mask; landmarks of
    the nearest frame with a face where a frame has none; the first face frame keeps the
    portrait's own matte), resized to ``size`` and composited over the white background:
    (images [T, size, size, 3] float32, alpha [T, size, size] float32)."""
    import cv2

    from avatar_core.face.matte import portrait_matte

    crops = track.frames
    T, S = crops.shape[0], crops.shape[1]
    valid = np.asarray(track.valid, bool)
    vidx = np.nonzero(valid)[0]
    portrait = track.portrait
    inside = getattr(portrait, "inside", None)
    inside = np.ones((S, S), np.float32) if inside is None else np.asarray(inside, np.float32)
    first = int(vidx[0]) if len(vidx) else -1

    def down(x):
        return x if S == size else cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA)

    images = np.empty((T, size, size, 3), np.float32)
    alpha = np.empty((T, size, size), np.float32)
    for t in range(T):
        img = crops[t].astype(np.float32) / 255.0
        if t == first and getattr(portrait, "alpha", None) is not None and portrait.alpha.shape == (S, S):
            a = np.asarray(portrait.alpha, np.float32)
        else:
            near = vidx[np.argmin(np.abs(vidx - t))] if len(vidx) else None
            a = portrait_matte(img, None if near is None else track.landmarks[near]) * inside
        img, a = down(img), np.clip(down(a.astype(np.float32)), 0.0, 1.0)
        images[t] = img * a[..., None] + BACKGROUND * (1.0 - a[..., None])
        alpha[t] = a
    return images, alpha


# ----------------------------------------------------------------------------- metrics
def measure(real: np.ndarray, alpha: np.ndarray, methods: Dict[str, np.ndarray], lpips_net,
            tracked_landmarks: Optional[np.ndarray] = None, batch: int = 8):
    """Per-frame metrics of each method's images against the real ones.

    Args:
        real: [T, H, W, 3] float in [0, 1] (matted); alpha: [T, H, W] the real frames' matte.
        methods: name -> images [T, H, W, 3] (a baseline may be a broadcast view).
        lpips_net: an ``LPIPS`` module.
        tracked_landmarks: [T, 478, 3] in these pixels, used for the mouth box where MediaPipe
            finds no face on the matted real frame.
    Returns:
        (per: {method: {metric: [T]}}, extra: {"real_landmarks": [T, 478, 3], "<method>_landmarks": ...,
        "mouth_boxes": [T] of (x0, y0, x1, y1) or None}).
    """
    import torch

    from avatar_core.eval.face_metrics import akd, box_psnr, landmark_sequence, mouth_box
    from avatar_core.metrics import psnr, ssim

    T, H, W = real.shape[:3]
    real_l = landmark_sequence(_u8(real))
    boxes = []
    for t in range(T):
        lm = real_l[t] if np.isfinite(real_l[t, 0, 0]) else (
            tracked_landmarks[t] if tracked_landmarks is not None and np.isfinite(tracked_landmarks[t, 0, 0]) else None)
        boxes.append(mouth_box(lm, (W, H)))
    per: Dict[str, Dict[str, np.ndarray]] = {}
    extra = {"real_landmarks": real_l, "mouth_boxes": boxes}
    mask = torch.as_tensor(alpha > 0.5)
    for name, imgs in methods.items():
        m = {k: np.full(T, np.nan) for k in METRICS}
        constant = imgs.strides[0] == 0 if isinstance(imgs, np.ndarray) else False
        if constant:
            lm1 = landmark_sequence(_u8(imgs[:1]))
            lms = np.broadcast_to(lm1, (T,) + lm1.shape[1:])
        else:
            lms = landmark_sequence(_u8(imgs))
        extra[f"{name}_landmarks"] = lms
        for s in range(0, T, batch):
            e = min(T, s + batch)
            a = torch.as_tensor(np.ascontiguousarray(imgs[s:e]))
            b = torch.as_tensor(real[s:e])
            m["psnr"][s:e] = psnr(a, b).numpy()
            m["ssim"][s:e] = ssim(a, b).numpy()
            m["head_psnr"][s:e] = psnr(a, b, mask=mask[s:e]).numpy()
            m["lpips"][s:e] = lpips_net(a, b).numpy()
        for t in range(T):
            ok = np.isfinite(real_l[t, 0, 0])
            m["akd"][t] = akd(lms[t], real_l[t]) if ok else np.nan
            m["mouth_psnr"][t] = box_psnr(imgs[t], real[t], boxes[t])
        per[name] = m
    return per, extra


def _u8(imgs) -> np.ndarray:
    return (np.clip(np.asarray(imgs), 0, 1) * 255 + 0.5).astype(np.uint8)


def strip(real, alpha, renders, per, extra, src: int, n: int = 4) -> np.ndarray:
    """real | render | error rows for ``n`` frames: evenly spaced after the source frame, one
    of them where the source frame differs most in the mouth box (the widest mouth)."""
    import cv2

    from avatar_core.eval.report import error_image, image_strip

    T = real.shape[0]
    cand = [t for t in range(T) if t != src] or [src]
    n = max(1, min(n, len(cand)))
    picks = [cand[int(round(i * (len(cand) - 1) / max(n - 1, 1)))] for i in range(n)]
    base_mouth = per["baseline"]["mouth_psnr"]
    if np.isfinite(base_mouth).any():
        worst = int(np.nanargmin(np.where(np.arange(T) == src, np.nan, base_mouth)))
        if worst not in picks:
            picks[len(picks) // 2] = worst
    picks = sorted(set(picks))
    rows, labels = [], []
    for t in picks:
        err = error_image(renders[t], real[t], alpha[t])
        box = extra["mouth_boxes"][t]
        if box is not None:
            err = np.ascontiguousarray(err)
            cv2.rectangle(err, (box[0], box[1]), (box[2] - 1, box[3] - 1), (0, 255, 255), 1)
        rows.append([real[t], renders[t], err])
        labels.append(f"frame {t}")
    return image_strip(rows, ("real (matted)", "avatar", "|error|, mouth box"), labels)


# ----------------------------------------------------------------------------- reports
def write_reports(out: Path, results: List[ClipResult], settings: Dict) -> None:
    """report.md, summary.json and per_frame.csv for the clips so far."""
    from avatar_core.eval.report import md_table, nanmean, write_csv, write_json, write_text

    ok = [r for r in results if r.error is None]
    rows = []
    for r in ok:
        for t in range(r.frames):
            row = {"clip": r.name, "frame": t, "source": int(t == r.source), "face": int(bool(r.valid[t]))}
            for k in METRICS:
                for m in METHODS:
                    row[f"{k}_{m}"] = r.per[m][k][t]
            rows.append(row)
    cols = ["clip", "frame", "source", "face"] + [f"{k}_{m}" for k in METRICS for m in METHODS]
    write_csv(out / "per_frame.csv", rows, cols)

    overall = {m: {k: nanmean([r.means[m][k] for r in ok]) for k in METRICS} for m in METHODS}
    wins = {k: sum(1 for r in ok if _better(k, r.means["avatar"][k], r.means["baseline"][k])) for k in METRICS}
    summary = {
        "settings": settings,
        "clips": {r.name: ({"video": r.video, "error": r.error} if r.error else {
            "video": r.video, "frames": r.frames, "source_frame": r.source,
            "frames_without_face": [int(t) for t in np.nonzero(~r.valid)[0]],
            "avatar": r.means["avatar"], "baseline": r.means["baseline"],
            "render_landmarks_missing": r.render_landmarks_missing, "warnings": r.warnings,
            "track_median_landmark_error_px": r.track_error_px, "motion_reference_frame": r.motion_reference,
            "reconstruction": r.recon, "expression_transfer": r.transfer,
            "timings_s": {k: round(v, 1) for k, v in r.timings.items()}})
            for r in results},
        "overall_mean_of_clips": overall,
        "clips_where_avatar_beats_baseline": {k: f"{wins[k]}/{len(ok)}" for k in METRICS},
    }
    write_json(out / "summary.json", summary)

    L = []
    L.append("# Self-reenactment report\n")
    if settings.get("command"):
        L.append(f"Command: `{settings['command']}`\n")
    reused = sum(1 for r in ok if r.reused)
    L.append(f"Reconstruction quality `{settings['quality']}`, evaluated at {settings['size']} px, "
             f"tracker {settings['track_steps']} steps (smoothness {settings['track_smooth']:g}), expressions "
             f"`{settings['expression']}`, device {settings['device']} ({settings['machine']})"
             + (f"; {reused} of {len(ok)} clips were evaluated by an earlier run (--reuse; their reconstruction "
                "device and times are in summary.json)" if reused else "") + ".\n")
    L.append("Each clip: avatar reconstructed from the source frame (frame 0), driven by the tracked clip, "
             "rendered through the fitted source camera; compared with the matted real frame. Baseline: the "
             "matted source frame, unchanged. PSNR/SSIM/LPIPS over the whole crop, head PSNR inside the real "
             "matte, AKD over MediaPipe's 478 landmarks (px at this size), mouth PSNR inside the padded lip box. Means are over the driven frames (the source "
             "frame left out), then over clips.\n")
    header = ["clip", "frames"] + [f"{LABELS[k]} {m[0].upper()}" for k in METRICS for m in METHODS]
    table = []
    for r in ok:
        table.append([r.name, r.frames] + [_fmt_metric(k, r.means[m][k]) for k in METRICS for m in METHODS])
    if ok:
        table.append(["**mean**", sum(r.frames for r in ok)]
                     + [f"**{_fmt_metric(k, overall[m][k])}**" for k in METRICS for m in METHODS])
    L.append("A = avatar, B = baseline (static source frame).\n")
    L.append(md_table(header, table))
    L.append("\nClips where the avatar beats the baseline: "
             + ", ".join(f"{LABELS[k]} {wins[k]}/{len(ok)}" for k in METRICS) + ".\n")
    measures = sorted({k for r in ok for k in r.transfer})
    if measures:
        L.append("\n## Expression transfer\n")
        L.append("Landmark measures' displacements from the source frame, avatar against real (`eval.transfer`): "
                 "Pearson r / amplitude ratio; targets r >= 0.8, amplitude 0.7-1.3; a measure the real face "
                 "hardly moves is shown in brackets and not judged.\n")
        rows = []
        for r in ok:
            cells = []
            for k in measures:
                f = r.transfer.get(k) or {}
                if f.get("r") is None or f.get("amplitude") is None:
                    cells.append("–")
                    continue
                c = f"{f['r']:.2f} / {f['amplitude']:.2f}"
                cells.append(c if f.get("judged") else f"({c})")
            rows.append([r.name] + cells)
        L.append(md_table(["clip"] + measures, rows))
    notes = []
    for r in results:
        if r.error:
            notes.append(f"- **{r.name}: not evaluated** — {r.error}")
            continue
        for w in r.warnings:
            notes.append(f"- {r.name}: {w}")
    if notes:
        L.append("\n## Warnings\n")
        L.append("\n".join(notes) + "\n")
    L.append("\n## Per clip\n")
    for r in ok:
        L.append(f"### {r.name}\n")
        L.append(f"`{r.video}`, {r.frames} frames, source frame {r.source}, motion relative to frame "
                 f"{r.motion_reference}, tracker's median landmark error {r.track_error_px:.2f} px; times: "
                 + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()) + ".\n")
        if r.recon:
            L.append(f"Reconstruction: {r.recon}.\n")
        L.append(f"![metrics]({r.name}/metrics.png)\n\n![strip]({r.name}/strip.png)\n")
    write_text(out / "report.md", "\n".join(L))


def _fmt_metric(k: str, v) -> str:
    from avatar_core.eval.report import fmt
    return fmt(v, 3 if k in ("ssim", "lpips") else 2)


def _better(k: str, a: float, b: float) -> bool:
    if not (np.isfinite(a) and np.isfinite(b)):
        return False
    return a < b if BETTER[k] == "lower" else a > b
