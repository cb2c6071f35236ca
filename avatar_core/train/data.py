"""Training data: the clip folder format, a video converter, and (source, driving) pairs.

A dataset is a folder of clips (or one clip). A clip folder holds::

    clip.json            {"format": "headsplat-clip", "version": 1, "num_frames": T, "size": S,
                          "fps": ..., "head": {"name", "identity"}, "expr_names": [...],
                          "valid": [T bools], "source": "..."}
    frames/000000.png    the S x S RGB head crops
    matte/000000.png     8-bit person mattes
    params.safetensors   K [T, 3, 3] (pixels of the S x S crop), viewmat [T, 4, 4] (OpenCV,
                         world -> camera), shape [S'], expression [T, E], pose [T, J, 3],
                         translation [T, 3], landmarks [T, 478, 3] (crop pixels; nan if lost)

``convert_video`` makes one from a video with our tracker (``avatar_core.fit.track``).
``PairSampler`` draws (source, driving) frame pairs from one clip, sharded over DDP ranks;
``BatchLoader`` loads and collates them on background threads in a fixed order.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from avatar_core.camera import scale_intrinsics
from avatar_core.errors import AvatarError
from avatar_core.progress import as_progress
from avatar_core.train.schedule import hash_seed

log = logging.getLogger(__name__)

CLIP_FORMAT = "headsplat-clip"
CLIP_VERSION = 1
PARAM_KEYS = ("K", "viewmat", "shape", "expression", "pose", "translation")


class DataError(AvatarError):
    """A training clip or dataset folder is missing or malformed."""


# ---------------------------------------------------------------------------------- writing
def write_clip(out_dir, frames: np.ndarray, mattes: np.ndarray, params: Dict[str, np.ndarray],
               meta: dict) -> Path:
    """Write a clip folder (into a temporary sibling, renamed at the end: never half-written).

    frames [T, S, S, 3] uint8 RGB; mattes [T, S, S] float in [0, 1] or uint8; params as in the
    module docstring (numpy or torch); meta: extra clip.json entries (head, expr_names, fps...).
    """
    import cv2
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DataError(f"The clip folder {str(out_dir)!r} already exists; choose a new folder.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    T, S = int(frames.shape[0]), int(frames.shape[1])
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / "frames").mkdir()
        (tmp / "matte").mkdir()
        for t in range(T):
            cv2.imwrite(str(tmp / "frames" / f"{t:06d}.png"), np.ascontiguousarray(frames[t][..., ::-1]))
            m = mattes[t]
            m = (np.clip(m, 0, 1) * 255 + 0.5).astype(np.uint8) if m.dtype != np.uint8 else m
            cv2.imwrite(str(tmp / "matte" / f"{t:06d}.png"), m)
        tensors = {k: torch.as_tensor(np.asarray(v)).float().contiguous() for k, v in params.items()}
        for k in PARAM_KEYS:
            if k not in tensors:
                raise DataError(f"write_clip needs the parameter {k!r}; got {sorted(tensors)}.")
        save_file(tensors, str(tmp / "params.safetensors"))
        info = {"format": CLIP_FORMAT, "version": CLIP_VERSION, "num_frames": T, "size": S, **meta}
        info.setdefault("valid", [True] * T)
        (tmp / "clip.json").write_text(json.dumps(info, indent=1))
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def convert_video(video, out_dir, head, size: int = 512, embedding=None, steps: int = 150,
                  max_frames: Optional[int] = None, progress=None, cancel=None) -> Path:
    """Track a video with ``avatar_core.fit.track.track_video`` and write it as a clip folder.

    Frames are the tracker's head crops (size x size), mattes come from the portrait matting
    of each crop, parameters from the tracker's fit (camera per frame, one identity).
    """
    from avatar_core.face.matte import portrait_matte
    from avatar_core.fit.track import track_video
    p = as_progress(progress, cancel)
    track = track_video(video, head, embedding=embedding, size=size, steps=steps, max_frames=max_frames,
                        progress=p.sub(0.0, 0.8))
    fit = track.fit
    T = track.frames.shape[0]
    mattes = np.zeros(track.frames.shape[:3], np.float32)
    for t in range(T):
        lm = track.landmarks[t] if bool(track.valid[t]) else None
        mattes[t] = portrait_matte(track.frames[t].astype(np.float32) / 255.0, lm)
        if t % 10 == 0:
            p(0.8 + 0.15 * t / T, f"matting {t}/{T}")
    T_ = int(T)
    params = dict(K=fit.camera.K.expand(T_, 3, 3), viewmat=fit.camera.viewmat.expand(T_, 4, 4),
                  shape=fit.shape, expression=fit.expression.reshape(T_, -1), pose=fit.pose.reshape(T_, -1, 3),
                  translation=getattr(fit, "translation", torch.zeros(T_, 3)).reshape(T_, 3),
                  landmarks=torch.as_tensor(track.landmarks))
    meta = dict(fps=float(track.fps), head={"name": head.name, "identity": head.identity()},
                expr_names=list(head.expr_names), valid=[bool(v) for v in track.valid], source=str(video),
                warnings=list(track.warnings))
    out = write_clip(out_dir, track.frames, mattes, {k: _np(v) for k, v in params.items()}, meta)
    p(1.0, "done")
    return out


def _np(v):
    return v.detach().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)


# ---------------------------------------------------------------------------------- reading
class Clip:
    """One clip folder, parameters loaded, frames read on demand."""

    def __init__(self, path):
        from safetensors.torch import load_file
        self.path = Path(path)
        info_path = self.path / "clip.json"
        if not info_path.is_file():
            raise DataError(f"{str(self.path)!r} is not a training clip: it has no clip.json.")
        try:
            self.info = json.loads(info_path.read_text())
        except ValueError as exc:
            raise DataError(f"The clip file {str(info_path)!r} is not valid JSON ({exc}).") from exc
        if self.info.get("format") != CLIP_FORMAT or int(self.info.get("version", 0)) > CLIP_VERSION:
            raise DataError(f"{str(info_path)!r} is not a {CLIP_FORMAT} version <= {CLIP_VERSION} file.")
        try:
            self.params = load_file(str(self.path / "params.safetensors"))
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"The clip parameters {str(self.path / 'params.safetensors')!r} could not be read "
                            f"({exc}).") from exc
        self.size = int(self.info["size"])
        self.num_frames = int(self.info["num_frames"])
        self.valid = np.asarray(self.info.get("valid", [True] * self.num_frames), bool)
        for k in PARAM_KEYS:
            if k not in self.params:
                raise DataError(f"The clip {str(self.path)!r} lacks the parameter {k!r}.")

    @property
    def head_identity(self) -> str:
        return str(self.info.get("head", {}).get("identity", ""))

    def frame(self, t: int, image_size: int, background: float) -> Dict[str, torch.Tensor]:
        """Frame t resized to image_size: image [3, S, S] composited over ``background``,
        alpha [1, S, S], K at that size, viewmat, expression, pose, translation."""
        import cv2
        bgr = cv2.imread(str(self.path / "frames" / f"{t:06d}.png"), cv2.IMREAD_COLOR)
        matte = cv2.imread(str(self.path / "matte" / f"{t:06d}.png"), cv2.IMREAD_GRAYSCALE)
        if bgr is None or matte is None:
            raise DataError(f"Frame {t} of the clip {str(self.path)!r} is missing or unreadable.")
        if bgr.shape[0] != image_size:
            interp = cv2.INTER_AREA if bgr.shape[0] > image_size else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, (image_size, image_size), interpolation=interp)
            matte = cv2.resize(matte, (image_size, image_size), interpolation=interp)
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(2, 0, 1).float() / 255.0
        alpha = torch.from_numpy(matte).float()[None] / 255.0
        image = rgb * alpha + background * (1.0 - alpha)
        K = scale_intrinsics(self.params["K"][t].float(), image_size / self.size)
        return dict(image=image, alpha=alpha, K=K, viewmat=self.params["viewmat"][t],
                    expression=self.params["expression"][t], pose=self.params["pose"][t],
                    translation=self.params["translation"][t])


def pair_sample(src: Dict[str, torch.Tensor], drv: Dict[str, torch.Tensor], shape: torch.Tensor,
                num_shape: int) -> Dict[str, torch.Tensor]:
    """One training sample from two frames (dicts of ``Clip.frame``) and the clip's identity."""
    s = torch.zeros(num_shape)
    n = min(num_shape, shape.numel())
    s[:n] = shape.reshape(-1)[:n].float()
    out = {"shape": s}
    for prefix, fr in (("src", src), ("drv", drv)):
        for k, v in fr.items():
            out[f"{prefix}_{k}"] = v.float()
    return out


