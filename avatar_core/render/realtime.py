"""The per-frame path of a viewer: parameters -> animate -> rasterise -> refine -> RGB.

``FramePipeline`` fixes everything that does not change between frames (avatar, LOD, the
Gaussian selection, camera, image size, refiner) so that a frame costs as little as possible:

- On CUDA it rasterises with gsplat and a fixed-capacity tile binning
  (:mod:`cuda_backend.static_binning`), so no step reads anything back to the host, and it
  records the whole frame into a CUDA graph: a frame is then three small parameter copies and
  one graph replay. If ``Avatar.animate`` is not capture-safe (it synchronises, e.g. to check
  its inputs for NaN), only rasterise + refine are captured and animate runs eagerly; if that
  fails too, everything runs eagerly. ``mode`` says which one is in use and ``fallback_reason`` why.
- On the CPU it runs the same steps eagerly with the torch rasterizer.

The returned image is a buffer the next call overwrites: clone it to keep it.

    pipe = FramePipeline(avatar.to("cuda"), camera, lod=2, refiner=refiner)
    rgb = pipe(expression, pose, translation)   # [1, H, W, 3] on the device
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from avatar_core.camera import Camera
from avatar_core.errors import ParameterError
from avatar_core.render.refiner import Refiner

log = logging.getLogger(__name__)

MODES = ("graph-full", "graph-render", "eager")


class FramePipeline:
    """A viewer's frame loop for one avatar, LOD, camera and refiner setting.

    Args:
        avatar: an ``Avatar`` already on the target device.
        camera: a batch-1 Camera (moved to the avatar's device).
        lod: level of detail to draw.
        refiner: a Refiner or None (then RGB = first three feature channels, and only those are
            rasterised).
        background: a number or [3] RGB (the refiner sees it in channel 0..2, zeros elsewhere).
        backend: "auto" (gsplat on CUDA, torch on CPU), "torch" or "gsplat".
        cuda_graph: "auto" (full, else render-only, else eager), "full", "render" or "none".
        refiner_dtype: weights/activations dtype of the refiner on CUDA (bf16 by default).
        capacity: intersection buffer size for static binning (None: measured at setup x 1.5).
        compile: on CUDA, run ``Avatar.animate`` and the tile binning through ``torch.compile``
            (fuses their many small kernels; the first frame then takes tens of seconds to compile,
            later processes reuse the on-disk cache). Falls back to eager if compiling fails.
    """

    def __init__(self, avatar, camera: Camera, lod: int = 2, refiner: Optional[Refiner] = None,
                 background=1.0, backend: str = "auto", cuda_graph: str = "auto",
                 refiner_dtype: torch.dtype = torch.bfloat16, capacity: Optional[int] = None,
                 tile_size: int = 16, compile: bool = False):
        from avatar_core.render import resolve_backend

        self.avatar = avatar
        self.device = avatar.device
        if camera.batch != 1:
            raise ParameterError(f"FramePipeline draws one view; got a camera batch of {camera.batch}.")
        self.camera = camera.to(self.device, torch.float32)
        self.lod = int(lod)
        self.backend = resolve_backend(backend, self.device)
        self.index = avatar.select(self.lod)  # the Gaussians drawn at this LOD, fixed per pipeline
        self.num_gaussians = int(self.index.numel())
        C = avatar.channels
        self.channels = C if refiner is not None else 3
        bg = torch.zeros(self.channels, device=self.device)
        bg[:3] = torch.as_tensor(background, dtype=torch.float32, device=self.device).expand(3)
        self.background = bg
        self.refiner = refiner
        if refiner is not None:
            if refiner.config.in_channels != C:
                raise ParameterError(f"The refiner takes {refiner.config.in_channels} channels but the avatar "
                                     f"has {C}.")
            refiner = refiner.to(self.device)
            if self.device.type == "cuda":
                refiner.optimize_for_inference(refiner_dtype, channels_last=True)
            else:
                refiner.eval()
        self.tile_size = tile_size
        E, J = avatar.num_expr, avatar.rig_weights.shape[1]
        self._expr = torch.zeros(1, E, device=self.device)
        self._pose = torch.zeros(1, J, 3, device=self.device)
        self._trans = torch.zeros(1, 3, device=self.device)
        self._overflow = torch.zeros((), dtype=torch.bool, device=self.device)
        self.capacity = capacity
        self.mode = "eager"
        self.fallback_reason: Optional[str] = None
        self._graph = None
        self._out = None
        self._animate_fn = avatar.animate
        self.compiled = False
        if self.backend == "gsplat":
            with torch.no_grad():
                if compile:
                    self._try_compile()
                if self.capacity is None:
                    self.capacity = self._measure_capacity()
                self._setup_cuda(cuda_graph)

    # ------------------------------------------------------------------ steps
    def _animate(self):
        return self._animate_fn(expression=self._expr, pose=self._pose, translation=self._trans,
                                   lod=self.lod, index=self.index)

    def _raster(self, frame) -> torch.Tensor:
        """frame -> feature image [1, H, W, channels]."""
        cam = self.camera
        feats = frame.features[..., :self.channels]
        if self.backend == "gsplat":
            import cuda_backend
            flags = []
            img, _ = cuda_backend.rasterize(
                frame.means, frame.quats, frame.scales, frame.opacities, feats,
                cam.viewmat[:, None], cam.K[:, None], cam.width, cam.height,
                background=self.background[None, None], tile_size=self.tile_size, binning="static",
                capacity=self.capacity, overflow_out=flags, compile_binning=self.compiled)
            self._overflow |= flags[0]
            return img[:, 0]
        from avatar_core.gaussians.frame import GaussianFrame
        from avatar_core.render import render
        f = GaussianFrame(frame.means, frame.quats, frame.scales, frame.opacities, feats)
        return render(f, cam, background=self.background, backend="torch", with_depth=False,
                      check_finite=False).image

    def _refine(self, img: torch.Tensor) -> torch.Tensor:
        if self.refiner is None:
            return img
        return self.refiner(img)

    def _full(self) -> torch.Tensor:
        return self._refine(self._raster(self._animate()))

    # ------------------------------------------------------------------ CUDA setup
    def _try_compile(self):
        try:
            fn = torch.compile(self.avatar.animate, dynamic=False)
            fn(expression=self._expr, pose=self._pose, translation=self._trans, lod=self.lod, index=self.index)
            self._animate_fn = fn
            self.compiled = True
        except Exception as exc:  # no Triton, no compiler, an unsupported construct...
            self._animate_fn = self.avatar.animate
            self.compiled = False
            self.fallback_reason = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            log.warning("FramePipeline: %s; running eagerly", self.fallback_reason)

    def _measure_capacity(self) -> int:
        from cuda_backend.gsplat_backend import opencv_to_gsplat_K
        from cuda_backend.static_binning import count_intersections
        from gsplat.cuda._wrapper import fully_fused_projection
        frame = self._animate()
        cam = self.camera
        radii, means2d, _, _, _ = fully_fused_projection(
            frame.means, None, frame.quats, frame.scales, cam.viewmat[:, None], opencv_to_gsplat_K(cam.K)[:, None],
            cam.width, cam.height, opacities=frame.opacities)
        n = int(count_intersections(means2d, radii, cam.width, cam.height, self.tile_size))
        return int(n * 1.5) + 16384

    def _sync_free(self, fn) -> Optional[str]:
        """None if ``fn`` runs without a host synchronisation, else the error text."""
        torch.cuda.synchronize()
        prev = torch.cuda.get_sync_debug_mode()
        try:
            torch.cuda.set_sync_debug_mode("error")
            fn()
            return None
        except Exception as exc:  # the debug mode raises RuntimeError at the first sync
            return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode(prev)

    def _capture(self, fn):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels, cuDNN/cuBLAS handles, the allocator
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    def _setup_cuda(self, cuda_graph: str):
        if cuda_graph not in ("auto", "full", "render", "none"):
            raise ParameterError(f"cuda_graph must be auto, full, render or none; got {cuda_graph!r}.")
        try:
            self._full()  # first run outside the checks: compiles, loads kernels
        except Exception as exc:
            if not self.compiled:
                raise
            self.fallback_reason = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
            log.warning("FramePipeline: %s; running eagerly", self.fallback_reason)
            self._animate_fn, self.compiled = self.avatar.animate, False
            self._full()
        reasons = [self.fallback_reason] if self.fallback_reason else []
        if cuda_graph in ("auto", "full"):
            why = self._sync_free(self._full)
            if why is None:
                try:
                    self._graph, self._out = self._capture(self._full)
                    self.mode = "graph-full"
                    return
                except Exception as exc:
                    why = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            reasons.append(f"animate+render not capturable ({why})")
            log.info("full-frame CUDA graph unavailable: %s", why)
        if cuda_graph in ("auto", "render"):
            frame = self._animate()
            self._static = [t.clone() for t in (frame.means, frame.quats, frame.scales, frame.opacities,
                                                 frame.features)]

            def render_only():
                from avatar_core.gaussians.frame import GaussianFrame
                return self._refine(self._raster(GaussianFrame(*self._static)))

            why = self._sync_free(render_only)
            if why is None:
                try:
                    self._graph, self._out = self._capture(render_only)
                    self.mode = "graph-render"
                    self.fallback_reason = "; ".join(reasons) or None
                    return
                except Exception as exc:
                    why = f"capture failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
            reasons.append(f"render not capturable ({why})")
        self.mode = "eager"
        self.fallback_reason = "; ".join(reasons) or None

    # ------------------------------------------------------------------ per frame
    def set_params(self, expression=None, pose=None, translation=None) -> None:
        """Copy this frame's parameters into the pipeline's input buffers (no host sync for device tensors)."""
        for name, value, buf in (("expression", expression, self._expr), ("pose", pose, self._pose),
                                 ("translation", translation, self._trans)):
            if value is None:
                continue
            v = torch.as_tensor(value, dtype=torch.float32)
            if v.numel() != buf.numel():
                raise ParameterError(f"{name} has {v.numel()} values; expected {list(buf.shape)}.")
            if v.device.type == "cpu" and not bool(torch.isfinite(v).all()):
                raise ParameterError(f"{name} contains NaN or infinite values; expected finite numbers.")
            buf.copy_(v.reshape(buf.shape), non_blocking=True)

    @torch.no_grad()
    def __call__(self, expression=None, pose=None, translation=None) -> torch.Tensor:
        """One frame: RGB [1, H, W, 3] on the device (float32; overwritten by the next call)."""
        self.set_params(expression, pose, translation)
        if self.mode == "graph-full":
            self._graph.replay()
            return self._out
        if self.mode == "graph-render":
            frame = self._animate()
            for dst, src in zip(self._static, (frame.means, frame.quats, frame.scales, frame.opacities,
                                               frame.features)):
                dst.copy_(src)
            self._graph.replay()
            return self._out
        return self._full()

    def overflowed(self) -> bool:
        """True if a frame so far needed more tile intersections than ``capacity`` (syncs; call rarely)."""
        return bool(self._overflow)
