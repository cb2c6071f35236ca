"""Novel views: an avatar of a textured head scan's frontal render against the scan at other
yaws (``python -m avatar_core eval novelview``, ``avatar_core.cli.eval_novelview``).

The scan ("Infinite, 3D Head Scan" by Lee Perry-Smith, CC BY 3.0, based on a work at
www.triplegangers.com) is rendered with Blender (Cycles on the CPU, a few samples; the
checkout's ``scripts/render_headscan.py``, ``render_scan``) by a level camera orbiting the head's centre at yaws
-60..60 degrees. An avatar is reconstructed from the frontal (yaw 0) render, and rendered at
every yaw; each view is compared with Blender's inside the scan's mask (the render's alpha):
masked PSNR, SSIM and LPIPS-alex, plus the IoU of the two silhouettes, all inside Blender's
frame (where the crop runs past the render, neither is seen). Baseline: the frontal render
itself at every yaw (what a flat image gives).

Aligning the avatar's cameras with Blender's: the avatar lives in its fitted source camera's
frame, Blender's scan in metres, and the fitted focal length need not be Blender's. The face
landmarks of the frontal crop are lifted to 3-D in both camera frames (the avatar's rendered
depth with its K; Blender's ray-cast depth with Blender's K), and the map between the frames
is fitted as a scale and a shift (p_avatar = k p_blender + t; the axes agree, both cameras
looking at the same picture). The orbit centre (Blender's head centre, on its optical axis at
distance D) maps through it into the avatar's source camera frame, and each view's
camera-frame motion from Blender (V_yaw V_0^-1, a rotation about the vertical axis through
the centre) is applied about that point to the avatar's source camera.

``evaluate_views`` writes ``report.md``, ``summary.json``, ``per_view.csv``, ``metrics.png`` (each
metric per yaw), ``strip.png`` (scan | avatar | error per yaw), ``renders/`` (Blender's views,
reused with ``--reuse``) and ``avatar.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from avatar_core.eval.report import EvalError

log = logging.getLogger(__name__)

GLB = "LeePerrySmith.glb"
CREDIT = ('"Infinite, 3D Head Scan" by Lee Perry-Smith (www.triplegangers.com / ir-ltd.net), licensed under '
          'CC BY 3.0 (https://creativecommons.org/licenses/by/3.0/)')
DEFAULT_YAWS = (-60, -45, -30, -15, 0, 15, 30, 45, 60)
# the Blender scene (see scripts/render_headscan.py): a 70 mm lens on a 36 mm sensor, 0.7 m from the head
LENS_MM, SENSOR_MM, DISTANCE_M, BUST_HEIGHT_M = 70.0, 36.0, 0.7, 0.38
METRICS = ("psnr", "ssim", "lpips", "iou")
LABELS = {"psnr": "masked PSNR dB", "ssim": "masked SSIM", "lpips": "masked LPIPS", "iou": "silhouette IoU"}
BETTER = {"psnr": "higher", "ssim": "higher", "lpips": "lower", "iou": "higher"}
BACKGROUND = 1.0
TARGET_PSNR_30 = 20.0


# ----------------------------------------------------------------------------- Blender views
@dataclasses.dataclass
class ScanViews:
    """Blender's renders of the scan. rgba [V, H, W, 4] float32 (straight alpha); yaws [V] deg;
    K [3, 3] OpenCV pixels; viewmats [V, 4, 4] world -> OpenCV camera (metres); centre [3] the
    orbit centre (world); distance (m); depth_front [G, G] camera z of the yaw-0 view on a grid
    of pixel centres (NaN off the scan); meta (material, Blender version, ...); files [V]."""

    rgba: np.ndarray
    yaws: np.ndarray
    K: np.ndarray
    viewmats: np.ndarray
    centre: np.ndarray
    distance: float
    depth_front: np.ndarray
    meta: Dict
    files: List[Path]

    def index(self, yaw: float) -> int:
        i = int(np.argmin(np.abs(self.yaws - yaw)))
        if abs(self.yaws[i] - yaw) > 1e-3:
            raise EvalError(f"No view at yaw {yaw} was rendered.")
        return i


def render_scan(scan, out_dir, yaws: Sequence[float], renderer, size: int = 384, samples: int = 32,
                distance: float = DISTANCE_M, lens_mm: float = LENS_MM, depth_grid: Optional[int] = None,
                timeout: float = 1800.0, reuse: bool = False, threads: Optional[int] = None) -> ScanViews:
    """Render the scan from ``yaws`` with Blender in a subprocess: ``renderer`` is the script that
    does it (the checkout's ``scripts/render_headscan.py``), run as ``python RENDERER JOB.json``."""
    scan = Path(scan)
    glb = scan / GLB
    if not glb.is_file():
        raise EvalError(f"The head scan {str(glb)!r} does not exist; pass --scan with the folder holding {GLB}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = {"glb": str(glb.resolve()), "maps_dir": str(scan.resolve()), "out_dir": str(out.resolve()),
           "yaws": [float(y) for y in yaws], "size": int(size), "samples": int(samples), "lens_mm": float(lens_mm),
           "sensor_mm": SENSOR_MM, "distance_m": float(distance), "bust_height_m": BUST_HEIGHT_M,
           "depth_grid": int(depth_grid or min(size, 192)), "threads": threads}
    job_file = out / "job.json"
    if not (reuse and job_file.is_file() and _same_scene(json.loads(job_file.read_text()), job)
            and (out / "views.json").is_file()):
        _run_blender(job, out, timeout, Path(renderer))
    return load_views(out)


def _same_scene(a: Dict, b: Dict) -> bool:
    """Two render jobs give the same images (paths and thread counts aside)."""
    skip = ("glb", "maps_dir", "out_dir", "threads")
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def _run_blender(job: Dict, out: Path, timeout: float, renderer: Path) -> None:
    try:
        import importlib.util
        if importlib.util.find_spec("bpy") is None:
            raise EvalError("The novel-view evaluation renders the scan with Blender's Python module, but `bpy` "
                            "is not installed in this Python (pip install bpy==5.0.1).")
    except ValueError:
        pass
    (out / "views.json").unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="headsplat-blender-") as tmp:
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        env = dict(os.environ)
        env.setdefault("BLENDER_USER_RESOURCES", str(Path(tmp) / "blender"))
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        cmd = [sys.executable, str(renderer), str(job_path)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise EvalError(f"Blender did not finish rendering the scan within {timeout:.0f} s; lower --samples or "
                            "--render-size, or raise --blender-timeout.") from None
    if proc.returncode != 0 or not (out / "views.json").is_file():
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-6:])
        raise EvalError(f"Blender failed to render the scan (exit {proc.returncode}): {tail}")
    (out / "job.json").write_text(json.dumps(job))


