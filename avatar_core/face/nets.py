"""The face models around the converted graphs: pre- and post-processing as mediapipe's graphs do.

- ``warp_rois``: rotated-rectangle crops of a batch of images (mediapipe's ImageToTensor on
  the CPU: the rectangle's corners map onto the tensor's corners, bilinear, uint8 values).
- ``FaceDetector``: BlazeFace short range (128 px) or full range (192 px): SSD anchors,
  box and keypoint decoding, weighted non-maximum suppression, letterbox removal.
- ``FaceMesh``: the attention face mesh on a 192 px rotated crop (its custom ops run in
  ``avatar_core.face.graph``), refined into mediapipe's 478-index order.
- ``SelfieSegmenter``: the general (256 x 256) and landscape (144 x 256) person masks.

Images are torch tensors [B, 3, H, W], uint8 (or float) holding 0..255 RGB values. Rectangles
("ROIs") are [B, 5] float (centre x, centre y, width, height, rotation in radians) in pixels, in
OpenCV's pixel-centre coordinates (pixel i at coordinate i), as mediapipe's CPU path uses.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------- crops


def _threads(images: torch.Tensor):
    """Around a model call: the CPU thread count (``graph.cpu_threads``), or no TF32 on CUDA."""
    from avatar_core.face.graph import cpu_threads

    if images.device.type == "cpu":
        return cpu_threads()
    if images.device.type == "cuda":  # full fp32 convolutions (TF32 moves landmarks by up to ~2 px)
        cudnn = torch.backends.cudnn
        return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                           allow_tf32=False)
    return contextlib.nullcontext()



def roi_matrices(rois: torch.Tensor, out_w: int, out_h: int, flip: bool = False) -> torch.Tensor:
    """[B, 5] ROIs -> [B, 2, 3]: tensor pixel (u, v, 1) -> source pixel (x, y).

    (0, 0) and (out_w, out_h) of the tensor land on the rectangle's corners (OpenCV's
    boxPoints / getPerspectiveTransform as mediapipe calls them); ``flip`` mirrors it.
    """
    cx, cy, w, h, a = rois.unbind(-1)
    c, s = torch.cos(a), torch.sin(a)
    sx, sy = w / out_w, h / out_h
    if flip:
        sx = -sx
    # [dx, dy] = ((u - out_w/2) * sx, (v - out_h/2) * sy); x = cx + c dx - s dy; y = cy + s dx + c dy
    m = torch.stack([torch.stack([c * sx, -s * sy, cx - c * sx * out_w / 2 + s * sy * out_h / 2], -1),
                     torch.stack([s * sx, c * sy, cy - s * sx * out_w / 2 - c * sy * out_h / 2], -1)], -2)
    return m


def warp_rois(images: torch.Tensor, rois: torch.Tensor, out_w: int, out_h: int, border: str = "zeros",
              flip: bool = False, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bilinear crops of rotated rectangles.

    Args:
        images: [N, C, H, W] uint8 or float (0..255).
        rois: [B, 5] rectangles in the images' pixels.
        out_w, out_h: the crop's size.
        border: "zeros" (mediapipe's BORDER_ZERO) or "border" (BORDER_REPLICATE).
        flip: mirror the crops horizontally.
        index: [B] long, which image each ROI reads (default: ROI b reads image b).

    Returns:
        [B, C, out_h, out_w] float32 (channels_last on the CPU), whole values like mediapipe's
        uint8 warp. On the CPU this is mediapipe's own warp (OpenCV, INTER_LINEAR, on the uint8
        image: no float copy of the whole frame); elsewhere ``grid_sample`` at the same sampling
        positions.
    """
    if images.device.type == "cpu":
        return _warp_rois_cv(images, rois, out_w, out_h, border, flip, index)
    return _warp_rois_grid(images, rois, out_w, out_h, border, flip, index)


def _warp_rois_grid(images, rois, out_w, out_h, border, flip, index) -> torch.Tensor:
    """``warp_rois`` with ``grid_sample`` (any device)."""
    B = rois.shape[0]
    H, W = images.shape[-2:]
    m = roi_matrices(rois.to(torch.float64), out_w, out_h, flip)
    # straight to grid_sample's [-1, 1] (align_corners=True: -1 and 1 are the first and last pixel centres)
    m = m * torch.tensor([[2.0 / max(W - 1, 1)], [2.0 / max(H - 1, 1)]], dtype=m.dtype, device=m.device)
    m[:, :, 2] -= 1.0
    m = m.to(torch.float32)
    u = torch.arange(out_w, dtype=torch.float32, device=rois.device)
    v = torch.arange(out_h, dtype=torch.float32, device=rois.device)
    # norm[b, y, x] = m[b, :, 0] u_x + m[b, :, 1] v_y + m[b, :, 2]
    norm = (m[:, None, None, :, 0] * u[None, None, :, None] + m[:, None, None, :, 1] * v[None, :, None, None]
            + m[:, None, None, :, 2])                                      # [B, h, w, 2]
    imgs = images if index is None else images[index]
    if imgs.shape[0] != B:
        imgs = imgs.expand(B, -1, -1, -1)
    if not imgs.is_floating_point():
        imgs = imgs.float()
    out = F.grid_sample(imgs, norm.to(imgs.dtype), mode="bilinear", padding_mode=border, align_corners=True)
    return out.round()