def collate(samples: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


class ClipDataset:
    """Every clip under ``root`` (``root`` itself may be a clip)."""

    def __init__(self, root, image_size: int, num_shape: int, background: float = 1.0,
                 head_identity: Optional[str] = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"The training data folder {str(root)!r} does not exist.")
        paths = [root] if (root / "clip.json").is_file() else sorted(p.parent for p in root.glob("*/clip.json"))
        if not paths:
            raise DataError(f"No training clips (folders with clip.json) were found in {str(root)!r}; make them "
                            "with `python -m avatar_core train --prepare VIDEO... --data FOLDER`.")
        self.clips = [Clip(p) for p in paths]
        if head_identity is not None:
            for c in self.clips:
                if c.head_identity and c.head_identity != head_identity:
                    raise DataError(f"The clip {str(c.path)!r} was tracked with the head model {c.head_identity}, "
                                    f"but the network uses {head_identity}; re-track it with the same head.")
        self.image_size, self.num_shape, self.background = image_size, num_shape, background

    def frames(self) -> List[Tuple[int, int]]:
        """Every valid (clip, frame) pair."""
        return [(c, int(t)) for c, clip in enumerate(self.clips) for t in np.nonzero(clip.valid)[0]]

    def sample(self, clip: int, src: int, drv: int) -> Dict[str, torch.Tensor]:
        c = self.clips[clip]
        return pair_sample(c.frame(src, self.image_size, self.background),
                           c.frame(drv, self.image_size, self.background), c.params["shape"], self.num_shape)


class SyntheticPairs:
    """Stand-in data for benchmarks and smoke runs: smooth random images, neutral-ish
    parameters, a frontal orbit camera. Deterministic in the item index."""

    def __init__(self, image_size: int, num_shape: int, num_expr: int, num_joints: int = 5,
                 background: float = 1.0, length: int = 10_000, distance: float = 0.75, fov_deg: float = 22.0):
        from avatar_core.camera import orbit_camera
        self.image_size, self.num_shape, self.num_expr, self.num_joints = image_size, num_shape, num_expr, num_joints
        self.length = length
        cam = orbit_camera(distance=distance, fov_deg=fov_deg, width=image_size, height=image_size)
        self.K, self.viewmat = cam.K[0], cam.viewmat[0]

    def frames(self) -> List[Tuple[int, int]]:
        return [(0, t) for t in range(self.length)]

    def _frame(self, t: int) -> Dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash_seed(11, t))
        S = self.image_size
        low = torch.rand(1, 3, 8, 8, generator=g)
        image = torch.nn.functional.interpolate(low, size=(S, S), mode="bicubic", align_corners=False)[0].clamp(0, 1)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
        alpha = ((xx ** 2 / 0.5 + (yy + 0.1) ** 2 / 0.8) < 1).float()[None]
        return dict(image=image * alpha + (1 - alpha), alpha=alpha, K=self.K.clone(), viewmat=self.viewmat.clone(),
                    expression=torch.rand(self.num_expr, generator=g) * 0.3,
                    pose=torch.randn(self.num_joints, 3, generator=g) * 0.05,
                    translation=torch.zeros(3))

    def sample(self, clip: int, src: int, drv: int) -> Dict[str, torch.Tensor]:
        return pair_sample(self._frame(src), self._frame(drv), torch.zeros(self.num_shape), self.num_shape)


