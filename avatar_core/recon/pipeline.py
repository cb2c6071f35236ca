"""``reconstruct``: one photo -> an animatable multi-LOD Gaussian head avatar (optimisation).

Stages (each timed in the report): head model, face (detect, landmarks, crop, matte), fit
(camera, identity, expression, pose), init (Gaussians from the photo, see ``recon.init``),
optimise (differentiable rendering coarse to fine, see ``recon.optimise``), refiner (trained
jointly and kept only if it helps held-out pixels, see ``recon.refine``), evaluate, save.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from avatar_core.devices import resolve_device
from avatar_core.errors import AvatarError
from avatar_core.gaussians.avatar import Avatar
from avatar_core.gaussians.build import build_avatar
from avatar_core.head.model import HeadModel
from avatar_core.metrics import psnr, ssim
from avatar_core.progress import Progress, as_progress
from avatar_core.recon.config import ReconConfig, get_config
from avatar_core.recon.init import (SourceView, attach_plane, chin_height, concat_points, gaussian_visibility, hair_bind_faces,
                                    init_colours, init_head_scales, lod_chain, plane_points, split_vertices)
from avatar_core.recon.optimise import PhotoFit, holdout_grid, transfer_lod
from avatar_core.recon.report import ReconReport
from avatar_core.recon.threads import ThreadGovernor
from avatar_core.regions import REGION_HEAD, REGION_SHOULDER

log = logging.getLogger(__name__)

# facing (cosine to the source camera) below which a head Gaussian seen outside the matte
# stays opaque (see initial_avatar)
EDGE_ON = 0.45


class _Timer:
    def __init__(self, timings: dict):
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def check_output_path(path) -> None:
    """Raise AvatarError now, before minutes of work, if the avatar cannot be written to ``path``."""
    from avatar_core.atomic import check_writable
    p = Path(path)
    if p.is_dir():
        raise AvatarError(f"Cannot write the avatar file {str(p)!r}: it is a folder; expected a file path "
                          "such as OUT.avatar.")
    check_writable(p, "avatar file")


def _load_head(head) -> HeadModel:
    if isinstance(head, HeadModel):
        return head
    from avatar_core.head import load_head
    return load_head(head)


def source_view(portrait, fit) -> SourceView:
    """The portrait crop and the fitted camera/parameters as tensors."""
    image = torch.as_tensor(np.ascontiguousarray(portrait.image), dtype=torch.float32)
    alpha = torch.as_tensor(np.ascontiguousarray(portrait.alpha), dtype=torch.float32)
    if hasattr(fit, "frame_params"):      # FitResult over T frames (T = 1 for a photo)
        params, camera = fit.frame_params(0), fit.frame_camera(0)
    else:
        params, camera = fit.params(), fit.camera
    params = {k: v.detach().float().reshape(1, *v.shape[-2 if k == "pose" else -1:]) for k, v in params.items()}
    inside = getattr(portrait, "inside", None)
    inside = None if inside is None else torch.as_tensor(np.ascontiguousarray(inside)).bool()
    return SourceView(image, alpha, camera, params, inside)


def gaze_ahead(view: SourceView, head: HeadModel) -> SourceView:
    """The source view with the eye-look units at 0: the iris is painted where the photo shows
    it (``recon.interior``), so the avatar looks as the person does with its eyes at rest and
    a gaze unit turns them from there by its full angle (the single-photo fit's eye-look
    values mostly absorb where the head model's eyeballs sit, not where the person looks)."""
    names = list(head.expr_names)
    look = [i for i, n in enumerate(names) if n.startswith("eyeLook")]
    if not look or head.name != "open":
        return view
    expr = view.params["expression"].clone()
    expr[:, look] = 0.0
    return SourceView(view.image, view.alpha, view.camera, {**view.params, "expression": expr}, view.inside)


def paint_interior(avatar: Avatar, head: HeadModel, view: SourceView, vis, landmarks):
    """Mouth interior, eyeballs and lids painted (``recon.interior``); returns the [N] bool
    mask of Gaussians painted outright (their colours are kept out of the photo fit) and the
    eyeballs' white for ``recon.interior.shade_sclera`` after the fit (None without regions)."""
    from avatar_core.recon.interior import fit_teeth, head_regions, paint_avatar
    regions = head_regions(head)
    if regions is None:
        return torch.zeros(avatar.num_gaussians, dtype=torch.bool), None
    fit_teeth(avatar, regions)
    seen = vis.seen.float() * ((vis.facing + 0.05) / 0.35).clamp(0.0, 1.0)
    lm = None if landmarks is None else np.asarray(landmarks, dtype=np.float64)
    summary = paint_avatar(avatar, regions, view.image.cpu().numpy(), view.alpha.cpu().numpy(), lm, seen,
                           vis.uv, source=(view.params, view.camera))
    locked = summary.pop("locked")
    # the eyeball the photo sees is refined by it (the iris' own pattern, its reflections): with
    # the veil of split Gaussians gone from the eye openings, it is the only thing seen there
    eyeball = summary.pop("eyeball")
    locked &= ~(eyeball & (seen > 0.5))
    sclera = summary.pop("sclera")
    log.info("painted the mouth interior, eyes and lids: %s", summary)
    return locked, sclera


def initial_avatar(head: HeadModel, fit, view: SourceView, cfg: ReconConfig, landmarks=None, bust=None):
    """Build the avatar on the fitted head and initialise every Gaussian from the photo.

    ``landmarks`` [478, 2+]: the portrait's face-mesh points in crop pixels (they tell what
    the photo shows of the mouth and eyes); None paints them from priors alone. ``bust``: the
    fitted bust (``recon.bust.source_bust``) that carries the shoulders, or None for a plane.
    Returns (avatar, facing [N]: cosine between each Gaussian's surface normal and the
    direction to the source camera, 1 for the plane ones; the LodChain of the head; locked
    [N] bool: Gaussians whose painted colour the photo fit must keep; held [N] bool: Gaussians
    whose opacity it must keep (edge-on skin, split Gaussians over the eye openings); pinned [N]
    bool: Gaussians whose size and place it must keep (the lids' split Gaussians, shrunk off the
    eye openings); unseen [N] bool: the bust's back and sides and the hair shell, which the
    photo does not show; the eyeballs' white for ``recon.interior.shade_sclera``, or None).
    """
    shape = fit.shape.float()
    with torch.no_grad():
        out = head(shape=shape[None], **view.params)
    verts = out.vertices[0]
    from avatar_core.render.mesh import rasterize_mesh
    cam = view.camera
    raster = rasterize_mesh(verts, head.faces, cam.K[0], cam.viewmat[0], cam.width, cam.height)
    chain = lod_chain(head.faces, head.num_vertices, max(cfg.lods))
    box = np.asarray(fit.face_size_px)
    plane = plane_points(view, raster, verts, chin_height(head, verts), cfg.plane_stride, float(box), bust=bust)
    from avatar_core.recon.interior import (LASH_FRINGE, blink_moved, eye_opening_distance, eye_opening_heights,
                                            head_regions, in_eye_openings, mouth_backstop, near_inner_corners,
                                            on_regions, photo_tone)
    lm = None if landmarks is None else np.asarray(landmarks, dtype=np.float64)
    regions = head_regions(head)
    if regions is not None:
        tone = photo_tone(view.image.cpu().numpy(), view.alpha.cpu().numpy(), lm)
        plane = concat_points([plane, mouth_backstop(verts, head.faces, regions, tone)])
    avatar = build_avatar(head, shape=shape, lods=cfg.lods, channels=cfg.channels,
                          split_levels=cfg.split_levels, split_k=cfg.split_k,
                          split_vertices=split_vertices(head, cfg.split_fraction),
                          shoulder_points=plane.points if plane.count else None)
    attach_plane(avatar, plane, view, verts, hair_bind_faces(head, verts, regions))
    lod_edge = init_head_scales(avatar, chain, cfg.lods)
    vis = gaussian_visibility(avatar, view, raster, verts)
    f = float(cam.fx[0])
    z = float(vis.z[avatar.region == REGION_HEAD].median())
    groups, footprint = {}, {}
    for k in cfg.lods:
        groups[f"lod{k}"] = torch.nonzero((avatar.lod == k) & (avatar.region == REGION_HEAD))[:, 0]
        footprint[f"lod{k}"] = 0.35 * lod_edge[k] * f / z
    split = torch.nonzero(avatar.split_layer >= 0)[:, 0]
    groups["split"] = split
    footprint["split"] = 0.35 * lod_edge[max(cfg.lods)] * f / z
    init_colours(avatar, view, vis, groups, footprint, fill_from=f"lod{max(cfg.lods)}")
    locked, sclera = paint_interior(avatar, head, view, vis, landmarks)
    # the bust's unseen back and sides keep the colours carried round from its front
    unseen = torch.zeros(avatar.num_gaussians, dtype=torch.bool)
    unseen[torch.nonzero(avatar.region == REGION_SHOULDER)[:, 0][~plane.seen]] = True
    locked |= unseen
    # opacity: solid head, except where the photo sees the mesh outside the person's matte
    with torch.no_grad():
        from avatar_core.recon.init import sample_image
        a = sample_image(view.alpha[..., None], vis.uv)[:, 0]
        face_bound = (avatar.region != REGION_SHOULDER)
        outside = vis.seen & (a < 0.3) & face_bound
        # where the mesh reaches past the matte while seen edge-on (the jaw's side under the
        # ear, the side of the neck), the person's surface is just behind it: made
        # transparent it would open a hole into the mouth and eyes of a turned head, so it
        # stays opaque skin coloured from its well-seen neighbours (``init_colours``)
        edge_on = outside & (vis.facing < EDGE_ON) & (avatar.region == REGION_HEAD)
        avatar.opacity_logit[face_bound] = 3.0
        avatar.opacity_logit[avatar.split_layer >= 0] = -1.0
        avatar.opacity_logit[outside & ~edge_on] = -3.0
        locked |= edge_on
        avatar.soft_mask[avatar.split_layer >= 1] = 1.0
        # split Gaussians over the photo's eye openings would hold the photo's iris in place as a
        # veil in front of the eyeball (a glance then barely shows): there the eyeball is seen
        in_eyes = in_eye_openings(vis.uv, lm, view.image.shape[0])
        eye_split = (avatar.split_layer >= 0) & in_eyes
        pinned = torch.zeros_like(eye_split)
        # so would the skin of the fitted lids where it covers the photo's eye opening (the
        # lower lid and the corners; a blink does not move them): painted with the iris by the
        # fit, it stayed put when the eyeball turned; the inner corners keep theirs (the caruncle
        # does not turn with the eye, and without it the eyeball's white showed there)
        # (those the photo sees there: the back of the head falls in the openings too, and
        # hiding it opened two eye-shaped holes in the back of every head)
        if regions is not None:
            eye_split |= (in_eyes & vis.seen & face_bound & ~on_regions(avatar, regions) & ~blink_moved(avatar)
                          & ~near_inner_corners(vis.uv, lm))
            # split Gaussians on the upper lids whose footprint (two sigmas) reached into the opening
            # were painted by the fit as a dark veil over the photo's iris that stayed there while
            # the eyeball turned (the landmarker then found the iris in it): they are shrunk to
            # reach no further into the opening than a lash fringe, and their size and place kept
            reach = 2.0 * f * torch.exp(avatar.log_scale.detach().cpu()).amax(1) / vis.z.clamp_min(1e-3)
            dist = eye_opening_distance(vis.uv, lm)
            fringe = LASH_FRINGE * eye_opening_heights(lm)
            veil = (avatar.split_layer >= 0) & blink_moved(avatar) & (dist < reach) & ~eye_split
            shrink = ((dist + fringe) / reach).clamp(max=1.0)
            avatar.log_scale[veil] += torch.log(shrink[veil].clamp_min(1e-3))[:, None].to(avatar.log_scale.dtype)
            pinned |= veil
            # the eyeballs' split Gaussians are hidden: turned with the eyeball they showed as a
            # brown smudge beside the iris (an eyeball is rigid, so a split has nothing to follow,
            # and the eyeball's own Gaussians are painted)
            eye_split |= (avatar.split_layer >= 0) & on_regions(avatar, {k: regions[k] for k in ("eye_L", "eye_R")})
        avatar.opacity_logit[eye_split] = -8.0
    return avatar, vis.facing, chain, locked, edge_on | eye_split, pinned, unseen, sclera


def evaluate(fitter: PhotoFit, lods, size: int) -> Tuple[dict, dict]:
    """Masked PSNR/SSIM per LOD at the source camera, ``size`` px."""
    tgt = fitter.target(size)
    mask = (tgt.alpha[..., 0] > 0.5)
    ps, ss = {}, {}
    with torch.no_grad():
        for k in lods:
            out = fitter.render(k, size)
            img = out.image[..., :3].clamp(0, 1)
            ps[k] = float(psnr(img, tgt.rgb, mask=mask)[0])
            ss[k] = float(ssim(img, tgt.rgb, mask=mask)[0])
    return ps, ss


def _load_render_kernels(dev: torch.device, prog: Progress, timed: "_Timer") -> None:
    """On CUDA, load gsplat's kernels before the optimisation, saying so when they must be built
    first (the first run on a machine), rather than stalling inside the first step."""
    from avatar_core.render import resolve_backend
    if dev.type != "cuda" or resolve_backend("auto", dev) != "gsplat":
        return
    import cuda_backend
    if not cuda_backend.kernels_built():
        with timed("kernels"):
            prog(0.0, "loading gsplat's CUDA kernels (the first run on a machine builds them: about a minute)")
            cuda_backend.load_kernels()


def reconstruct_from_fit(head_model: HeadModel, portrait, fit, cfg: ReconConfig, dev: torch.device,
                         prog: Progress, report: ReconReport) -> Avatar:
    """Everything after the head fit: init, optimisation, refiner, evaluation.

    Fills ``report`` (metrics, timings) and returns the avatar on ``dev`` with its ``source``
    set (camera and parameters).
    """
    timed = _Timer(report.timings)
    _load_render_kernels(dev, prog, timed)
    with timed("init"):
        prog(0.0, "initialising Gaussians from the photo")
        view = source_view(portrait, fit)
        view = gaze_ahead(view, head_model)
        head, bust = head_model, None
        if cfg.bust:
            # the body stands upright in the photo, the head tilted on its neck (``head.bust``):
            # the lower neck bent upright in depth, the bust under it
            from avatar_core.head.bust import upright_neck
            from avatar_core.recon.bust import body_up, source_bust
            head = upright_neck(head_model, fit.shape.float(), view.params["pose"],
                                body_up(view.camera, view.params["pose"]), eye=view.camera.position[0])
            bust = source_bust(head_model, fit.shape.float(), view.params, view.camera, view.alpha, bent_head=head)
        avatar, facing, chain, locked, held, pinned, _, sclera = initial_avatar(head, fit, view, cfg,
                                                       getattr(portrait, "landmarks", None), bust=bust)
        avatar.head_identity = head_model.identity()
    avatar = avatar.to(dev)
    dview = SourceView(view.image, view.alpha, view.camera.to(device=dev),
                       {k: v.to(dev) for k, v in view.params.items()}, view.inside)
    governor = ThreadGovernor(cfg.threads, enabled=dev.type == "cpu")
    fitter = PhotoFit(avatar, dview, holdout_grid(cfg.holdout_fraction), facing.to(dev), dev, governor)
    fitter.colour_free &= ~locked.to(dev)
    fitter.opacity_free &= ~held.to(dev)
    fitter.shape_free &= ~pinned.to(dev)
    # progress weights: an Adam step, a CGLS iteration at colour_size (~2 renders, more pixels)
    cg = 2.0 * (cfg.colour_size / max(cfg.opt_size, 1)) ** 2 / 4
    total = sum(cfg.steps) + cg * sum(cfg.colour_iters) + cfg.refiner_steps
    done = 0
    span = (0.03, 0.93)

    def sub(n):
        a = span[0] + (span[1] - span[0]) * done / max(total, 1)
        b = span[0] + (span[1] - span[0]) * (done + n) / max(total, 1)
        return prog.sub(a, b)

    lods = list(cfg.lods)
    with timed("optimise"):
        for i, k in enumerate(lods):
            if i > 0:
                transfer_lod(avatar, dview, chain, lods[i - 1], k)
            n = cfg.steps[min(i, len(cfg.steps) - 1)]
            fitter.run_stage(k, n, cfg.opt_size, train_shared=(i == 0), progress=sub(n),
                             lr_scale=cfg.lr_scale, label=f"LOD {k}")
            done += n
            c = cfg.colour_iters[min(i, len(cfg.colour_iters) - 1)]
            # the shared split Gaussians are fixed after stage 0 (they serve every LOD); the
            # plane ones are re-solved with each finer head (the head/plane seams sharpen)
            fitter.solve_colours(k, cfg.colour_size, c, fitter.trainable_mask(k, shared=(i == 0)),
                                 progress=sub(cg * c), label=f"LOD {k}")
            done += cg * c
        if sclera is not None:
            from avatar_core.recon.interior import shade_sclera
            shade_sclera(avatar, sclera)
    if cfg.refiner and cfg.refiner_steps:
        with timed("refiner"):
            from avatar_core.recon.refine import train_refiner
            report.refiner = train_refiner(fitter, lods[-1], cfg, progress=sub(cfg.refiner_steps))
        done += cfg.refiner_steps
    with timed("evaluate"):
        prog(0.94, "measuring the source-view fidelity")
        governor.begin()
        report.psnr, report.ssim = evaluate(fitter, lods, cfg.eval_size)
        report.num_gaussians = avatar.lod_counts()
    avatar.source = {
        "K": view.camera.K[0].detach().cpu().clone(), "viewmat": view.camera.viewmat[0].detach().cpu().clone(),
        "width": torch.tensor(view.camera.width), "height": torch.tensor(view.camera.height),
        "expression": view.params["expression"][0].cpu().clone(), "pose": view.params["pose"][0].cpu().clone(),
        "translation": view.params["translation"][0].cpu().clone(),
    }
    return avatar


def reconstruct(photo, out_path: Optional[Union[str, os.PathLike]] = None, head="open",
                quality: Union[str, ReconConfig] = "default", device="auto", face_index: Optional[int] = None,
                progress=None, cancel=None) -> Tuple[Avatar, ReconReport]:
    """Reconstruct an animatable Gaussian head avatar from one photo.

    Args:
        photo: image path, [H, W, 3] array or PIL image.
        out_path: where to write the avatar file (checked before any work, written atomically
            at the end; nothing is left there on error or cancel). None = do not write.
        head: "open" (the built-in head), a FLAME file path, or a HeadModel.
        quality: "fast", "default", "best" (or a ReconConfig).
        device: "auto", "cpu" or "cuda".
        face_index: which face when the photo has several (0 = largest, the default).
        progress: ``progress(fraction, message)`` callback; cancel: threading.Event.
    Returns:
        (avatar, report). The avatar's ``source`` holds the fitted source camera ("K" [3, 3],
        "viewmat" [4, 4], "width", "height") and parameters ("expression" [E], "pose" [J, 3],
        "translation" [3]); its ``info`` holds the report's metrics.
    Raises:
        ImageError, FaceNotFoundError, FaceTooSmallError (bad photo), AvatarError (unwritable
        output, bad options), Cancelled (the cancel event was set).
    """
    cfg = get_config(quality)
    prog = as_progress(progress, cancel)
    if cancel is not None and isinstance(progress, Progress):
        prog = Progress(progress.callback, cancel, progress.start, progress.end)
    if out_path is not None:
        check_output_path(out_path)
    dev = torch.device(resolve_device(device))
    old_threads = torch.get_num_threads()
    # the face pipeline and the fit work on small tensors: one torch thread is as fast and is
    # not slowed down by a busy machine; the optimisation loops choose their own (see threads.py)
    torch.set_num_threads(1)
    report = ReconReport(quality=cfg.name, device=str(dev))
    timed = _Timer(report.timings)
    try:
        prog.check()
        with timed("head"):
            prog(0.0, "loading the head model")
            head_model = _load_head(head).to(dtype=torch.float32)
        with timed("face"):
            from avatar_core.face import process_portrait
            portrait = process_portrait(photo, size=cfg.crop_size, face_index=face_index,
                                        progress=prog.sub(0.0, 0.04))
            report.warnings.extend(portrait.warnings)
        with timed("fit"):
            from avatar_core.fit.correspondence import landmark_embedding
            from avatar_core.fit.single import fit_portrait
            prog(0.04, "landmark correspondences")
            emb = landmark_embedding(head_model)
            fit = fit_portrait(head_model, portrait, emb, steps=cfg.fit_steps, progress=prog.sub(0.04, 0.1))
            report.landmark_error_px = float(fit.median_error_px)
            report.landmark_error_frac = float(fit.median_error_frac)
            report.face_size_px = float(fit.face_size_px)
            if fit.median_error_frac > 0.05:
                report.warnings.append(f"The head model fits the face loosely (landmark error "
                                       f"{100 * fit.median_error_frac:.1f}% of the face); expect a weaker likeness.")
        avatar = reconstruct_from_fit(head_model, portrait, fit, cfg, dev, prog.sub(0.1, 0.95), report)
        avatar = avatar.to("cpu")
        report.source_image = np.asarray(portrait.image)
        report.source_alpha = np.asarray(portrait.alpha)
        avatar.info = {"reconstruction": "optimisation", **report.as_dict()}
        if out_path is not None:
            with timed("save"):
                prog(0.97, "writing the avatar file")
                from avatar_core.io import save_avatar
                save_avatar(avatar, out_path)
                avatar.info["timings_s"] = {k: round(v, 2) for k, v in report.timings.items()}
        prog(1.0, "done")
        return avatar, report
    finally:
        torch.set_num_threads(old_threads)