def _cv_roi_matrix(roi, out_w: int, out_h: int, flip: bool) -> np.ndarray:
    """[5] ROI -> [3, 3] source pixel -> tensor pixel, built as mediapipe's OpenCV converter
    builds it: the rectangle's corners from ``cv2.boxPoints`` in float32, mapped onto the
    tensor's corners by ``cv2.getPerspectiveTransform``. The same map computed in float64
    differs in the last bits, enough to move OpenCV's fixed-point sampling positions where a
    letterbox's scale puts them on a rounding boundary (obama's full-range box moved 0.2 px)."""
    import cv2

    cx, cy, w, h, a = (np.float32(v) for v in roi)
    corners = cv2.boxPoints(((cx, cy), (w, h), a * np.float32(180.0 / math.pi)))  # bl, tl, tr, br
    dst = np.array([[0, out_h], [0, 0], [out_w, 0], [out_w, out_h]], np.float32)
    if flip:
        dst[:, 0] = out_w - dst[:, 0]
    return cv2.getPerspectiveTransform(corners.astype(np.float32), dst)


def _warp_rois_cv(images, rois, out_w, out_h, border, flip, index) -> torch.Tensor:
    """``warp_rois`` on the CPU with OpenCV, as mediapipe's CPU ImageToTensor does: the same
    matrix (``_cv_roi_matrix``) and ``warpPerspective``. (warpAffine rounds its sampling
    positions in another fixed-point pipeline: face_mesh's landmarks on its crops were
    ~0.008 px from mediapipe's, median; with this, 0.001 px.)"""
    import cv2

    from avatar_core.face.graph import WORKER_MIN_BATCH, _pool, cpu_workers

    B, C = rois.shape[0], images.shape[1]
    r = rois.detach().to("cpu", torch.float64).numpy()
    idx = index.tolist() if index is not None else [0] * B if images.shape[0] == 1 else list(range(B))
    u8 = images.dtype == torch.uint8
    out = np.empty((B, out_h, out_w, C), np.uint8 if u8 else np.float32)
    mode = cv2.BORDER_REPLICATE if border == "border" else cv2.BORDER_CONSTANT
    hwc = {}
    for i in idx:
        if i not in hwc:
            src = images[i].permute(1, 2, 0)
            hwc[i] = np.ascontiguousarray(src.numpy() if u8 else src.float().numpy())

    def warp(bs):
        for b in bs:
            out[b] = cv2.warpPerspective(hwc[idx[b]], _cv_roi_matrix(r[b], out_w, out_h, flip), (out_w, out_h),
                                         flags=cv2.INTER_LINEAR, borderMode=mode, borderValue=0).reshape(out_h, out_w, C)

    # a crop is too small for OpenCV's own threads to help (0.40 ms at 192 px on one thread or two);
    # the face models' idle-core workers (graph.cpu_workers) warp a batch's crops side by side
    n = min(cpu_workers(), B // WORKER_MIN_BATCH)
    if n > 1:
        list(_pool(n).map(warp, np.array_split(np.arange(B), n)))
    else:
        warp(range(B))
    res = torch.from_numpy(out).permute(0, 3, 1, 2)                        # channels_last view
    return res.float() if u8 else res.round()


def _rect_from_points(points: torch.Tensor, i0: int, i1: int, scale: float) -> torch.Tensor:
    """mediapipe's DetectionsToRects + RectTransformation for a point set.

    Args:
        points: [B, K, 2] pixels; the box is their bounding box, the rotation the one that
            makes points i0 -> i1 horizontal.
        scale: the square's side / the box's longer side.

    Returns:
        [B, 5] ROIs (OpenCV pixel-centre coordinates).
    """
    lo, hi = points.min(1).values, points.max(1).values
    centre = 0.5 * (lo + hi)
    d = points[:, i1] - points[:, i0]
    angle = -torch.atan2(-d[:, 1], d[:, 0])
    angle = angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))
    side = (hi - lo).max(-1).values * scale
    return torch.stack([centre[:, 0], centre[:, 1], side, side, angle], -1)