def load_views(out) -> ScanViews:
    import cv2

    out = Path(out)
    meta = json.loads((out / "views.json").read_text())
    rgba, files = [], []
    for v in meta["views"]:
        path = out / v["file"]
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            raise EvalError(f"Blender's render {str(path)!r} is missing or not an RGBA image.")
        rgba.append(np.concatenate([img[..., 2::-1], img[..., 3:]], -1).astype(np.float32) / 255.0)
        files.append(path)
    return ScanViews(rgba=np.stack(rgba), yaws=np.array([v["yaw_deg"] for v in meta["views"]], np.float64),
                     K=np.asarray(meta["views"][0]["K"], np.float64),
                     viewmats=np.stack([np.asarray(v["viewmat"], np.float64) for v in meta["views"]]),
                     centre=np.asarray(meta["orbit_centre"], np.float64), distance=float(meta["distance_m"]),
                     depth_front=np.load(out / "depth_front.npy"), meta=meta, files=files)


# ----------------------------------------------------------------------------- alignment
def sample_grid(grid: np.ndarray, uv: np.ndarray, image_size: int) -> np.ndarray:
    """Nearest samples of a [G, G] grid laid over pixel centres of an image_size square at pixel
    coordinates uv [N, 2] (OpenCV: integer = pixel centre); NaN outside."""
    G = grid.shape[0]
    j = np.round((uv[:, 0] + 0.5) * G / image_size - 0.5).astype(int)
    i = np.round((uv[:, 1] + 0.5) * G / image_size - 0.5).astype(int)
    ok = (i >= 0) & (i < G) & (j >= 0) & (j < G)
    out = np.full(len(uv), np.nan)
    out[ok] = grid[i[ok], j[ok]]
    return out