class PairSampler:
    """(clip, source, driving) triples for one rank, in a fixed order given the seed.

    Each epoch permutes every valid frame (the sources) with (seed, epoch), truncates to a
    multiple of world * batch_size, and gives rank r the items r, r + world, ... (so ranks
    never share a source within an epoch). The driving frame is drawn from the same clip,
    different from the source where the clip has more than one frame. ``state()`` /
    ``load_state()`` give exact resumption.
    """

    def __init__(self, frames: List[Tuple[int, int]], batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if not frames:
            raise DataError("The training data has no usable frames.")
        self.frames = frames
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        by_clip: Dict[int, List[int]] = {}
        for c, t in frames:
            by_clip.setdefault(c, []).append(t)
        self.by_clip = by_clip
        per_epoch = len(frames) // (world * batch_size)
        if per_epoch == 0:
            # tiny data: repeat the frames so one step fits
            reps = -(-world * batch_size // len(frames))
            self.frames = frames * reps
            per_epoch = len(self.frames) // (world * batch_size)
        self.batches_per_epoch = per_epoch
        self.epoch, self.cursor = 0, 0

    def state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])

    def _epoch_items(self, epoch: int) -> List[Tuple[int, int]]:
        g = torch.Generator().manual_seed(hash_seed(self.seed, epoch, 1))
        order = torch.randperm(len(self.frames), generator=g).tolist()
        n = self.batches_per_epoch * self.world * self.batch_size
        return [self.frames[i] for i in order[:n]][self.rank::self.world]

    def next_batch(self) -> List[Tuple[int, int, int]]:
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        items = self._epoch_items(self.epoch)
        chunk = items[self.cursor * self.batch_size:(self.cursor + 1) * self.batch_size]
        out = []
        for j, (c, src) in enumerate(chunk):
            pool = self.by_clip[c]
            g = torch.Generator().manual_seed(hash_seed(self.seed, self.epoch, self.cursor, self.rank, j, 2))
            drv = pool[int(torch.randint(len(pool), (1,), generator=g))]
            if drv == src and len(pool) > 1:
                drv = pool[(pool.index(src) + 1 + int(torch.randint(len(pool) - 1, (1,), generator=g))) % len(pool)]
            out.append((c, src, drv))
        self.cursor += 1
        return out