# ------------------------------------------------------------------------------ detection


def ssd_anchors(input_size: int, strides: Sequence[int], interpolated: bool) -> np.ndarray:
    """BlazeFace's SSD anchors (fixed size, offset 0.5) as [A, 2] centres in [0, 1].

    Layers of equal stride share a feature map; each layer adds one anchor per cell,
    plus one more when an interpolated scale is configured.
    """
    out = []
    layer = 0
    while layer < len(strides):
        last = layer
        n = 0
        while last < len(strides) and strides[last] == strides[layer]:
            n += 2 if interpolated else 1
            last += 1
        side = math.ceil(input_size / strides[layer])
        for y in range(side):
            for x in range(side):
                out += [((x + 0.5) / side, (y + 0.5) / side)] * n
        layer = last
    return np.array(out, dtype=np.float32)


@dataclass
class DetectorConfig:
    model: str
    size: int
    strides: Sequence[int]
    interpolated: bool
    # the score from which mediapipe's face-detection solution decodes candidates and
    # suppresses them, whatever its min_detection_confidence (in 0.10.21 that option moves
    # nothing); a face's box is the weighted mean of all its candidates from this score up
    candidate_score: float


DETECTORS = {
    0: DetectorConfig("face_detection_short_range", 128, (8, 16, 16, 16), True, 0.5),
    1: DetectorConfig("face_detection_full_range", 192, (4,), False, 0.6),
}
NMS_IOU = 0.3


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou: float = NMS_IOU):
    """mediapipe's weighted non-maximum suppression.

    Args:
        boxes: [N, 4] (xmin, ymin, xmax, ymax); scores: [N]; keypoints: [N, K, 2].

    Returns:
        (boxes [M, 4], scores [M], keypoints [M, K, 2]): each cluster of boxes overlapping its
        best one by IoU > ``iou`` averaged with score weights, the best one's score kept.
    """
    order = np.argsort(-scores, kind="stable")
    out_b, out_s, out_k = [], [], []
    while len(order):
        best = boxes[order[0]]
        rest = boxes[order]
        lo = np.maximum(rest[:, :2], best[:2])
        hi = np.minimum(rest[:, 2:], best[2:])
        inter = np.prod(np.clip(hi - lo, 0.0, None), axis=1)
        area = np.prod(rest[:, 2:] - rest[:, :2], axis=1)
        union = area + np.prod(best[2:] - best[:2]) - inter
        sim = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        near = sim > iou
        near[0] = True                                      # the best box is in its own cluster
        cluster = order[near]
        w = scores[cluster][:, None]
        out_b.append((boxes[cluster] * w).sum(0) / w.sum())
        out_k.append((keypoints[cluster] * w[:, :, None]).sum(0) / w.sum())
        out_s.append(scores[order[0]])
        order = order[~near]
    if not out_b:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, keypoints.shape[1], 2))
    return np.array(out_b), np.array(out_s), np.array(out_k)


class FaceDetector(torch.nn.Module):
    """BlazeFace on whole images (letterboxed to a square, as mediapipe does)."""

    def __init__(self, net: torch.nn.Module, selection: int):
        super().__init__()
        self.net = net
        self.cfg = DETECTORS[selection]
        self.register_buffer("anchors", torch.from_numpy(
            ssd_anchors(self.cfg.size, self.cfg.strides, self.cfg.interpolated)), persistent=False)

    def forward(self, images: torch.Tensor, min_score: float, candidate_score: Optional[float] = None) -> List[tuple]:
        """[B, 3, H, W] (0..255) -> per image (boxes [M, 4] px, scores [M], keypoints [M, 6, 2] px):
        the faces scoring ``min_score`` and up, each the weighted mean of its candidates scoring
        ``candidate_score`` (default: ``min_score``) and up."""
        with _threads(images):
            return self._forward(images, min_score, min_score if candidate_score is None else candidate_score)

    @torch.inference_mode()
    def _forward(self, images: torch.Tensor, min_score: float, candidate_score: float) -> List[tuple]:
        B, _, H, W = images.shape
        S = self.cfg.size
        side = float(max(H, W))
        roi = torch.tensor([[W / 2.0, H / 2.0, side, side, 0.0]], device=images.device).expand(B, 5)
        x = warp_rois(images, roi, S, S, border="zeros").div_(127.5).sub_(1.0)
        outs = self.net(x)
        # two outputs: [B, A, 16] box + keypoint offsets and [B, A, 1] score logits
        raw, logits = sorted((o.float() for o in outs.values()), key=lambda o: -o.shape[-1])
        scores = torch.sigmoid(logits[..., 0].clamp(-100.0, 100.0))        # [B, A]
        a = self.anchors
        xy = raw[..., 0:2] / S + a                                          # box centre, [0, 1] of the square
        wh = raw[..., 2:4] / S
        kp = raw[..., 4:16].reshape(B, -1, 6, 2) / S + a[:, None]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        # letterbox removal: square tensor units -> image pixels (pixel-corner units)
        to_px = torch.tensor([side, side], device=images.device)
        off = torch.tensor([(side - W) / 2.0, (side - H) / 2.0], device=images.device)
        res = []
        for b in range(B):
            keep = scores[b] >= candidate_score
            if not bool(keep.any()):
                res.append((np.zeros((0, 4)), np.zeros(0), np.zeros((0, 6, 2))))
                continue
            bx, sc, k = (boxes[b][keep].double().cpu().numpy(), scores[b][keep].double().cpu().numpy(),
                         kp[b][keep].double().cpu().numpy())
            bx, sc, k = weighted_nms(bx, sc, k)
            strong = sc >= min_score
            bx, sc, k = bx[strong], sc[strong], k[strong]
            t, o = to_px.cpu().numpy().astype(np.float64), off.cpu().numpy().astype(np.float64)
            bx = bx * np.tile(t, 2) - np.tile(o, 2)
            k = k * t - o
            res.append((bx, sc, k))
        return res