def landmark_points(avatar_depth: np.ndarray, avatar_alpha: np.ndarray, source_K: np.ndarray,
                    views: ScanViews, transform, landmarks: np.ndarray):
    """The face landmarks in 3-D in both camera-0 frames: (avatar [N, 3], Blender [N, 3]) for the
    landmarks with a depth in both (avatar: its rendered depth at the crop, unprojected with its
    source K; Blender: the ray-cast depth, unprojected with Blender's K).

    avatar_depth, avatar_alpha: [S, S] at the crop; source_K [3, 3] at the crop; transform: the
    crop (Blender image -> crop pixels); landmarks: [478, 2+] in crop pixels (pixel i covers [i, i+1)).
    """
    S = avatar_depth.shape[0]
    uv = np.asarray(landmarks, np.float64)[:, :2]
    iu = np.clip(np.floor(uv).astype(int), 0, S - 1)
    za = avatar_depth[iu[:, 1], iu[:, 0]].astype(np.float64)
    aa = avatar_alpha[iu[:, 1], iu[:, 0]]
    src = transform.to_source(uv) - 0.5                # Blender pixels, OpenCV convention (integer = centre)
    zb = sample_grid(views.depth_front, src, views.rgba.shape[1])
    ok = np.isfinite(za) & np.isfinite(zb) & (aa > 0.9) & (za > 0) & (zb > 0)
    if ok.sum() < 20:
        raise EvalError(f"Only {int(ok.sum())} face landmarks have a depth in both the avatar and the scan render; "
                        "cannot align the novel-view cameras.")
    return _unproject(source_K, uv[ok] - 0.5, za[ok]), _unproject(views.K, src[ok], zb[ok])


