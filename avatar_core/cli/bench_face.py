"""``python -m avatar_core bench face``: the torch face models against mediapipe 0.10.21, as JSON.

Parity (needs mediapipe 0.10.21 installed, Python 3.11; it is only the reference):
- landmarks: face_mesh in static-image mode with refine_landmarks=True against ours on the
  same image; distances in pixels of the 512 head crop around mediapipe's landmarks;
- detection: the best box of each BlazeFace model (short and full range), IoU;
- matte: the selfie segmentation (general and landscape) thresholded at 0.5, IoU;
on the portraits, and every ``--step``-th frame of the GRID clips and the driving videos.
Tracking: each GRID clip cropped like ``track`` crops it (512 px), mediapipe's video mode
against ``FaceTracker.track_batch``: median landmark distance per clip, and both timed on
the same clip in the same run (``speed``: ``--speed-repeats`` alternating rounds, the ratio of the
medians and each round's ratio, so that both see the same load on a shared machine). ``--gpu-only`` skips mediapipe and times
batched landmarks on the device (frames/s at the 192 x 192 input). ``--recon-only`` reconstructs
each portrait with our face models and with mediapipe's in their place (the rest of the code
the same): LOD 2 PSNR and the fit's landmark error of both (``--quality``, default "default").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from avatar_core.cli.eval_data import SHARED_DATA


def add_arguments(p):
    p.add_argument("--data", default=str(SHARED_DATA), help="the shared data folder (portraits/, grid/, driving/)")
    p.add_argument("--step", type=int, default=10, help="every step-th video frame is compared")
    p.add_argument("--quick", action="store_true", help="2 portraits, 2 GRID clips, 1 driving video")
    p.add_argument("--speed-clip", default="grid/s1/bbaf2n.mpg", help="the clip timed for tracking speed")
    p.add_argument("--speed-repeats", type=int, default=3,
                   help="rounds of the speed timing (mediapipe then ours, each round); medians and per-round ratios")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for the run (default: torch's)")
    p.add_argument("--speed-only", action="store_true", help="only the CPU tracking speed on --speed-clip")
    p.add_argument("--tracking-only", action="store_true", help="only the GRID tracking comparison and speed")
    p.add_argument("--recon-only", action="store_true",
                   help="only the portraits reconstructed with both face paths (LOD 2 PSNR, landmark error)")
    p.add_argument("--quality", default="default", help="reconstruction quality for --recon-only")
    p.add_argument("--recon-repeats", type=int, default=1,
                   help="reconstructions per portrait and face path for --recon-only (medians; the thread count the "
                        "optimisation picks by the machine's load changes its result a little)")
    p.add_argument("--gpu-only", action="store_true", help="only the batched-landmark throughput (no mediapipe)")
    p.add_argument("--batch", type=int, default=32, help="batch size of the throughput figure")
    p.add_argument("--device", default=None, help="torch device (default: the face models' default)")
    p.add_argument("-o", "--output", default=None, help="also write the JSON here")


def run(args) -> int:
    import torch

    from avatar_core.eval.bench_face import Mediapipe, clip_crops, parity, throughput, tracking, video_frames
    from avatar_core.face import _models
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else _models.default_device()
    out = {"device": str(device), "torch": torch.__version__}
    if args.gpu_only:
        out["throughput"] = throughput(device, args.batch)
        clip = Path(args.data) / args.speed_clip
        if clip.exists():
            from avatar_core.face import FaceTracker
            crops = clip_crops(video_frames(clip), None)
            with FaceTracker(device=device) as tr:
                tr.track_batch(crops)
                tr.reset()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                lms = tr.track_batch(crops)
                dt = time.perf_counter() - t0
            out["tracking"] = {"clip": args.speed_clip, "frames": len(crops), "seconds": round(dt, 4),
                               "frames_per_s": round(len(crops) / dt, 1)}
            if args.output:
                np.savez_compressed(Path(args.output).with_suffix(".npz"), landmarks=lms, crops=crops)
        return _emit(out, args.output)
    data = Path(args.data)
    if args.recon_only:
        from avatar_core.eval.bench_face import recon
        portraits = sorted((data / "portraits").glob("*.*"))[: 2 if args.quick else None]
        out["recon"] = recon(portraits, args.quality, str(device) if args.device else "auto", args.recon_repeats)
        return _emit(out, args.output)
    mp = Mediapipe()
    if args.speed_only or args.tracking_only:
        grid = sorted((data / "grid").rglob("*.mpg"))[: 2 if args.quick else None]
        clip = ([(args.speed_clip, video_frames(data / args.speed_clip))] if args.speed_only else
                [(str(p.relative_to(data)), video_frames(p)) for p in grid])
        out["grid_tracking_512"], out["cpu_tracking_speed"] = tracking(clip, mp, device, args.speed_clip,
                                                                       args.speed_repeats)
        return _emit(out, args.output)
    import cv2
    portraits = sorted((data / "portraits").glob("*.*"))
    grid = sorted((data / "grid").rglob("*.mpg"))
    driving = sorted((data / "driving").glob("*.mp4"))
    if args.quick:
        portraits, grid, driving = portraits[:2], grid[:2], driving[:1]
    t0 = time.perf_counter()
    imgs = [(p.name, np.ascontiguousarray(cv2.imread(str(p))[..., ::-1])) for p in portraits]
    out["portraits"] = parity(imgs, mp, device)
    out["grid_every_%d" % args.step] = parity([(f"{p.name}:{i}", f) for p in grid
                                               for i, f in enumerate(video_frames(p, args.step))], mp, device)
    out["driving_every_%d" % args.step] = parity([(f"{p.name}:{i}", f) for p in driving
                                                  for i, f in enumerate(video_frames(p, args.step))], mp, device)
    clips = [(str(p.relative_to(data)), video_frames(p)) for p in grid]
    if args.speed_clip not in [c for c, _ in clips] and (data / args.speed_clip).exists():
        clips.append((args.speed_clip, video_frames(data / args.speed_clip)))
    out["grid_tracking_512"], out["cpu_tracking_speed"] = tracking(clips, mp, device, args.speed_clip,
                                                                   args.speed_repeats)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return _emit(out, args.output)


def _emit(out: dict, output) -> int:
    text = json.dumps(out, indent=1)
    print(text)
    if output:
        Path(output).write_text(text + "\n")
    return 0