def detection_rois(boxes: np.ndarray, keypoints: np.ndarray, device) -> torch.Tensor:
    """Face-mesh ROIs from detections (mediapipe: rotation from the eyes, scale 1.5, square).

    Args:
        boxes: [M, 4] pixels (pixel-corner units, as returned by FaceDetector); keypoints [M, 6, 2].

    Returns:
        [M, 5] ROIs in OpenCV pixel-centre coordinates.
    """
    b = torch.as_tensor(boxes, dtype=torch.float64, device=device)
    k = torch.as_tensor(keypoints, dtype=torch.float64, device=device)
    centre = 0.5 * (b[:, :2] + b[:, 2:])
    d = k[:, 1] - k[:, 0]
    angle = -torch.atan2(-d[:, 1], d[:, 0])
    angle = angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))
    side = (b[:, 2:] - b[:, :2]).max(-1).values * 1.5
    # mediapipe's rect centre (normalised x image size) is a pixel-corner coordinate used as-is by OpenCV
    return torch.stack([centre[:, 0], centre[:, 1], side, side, angle], -1)


# ---------------------------------------------------------------------------- landmarks

MESH_SIZE = 192
MESH_ROI_SCALE = 1.5
# mediapipe's refinement of the attention mesh: which of the 468 mesh points the lips and
# eye outputs replace (x, y only), and the eye points whose mean depth the irises take
LIPS = (
    61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 185, 40, 39, 37, 0, 267, 269, 270, 409,
    78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 191, 80, 81, 82, 13, 312, 311, 310, 415,
    76, 77, 90, 180, 85, 16, 315, 404, 320, 307, 306, 184, 74, 73, 72, 11, 302, 303, 304, 408,
    62, 96, 89, 179, 86, 15, 316, 403, 319, 325, 292, 183, 42, 41, 38, 12, 268, 271, 272, 407)
EYE_RIGHT = (   # the subject's right eye (image left in a frontal photo): contour, four halos / brow
    33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173,
    130, 25, 110, 24, 23, 22, 26, 112, 243, 247, 30, 29, 27, 28, 56, 190,
    226, 31, 228, 229, 230, 231, 232, 233, 244, 113, 225, 224, 223, 222, 221, 189,
    35, 124, 46, 53, 52, 65, 143, 111, 117, 118, 119, 120, 121, 128, 245,
    156, 70, 63, 105, 66, 107, 55, 193)
EYE_LEFT = (
    263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398,
    359, 255, 339, 254, 253, 252, 256, 341, 463, 467, 260, 259, 257, 258, 286, 414,
    446, 261, 448, 449, 450, 451, 452, 453, 464, 342, 445, 444, 443, 442, 441, 413,
    265, 353, 276, 283, 282, 295, 372, 340, 346, 347, 348, 349, 350, 357, 465,
    383, 300, 293, 334, 296, 336, 285, 417)
EYE_CONTOUR_POINTS = 16            # the first 16 of each eye list: the eyelid contour
IRIS_RIGHT, IRIS_LEFT = range(468, 473), range(473, 478)
ROI_ROTATION_POINTS = (33, 263)     # tracking ROI: outer eye corners