def _unproject(K: np.ndarray, pix: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Pixels [N, 2] (OpenCV) at camera depths z [N] -> camera-space points [N, 3]."""
    ray = np.linalg.solve(K, np.concatenate([pix, np.ones((len(pix), 1))], 1).T).T
    return ray / ray[:, 2:3] * z[:, None]


def fit_scale_shift(pa: np.ndarray, pb: np.ndarray, iterations: int = 2):
    """k, t minimising sum |k pb + t - pa|^2 (no rotation: both frames look down the same axis),
    refitted without points whose residual exceeds 2.5x the median; returns (k, t [3], rms)."""
    keep = np.ones(len(pa), bool)
    for _ in range(iterations + 1):
        ma, mb = pa[keep].mean(0), pb[keep].mean(0)
        da, db = pa[keep] - ma, pb[keep] - mb
        k = float((da * db).sum() / max(float((db * db).sum()), 1e-12))
        t = ma - k * mb
        res = np.linalg.norm(k * pb + t - pa, axis=1)
        keep = res <= 2.5 * np.median(res) + 1e-9
    return k, t, float(np.sqrt((res[keep] ** 2).mean()))


def novel_cameras(source_view: np.ndarray, views: ScanViews, k: float, t: np.ndarray):
    """Avatar world -> camera matrices [V, 4, 4] matching Blender's views (module docstring).

    source_view [4, 4]: the avatar's fitted camera; k, t: Blender camera-0 frame -> avatar
    camera-0 frame (``fit_scale_shift``).
    Returns (viewmats [V, 4, 4], orbit centre in the avatar's source camera frame [3], centre
    residual (how far Blender's own camera motions move the orbit centre, metres; ~0)).
    """
    V0 = views.viewmats[views.index(0.0)]
    c0 = (V0 @ np.append(views.centre, 1.0))[:3]               # orbit centre, Blender camera 0 (m)
    C = k * c0 + t                                             # orbit centre, avatar camera 0
    out, residual = [], 0.0
    for Vt in views.viewmats:
        M = Vt @ np.linalg.inv(V0)                             # Blender camera 0 -> camera t
        R = M[:3, :3]
        residual = max(residual, float(np.linalg.norm(M[:3, :3] @ c0 + M[:3, 3] - c0)))
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = C - R @ C
        out.append(T @ source_view)
    return np.stack(out), C, residual


def evaluate_views(views: "ScanViews", out: Path, cfg, lpips_net, size: int = 256, lod: Optional[int] = None,
                   device: str = "cpu", head: str = "open", reuse: bool = False, command: Optional[str] = None,
                   render_size: Optional[int] = None, samples: Optional[int] = None,
                   timings: Optional[Dict[str, float]] = None, say=None) -> Dict[str, Dict[str, np.ndarray]]:
    """Reconstruct an avatar from the frontal view (or, with ``reuse``, load ``out/avatar.safetensors``),
    align its cameras with Blender's (module docstring), render every yaw at ``size`` and measure
    it and the frontal-image baseline against the scan; writes the report files to ``out``.
    ``command``, ``render_size`` and ``samples`` are recorded in the settings; ``say(message)``
    hears the stages. Returns per-view metrics {"avatar" | "frontal image": {metric: [V]}}."""
    import cv2
    import torch

    from avatar_core.camera import Camera
    from avatar_core.eval.report import write_png
    from avatar_core.face import crop_with, process_portrait
    from avatar_core.recon.preview import source_params

    say = say or (lambda message: None)
    timings = {} if timings is None else timings
    warnings: List[str] = []
    if views.meta.get("material") != "maps":
        warnings.append("The scan's texture maps could not be read (" + "; ".join(views.meta.get("map_problems", []))
                        + "), so the scan is rendered with a procedural skin material instead of its photo texture.")

    front = views.files[views.index(0.0)]
    avatar_path = out / "avatar.safetensors"
    t0 = time.perf_counter()
    portrait = process_portrait(str(front), size=cfg.crop_size)
    recon_info: Dict = {}
    if reuse and avatar_path.is_file():
        from avatar_core.io import load_avatar
        avatar = load_avatar(avatar_path)
        recon_info = {"reused": True, **{k: avatar.info.get(k) for k in ("quality", "psnr_masked_source")}}
    else:
        from avatar_core.head import load_head
        from avatar_core.recon.pipeline import reconstruct
        say(f"reconstructing from the frontal render ({cfg.name})")
        avatar, report = reconstruct(str(front), avatar_path, head=load_head(head), quality=cfg, device=device)
        warnings.extend(report.warnings)
        recon_info = {k: v for k, v in report.as_dict().items() if k in (
            "quality", "psnr_masked_source", "ssim_masked_source", "landmark_error_px", "num_gaussians")}
        if float(np.abs(report.source_image - portrait.image).mean()) > 0.02:
            warnings.append("The reconstruction's source crop differs from the evaluation's crop; views are misaligned.")
    timings["reconstruct"] = time.perf_counter() - t0

    # alignment: landmarks in 3-D in both frames at the crop size, then one camera per yaw
    t0 = time.perf_counter()
    S = cfg.crop_size
    params = source_params(avatar)
    cam_src = avatar.source_camera(S)
    rgb0, alpha0, depth0 = render_avatar(avatar, params, cam_src, lod, device)
    K_src = cam_src.K[0].double().numpy()
    V_src = cam_src.viewmat[0].double().numpy()
    pa, pb = landmark_points(depth0[0], alpha0[0], K_src, views, portrait.transform, portrait.landmarks)
    k, shift, rms = fit_scale_shift(pa, pb)
    viewmats, centre, residual = novel_cameras(V_src, views, k, shift)
    cams = Camera(torch.as_tensor(K_src).float(), torch.as_tensor(viewmats).float(), S, S).scaled(size, size)
    rgb, alpha, _ = render_avatar(avatar, params, cams, lod, device)
    timings["render"] = time.perf_counter() - t0

    # targets: each Blender view cropped like the frontal photo, over white, at the evaluation size
    Vn = len(views.yaws)
    tgt = np.empty((Vn, size, size, 3), np.float32)
    mask = np.empty((Vn, size, size), np.float32)
    for i in range(Vn):
        c = crop_with(views.rgba[i], portrait.transform, border="constant", fill=0.0)
        c = cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA)
        a = np.clip(c[..., 3], 0, 1)
        tgt[i] = c[..., :3] * a[..., None] + BACKGROUND * (1 - a[..., None])
        mask[i] = a
    # the scan is seen only inside Blender's frame: outside it (where the crop runs past the
    # render) the avatar is not judged either (its body goes on past the frontal render's edge)
    frame = crop_with(np.ones_like(views.rgba[0][..., :1]), portrait.transform, border="constant", fill=0.0)
    frame = np.clip(cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA), 0, 1)[None]
    rgb = rgb * frame[..., None] + BACKGROUND * (1 - frame[..., None])
    alpha = alpha * frame
    base = np.broadcast_to(tgt[views.index(0.0)], tgt.shape)
    per = {"avatar": view_metrics(rgb, alpha, tgt, mask, lpips_net),
           "frontal image": view_metrics(base, np.broadcast_to(mask[views.index(0.0)], mask.shape), tgt, mask, lpips_net)}
    for metric in METRICS:   # at yaw 0 the frontal image is the target itself
        per["frontal image"][metric][views.index(0.0)] = np.nan

    write_png(out / "strip.png", view_strip(tgt, rgb, mask, views.yaws))
    settings = {
        "command": command,
        "quality": cfg.name, "size": size, "render_size": render_size, "samples": samples,
        "lod": lod, "head": head, "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "blender": views.meta.get("blender"), "material": views.meta.get("material"),
        "scene": {"lens_mm": LENS_MM, "sensor_mm": SENSOR_MM, "distance_m": views.distance, "bust_height_m": BUST_HEIGHT_M},
    }
    align = {"scale": k, "shift": shift.tolist(), "landmark_rms_m": rms, "landmarks": len(pa),
             "depth_ratio_median": float(np.median(pa[:, 2] / pb[:, 2])),
             "orbit_centre_in_source_camera": centre.tolist(), "blender_centre_residual_m": residual}
    write_novelview_reports(out, views.yaws, per, settings, align, recon_info, warnings, timings)
    return per


def render_avatar(avatar, params: Dict, cameras, lod: Optional[int], device: str):
    """The avatar at fixed parameters through each camera of a batch: (rgb [B, H, W, 3],
    alpha [B, H, W], depth [B, H, W] (camera z; NaN where nothing was drawn)) numpy."""
    import torch

    from avatar_core.motion.playback import load_refiner
    from avatar_core.render import render

    avatar = avatar.to(device)
    lods = avatar.available_lods()
    lod = lods[-1] if lod is None else lod
    if lod not in lods:
        raise EvalError(f"--lod {lod} is not in the avatar; it has LODs {lods}.")
    refiner = load_refiner(avatar, device)
    index = avatar.select(lod)
    rgbs, alphas, depths = [], [], []
    with torch.no_grad():
        frame = avatar.animate(index=index, **{k: v.to(device) for k, v in params.items()})
        for b in range(cameras.batch):
            r = render(frame, cameras.index(b).to(device=device), background=BACKGROUND)
            img = refiner(r.image) if refiner is not None else r.image[..., :3]
            rgbs.append(img.clamp(0, 1)[0].float().cpu().numpy())
            alphas.append(r.alpha[0, ..., 0].float().cpu().numpy())
            d = r.depth[0, ..., 0].float().cpu().numpy()
            depths.append(np.where(alphas[-1] > 1e-3, d, np.nan))
    return np.stack(rgbs), np.stack(alphas), np.stack(depths)


def view_metrics(images, alpha, target, mask, lpips_net) -> Dict[str, np.ndarray]:
    """Masked PSNR/SSIM/LPIPS and silhouette IoU per view: {metric: [V]}."""
    import torch

    from avatar_core.metrics import psnr, ssim

    m = torch.as_tensor(np.ascontiguousarray(mask) > 0.5)
    a = torch.as_tensor(np.ascontiguousarray(images))
    b = torch.as_tensor(np.ascontiguousarray(target))
    sil_a, sil_b = np.asarray(alpha) > 0.5, np.asarray(mask) > 0.5
    inter = (sil_a & sil_b).sum(axis=(1, 2))
    union = (sil_a | sil_b).sum(axis=(1, 2))
    return {"psnr": psnr(a, b, mask=m).numpy(), "ssim": ssim(a, b, mask=m).numpy(),
            "lpips": lpips_net(a, b, mask=m.float()).numpy(), "iou": inter / np.maximum(union, 1)}


def view_strip(target, renders, mask, yaws) -> np.ndarray:
    from avatar_core.eval.report import error_image, image_strip

    rows = [[target[i], renders[i], error_image(renders[i], target[i], mask[i])] for i in range(len(yaws))]
    return image_strip(rows, ("scan (Blender)", "avatar", "|error|, mask"), [f"yaw {y:+.0f}" for y in yaws])


def write_novelview_reports(out: Path, yaws, per, settings, align, recon_info, warnings, timings) -> None:
    from avatar_core.eval.report import fmt, md_table, plot_series, write_csv, write_json, write_text

    methods = list(per)
    rows = []
    for i, y in enumerate(yaws):
        row = {"yaw_deg": float(y)}
        for k in METRICS:
            for m in methods:
                row[f"{k}_{m.replace(' ', '_')}"] = float(per[m][k][i])
        rows.append(row)
    write_csv(out / "per_view.csv", rows)
    plot_series(out / "metrics.png", list(yaws), {LABELS[k]: {m: per[m][k] for m in methods} for k in METRICS},
                title="novel views of the head scan (avatar from the yaw-0 render)", xlabel="yaw (degrees)",
                better={LABELS[k]: v for k, v in BETTER.items()}, marker="o")
    at30 = {f"{y:+.0f}": float(per["avatar"]["psnr"][i]) for i, y in enumerate(yaws) if abs(abs(y) - 30) < 1e-6}
    summary = {"settings": settings, "credit": CREDIT, "alignment": align, "reconstruction": recon_info,
               "per_view": rows, "masked_psnr_at_30": at30,
               "target_30deg_psnr_db": TARGET_PSNR_30,
               "target_met": bool(at30) and all(v >= TARGET_PSNR_30 for v in at30.values()),
               "warnings": warnings, "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    write_json(out / "summary.json", summary)

    L = ["# Novel-view report\n"]
    if settings.get("command"):
        L.append(f"Command: `{settings['command']}`\n")
    L.append(f"Scan: {CREDIT}. Rendered with Blender {settings['blender']} (Cycles, CPU, {settings['samples']} "
             f"samples, {settings['render_size']} px, material: {settings['material']}); avatar reconstructed from "
             f"the yaw-0 render at quality `{settings['quality']}` on {settings['device']}, compared at "
             f"{settings['size']} px inside the scan's alpha mask.\n")
    header = ["yaw"] + [f"{LABELS[k]} {m}" for k in METRICS for m in methods]
    table = [[f"{y:+.0f}°"] + [fmt(per[m][k][i], 3 if k in ('ssim', 'lpips', 'iou') else 2)
                               for k in METRICS for m in methods] for i, y in enumerate(yaws)]
    L.append(md_table(header, table))
    if at30:
        ok = all(v >= TARGET_PSNR_30 for v in at30.values())
        L.append("\nMasked PSNR at ±30°: " + ", ".join(f"{k}° {v:.2f} dB" for k, v in at30.items())
                 + f" (target ≥ {TARGET_PSNR_30:.0f} dB: {'met' if ok else 'not met'}).\n")
    L.append(f"\nAlignment: Blender's camera frame maps to the avatar's by scale {align['scale']:.3f} and shift "
             f"{np.round(align['shift'], 4).tolist()} m (fitted on {align['landmarks']} face landmarks in 3-D, rms "
             f"{1000 * align['landmark_rms_m']:.1f} mm); orbit centre in the source camera "
             f"{np.round(align['orbit_centre_in_source_camera'], 4).tolist()}; the avatar's yaw-0 view is its "
             "source camera.\n")
    if recon_info:
        L.append(f"Reconstruction: {recon_info}.\n")
    L.append("Times: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".\n")
    if warnings:
        L.append("\n## Warnings\n")
        L.append("\n".join(f"- {w}" for w in warnings) + "\n")
    L.append("\n![metrics](metrics.png)\n\n![strip](strip.png)\n")
    write_text(out / "report.md", "\n".join(L))
