"""Feed-forward reconstruction: photo -> avatar in one network pass (needs a checkpoint).

The entry point for ``reconstruct --method feedforward --checkpoint CKPT``::

    from avatar_core.recon.feedforward import reconstruct_feedforward
    avatar = reconstruct_feedforward(portrait, fit, "runs/ff/checkpoints")  # -> Avatar (every LOD)

``portrait`` is a ``FacePortrait`` (``avatar_core.face.process_portrait``) and ``fit`` its
``FitResult`` (``avatar_core.fit.single.fit_portrait``) with the same head model the network
was trained for. ``reconstruct_photo`` runs the whole chain from a file. A missing, foreign
or mismatched checkpoint raises ``CheckpointError`` with one sentence saying which.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from avatar_core.camera import scale_intrinsics
from avatar_core.errors import CheckpointError
from avatar_core.gaussians.avatar import Avatar
from avatar_core.progress import as_progress
from avatar_core.recon.feedforward.network import FeedForwardNet

log = logging.getLogger(__name__)

_CACHE: Dict = {}


def load_feedforward(checkpoint, head=None, device=None) -> FeedForwardNet:
    """The network of ``checkpoint`` (a model file, step folder or run folder), cached per
    (file, modification time, device); in eval mode."""
    from avatar_core.recon.feedforward.model_file import load_network, resolve_model_file
    f = resolve_model_file(checkpoint)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    key = (str(f.resolve()), f.stat().st_mtime_ns, str(dev), id(head) if head is not None else None)
    if key not in _CACHE:
        _CACHE.clear()
        net = load_network(f, head=head, device=dev)
        net.eval()
        if dev.type == "cuda":
            net.amp_dtype = torch.bfloat16
        _CACHE[key] = net
    return _CACHE[key]


def source_batch(net: FeedForwardNet, image: np.ndarray, alpha: np.ndarray, K: torch.Tensor,
                 viewmat: torch.Tensor, shape: torch.Tensor, expression: torch.Tensor, pose: torch.Tensor,
                 translation: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The network's source inputs (batch 1) from a portrait crop.

    image [S, S, 3] float RGB in [0, 1]; alpha [S, S]; K [3, 3] for the S x S crop; viewmat [4, 4];
    shape [S'] ; expression [E]; pose [J, 3]; translation [3].
    """
    cfg = net.cfg
    dev = net.device
    size = cfg.image_size
    img = torch.as_tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None]
    a = torch.as_tensor(np.asarray(alpha), dtype=torch.float32).reshape(1, 1, *img.shape[-2:])
    S = img.shape[-1]
    if img.shape[-2] != img.shape[-1]:
        raise CheckpointError(f"The portrait crop must be square; got {img.shape[-1]} x {img.shape[-2]}.")
    if S != size:
        img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        a = F.interpolate(a, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    img = img * a + cfg.background * (1 - a)
    s = torch.zeros(1, net.rig.num_shape)
    shp = torch.as_tensor(shape, dtype=torch.float32).reshape(-1)
    n = min(shp.numel(), net.rig.num_shape)
    s[0, :n] = shp[:n]
    src_K = scale_intrinsics(torch.as_tensor(K).reshape(3, 3).float(), size / S)
    batch = dict(src_image=img, src_alpha=a, src_K=src_K[None],
                 src_viewmat=torch.as_tensor(viewmat, dtype=torch.float32).reshape(1, 4, 4), shape=s,
                 src_expression=torch.as_tensor(expression, dtype=torch.float32).reshape(1, -1),
                 src_pose=torch.as_tensor(pose, dtype=torch.float32).reshape(1, -1, 3),
                 src_translation=(torch.zeros(1, 3) if translation is None
                                  else torch.as_tensor(translation, dtype=torch.float32).reshape(1, 3)))
    if batch["src_expression"].shape[1] != net.rig.num_expr:
        raise CheckpointError(f"The fit has {batch['src_expression'].shape[1]} expression coefficients but the "
                              f"network's head model has {net.rig.num_expr}; fit with the network's head model.")
    return {k: v.to(dev) for k, v in batch.items()}


@torch.no_grad()
def reconstruct_from_batch(net: FeedForwardNet, batch: Dict[str, torch.Tensor], info: Optional[dict] = None) -> Avatar:
    """One network pass over a source batch (batch 1) -> the Avatar with every LOD (on the CPU)."""
    pred = net.predict(batch, net.cfg.max_lod, all_lods=True)
    size = net.cfg.image_size
    # the same source keys the optimisation path writes (K, viewmat, width, height, parameters)
    source = {"K": batch["src_K"][0], "viewmat": batch["src_viewmat"][0],
              "width": torch.tensor(size), "height": torch.tensor(size), "shape": batch["shape"][0],
              "expression": batch["src_expression"][0], "pose": batch["src_pose"][0],
              "translation": batch["src_translation"][0]}
    return net.to_avatar(pred, 0, source={k: v.detach().cpu() for k, v in source.items()}, info=info)


def reconstruct_feedforward(portrait, fit, checkpoint, head=None, device=None, progress=None,
                            cancel=None) -> Avatar:
    """Photo -> avatar with a trained network.

    Args:
        portrait: FacePortrait (image [S, S, 3], alpha [S, S]).
        fit: FitResult for that portrait (camera batch 1 at S x S, shape, expression, pose).
        checkpoint: model file, step folder or run folder written by ``train``.
        head: the head model the fit used (checked against the checkpoint's).
    Returns:
        Avatar with LODs 0..max, split layers with soft masks, shoulder region, refiner weights.
    """
    p = as_progress(progress, cancel)
    p(0.0, "loading the network")
    net = load_feedforward(checkpoint, head=head, device=device)
    if head is not None and head.identity() != net.head_identity:
        raise CheckpointError(f"The checkpoint was trained for the head model {net.head_identity}, but the photo "
                              f"was fitted with {head.identity()}.")
    p(0.3, "predicting the avatar")
    t0 = time.perf_counter()
    batch = source_batch(net, portrait.image, portrait.alpha, fit.camera.K[0], fit.camera.viewmat[0], fit.shape,
                         fit.expression.reshape(-1), fit.pose.reshape(-1, 3),
                         getattr(fit, "translation", None))
    meta = getattr(net, "checkpoint_meta", {})
    info = {"method": "feedforward", "checkpoint": meta.get("file", str(checkpoint)), "checkpoint_step":
            int(meta.get("step", 0))}
    av = reconstruct_from_batch(net, batch, info)
    av.info["seconds"] = round(time.perf_counter() - t0, 4)
    p(1.0, "done")
    return av


def reconstruct_photo(path, checkpoint, head="open", size: int = 512, device=None, progress=None,
                      cancel=None) -> Avatar:
    """The whole chain from an image file: face crop + matte, single-image fit, network."""
    from avatar_core.face import process_portrait
    from avatar_core.fit.correspondence import landmark_embedding
    from avatar_core.fit.single import fit_portrait
    from avatar_core.head import load_head
    p = as_progress(progress, cancel)
    hm = load_head(head) if isinstance(head, str) else head
    portrait = process_portrait(path, size=size, progress=p.sub(0.0, 0.3))
    fit = fit_portrait(hm, portrait, landmark_embedding(hm), progress=p.sub(0.3, 0.7))
    return reconstruct_feedforward(portrait, fit, checkpoint, head=hm, device=device, progress=p.sub(0.7, 1.0))