def _project(lm: torch.Tensor, rois: torch.Tensor, size: int) -> torch.Tensor:
    """[B, K, 3] landmarks in a size x size crop of ``rois`` -> [B, K, 3] image pixels (z scaled as x)."""
    x = lm[..., 0] / size - 0.5
    y = lm[..., 1] / size - 0.5
    cx, cy, w, h, a = [r[:, None] for r in rois.unbind(-1)]
    c, s = torch.cos(a), torch.sin(a)
    px = (c * x - s * y) * w + cx
    py = (s * x + c * y) * h + cy
    pz = lm[..., 2] / size * w
    return torch.stack([px, py, pz], -1)


class FaceMesh(torch.nn.Module):
    """mediapipe's attention face mesh (what ``refine_landmarks=True`` runs): 478 landmarks per ROI."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net
        for name, idx in (("lips", LIPS), ("eye_right", EYE_RIGHT), ("eye_left", EYE_LEFT)):
            self.register_buffer(name, torch.tensor(idx), persistent=False)

    def forward(self, images: torch.Tensor, rois: torch.Tensor, index: Optional[torch.Tensor] = None):
        """Landmarks of the face in each ROI.

        Args:
            images: [N, 3, H, W] (0..255); rois: [B, 5]; index: [B] image of each ROI (default b).

        Returns:
            ([B, 478, 3] float64 image pixels (z in the same units), [B] face presence in [0, 1]).
        """
        with _threads(images):
            return self._forward(images, rois, index)

    @torch.inference_mode()
    def _forward(self, images, rois, index):
        x = warp_rois(images, rois, MESH_SIZE, MESH_SIZE, border="border", index=index).div_(255.0)
        out = self.net(x)
        B = x.shape[0]
        lm = torch.empty(B, 478, 3, dtype=torch.float64, device=x.device)
        lm[:, :468] = out["output_mesh_identity"].reshape(B, 468, 3).double()
        for key, idx in (("output_lips", self.lips), ("output_left_eye", self.eye_right),
                         ("output_right_eye", self.eye_left)):
            lm[:, idx, :2] = out[key].reshape(B, -1, 2).double()
        for key, irange, eye in (("output_left_iris", IRIS_RIGHT, self.eye_right),
                                 ("output_right_iris", IRIS_LEFT, self.eye_left)):
            lm[:, irange.start:irange.stop, :2] = out[key].reshape(B, 5, 2).double()
            lm[:, irange.start:irange.stop, 2] = lm[:, eye[:EYE_CONTOUR_POINTS], 2].mean(1, keepdim=True)
        presence = torch.sigmoid(out["conv_faceflag"].reshape(B).double())
        return _project(lm, rois.double(), MESH_SIZE), presence


def roi_moved(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> torch.Tensor:
    """[B, 5], [B, 5] -> [B] bool: centre, side or rotation (as arc at the side) differ by more than
    ``tolerance`` of the side."""
    side = b[:, 2]
    shift = (a[:, :2] - b[:, :2]).norm(dim=-1)
    turn = torch.remainder(a[:, 4] - b[:, 4] + math.pi, 2 * math.pi) - math.pi
    return (shift > tolerance * side) | ((a[:, 2] - side).abs() > tolerance * side) | (turn.abs() > tolerance)


def landmark_rois(landmarks: torch.Tensor) -> torch.Tensor:
    """[B, N, 2+] landmarks -> [B, 5] the next frame's ROIs (mediapipe's tracking ROI)."""
    return _rect_from_points(landmarks[..., :2], ROI_ROTATION_POINTS[0], ROI_ROTATION_POINTS[1],
                             MESH_ROI_SCALE)


# ------------------------------------------------------------------------- segmentation

SELFIE_MODELS = {0: ("selfie_segmentation", 256, 256), 1: ("selfie_segmentation_landscape", 256, 144)}


class SelfieSegmenter(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, selection: int):
        super().__init__()
        self.net = net
        _, self.w, self.h = SELFIE_MODELS[selection]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] (0..255) -> [B, H, W] person probability."""
        with _threads(images):
            return self._forward(images)

    @torch.inference_mode()
    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        B, _, H, W = images.shape
        roi = torch.tensor([[W / 2.0, H / 2.0, float(W), float(H), 0.0]], device=images.device).expand(B, 5)
        x = warp_rois(images, roi, self.w, self.h, border="zeros").div_(255.0)
        mask = next(iter(self.net(x).values())).float()[..., 0]          # [B, h, w]
        mask = F.interpolate(mask[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        return mask.clamp(0.0, 1.0)