class BatchLoader:
    """Loads the sampler's batches on ``workers`` threads, ``prefetch`` batches ahead, in order."""

    def __init__(self, dataset, sampler: PairSampler, workers: int = 4, prefetch: int = 2):
        self.dataset, self.sampler = dataset, sampler
        # samples load on ``pool``; whole batches are assembled on ``batches`` (separate pools,
        # so a batch waiting for its samples never holds a sample worker)
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers)) if workers > 0 else None
        self.batches = ThreadPoolExecutor(max_workers=prefetch + 1) if workers > 0 else None
        self.prefetch = prefetch
        self._queue: List = []

    def _load(self, triples) -> Dict[str, torch.Tensor]:
        if self.pool is None:
            return collate([self.dataset.sample(*t) for t in triples])
        return collate(list(self.pool.map(lambda t: self.dataset.sample(*t), triples)))

    def state(self) -> dict:
        """Sampler state of the next batch to be returned (prefetched batches are replayed on resume)."""
        if self._queue:
            return self._queue[0][0]
        return self.sampler.state()

    def next(self) -> Dict[str, torch.Tensor]:
        if self.pool is None:
            return self._load(self.sampler.next_batch())
        while len(self._queue) < self.prefetch + 1:
            st = self.sampler.state()
            triples = self.sampler.next_batch()
            self._queue.append((st, self.batches.submit(self._load, triples)))
        _, fut = self._queue.pop(0)
        return fut.result()

    def close(self) -> None:
        if self.pool is not None:
            self.batches.shutdown(wait=False, cancel_futures=True)
            self.pool.shutdown(wait=False, cancel_futures=True)

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        while True:
            yield self.next()


def untracked_pair(video, src: int, drv: int, image_size: int, num_shape: int, num_expr: int,
                   num_joints: int = 5, crop_size: int = 128, background: float = 1.0,
                   distance: float = 1.0, fov_deg: float = 20.0) -> Dict[str, torch.Tensor]:
    """A (source, driving) sample from two frames of a video *without tracking*: the face
    pipeline crops and mattes both frames (the source's crop for both), the camera is a fixed
    frontal orbit camera and every head parameter is neutral. For smoke tests and overfitting
    checks only; real training data comes from ``convert_video``.
    """
    import cv2
    from avatar_core.camera import orbit_camera
    from avatar_core.face import crop_with, process_portrait
    from avatar_core.face.matte import portrait_matte
    from avatar_core.fit.track import read_video
    frames, _ = read_video(video, max_frames=max(src, drv) + 1)
    portrait = process_portrait(frames[src], size=crop_size)
    cam = orbit_camera(distance=distance, fov_deg=fov_deg, width=image_size, height=image_size)

    def frame(rgb_crop: np.ndarray, matte: np.ndarray) -> Dict[str, torch.Tensor]:
        rgb = cv2.resize(rgb_crop, (image_size, image_size), interpolation=cv2.INTER_AREA)
        a = cv2.resize(matte.astype(np.float32), (image_size, image_size), interpolation=cv2.INTER_AREA)
        img = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
        img = img / 255.0 if rgb.dtype == np.uint8 else img
        alpha = torch.from_numpy(a)[None].float()
        return dict(image=img * alpha + background * (1 - alpha), alpha=alpha, K=cam.K[0].clone(),
                    viewmat=cam.viewmat[0].clone(), expression=torch.zeros(num_expr),
                    pose=torch.zeros(num_joints, 3), translation=torch.zeros(3))

    s = frame(portrait.image.astype(np.float32), portrait.alpha)
    d_rgb = crop_with(frames[drv], portrait.transform)
    d_rgb = d_rgb.astype(np.float32) / 255.0 if d_rgb.dtype == np.uint8 else d_rgb.astype(np.float32)
    inside = np.asarray(getattr(portrait, "inside", np.ones(d_rgb.shape[:2], bool)), np.float32)
    d = frame(d_rgb, portrait_matte(d_rgb) * inside)  # the crop's padding is background, as in the source
    return pair_sample(s, d, torch.zeros(num_shape), num_shape)
