"""The "HeadSplat" render engine: F12, animation renders and the Rendered viewport.

Per frame it reads each visible avatar's shape-key values and pose bones from the
(evaluated) depsgraph, the camera (intrinsics from lens / sensor / shift / resolution,
extrinsics from ``matrix_world``, converted once in ``convert``) and calls
``render_core.render_views`` (avatar_core animate -> rasteriser -> refiner). Results are
scene-linear premultiplied RGBA with a "Depth" pass (camera z in metres, 1e10 where empty)
when the view layer asks for Z; the film is transparent when Render > Film > Transparent is on,
else the world colour is the background.

The viewport draws the same image as a GPU texture. On the CPU it renders at
``viewport_scale`` percent of the region and, while the view is moving, at 1/``navigate_divider``
of that, then redraws at full resolution once the view rests.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Tuple

import bpy
from blender_addon import lookup, prefs, storage

try:
    import numpy as np

    from blender_addon import params
    from blender_addon.pure import convert
except ImportError:  # a Blender whose Python lacks numpy: the engine registers; renders say why not
    np = convert = params = None

log = logging.getLogger(__name__)

ENGINE_ID = "HEADSPLAT"
REST_SECONDS = 0.3


def camera_setup(scene, camera_ob) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """(K [3, 3], world viewmat [4, 4], width, height) of a scene camera for a final render."""
    r = scene.render
    width = max(1, int(r.resolution_x * r.resolution_percentage / 100))
    height = max(1, int(r.resolution_y * r.resolution_percentage / 100))
    cam = camera_ob.data
    if cam.type != "PERSP":
        raise ValueError(f"HeadSplat renders perspective cameras only; {camera_ob.name!r} is {cam.type.lower()}.")
    K = convert.camera_intrinsics(cam.lens, cam.sensor_width, cam.sensor_height, cam.sensor_fit,
                                  cam.shift_x, cam.shift_y, width, height, r.pixel_aspect_x, r.pixel_aspect_y)
    view = convert.opencv_viewmat(np.array(camera_ob.matrix_world))
    return K, view, width, height


def background(scene) -> Optional[np.ndarray]:
    """The opaque background in sRGB, or None for a transparent film."""
    if scene.render.film_transparent:
        return None
    world = scene.world
    col = np.array(world.color[:3], np.float32) if world is not None else np.zeros(3, np.float32)
    return convert.linear_to_srgb(col)


def collect_views(depsgraph, viewmat_world: np.ndarray, final: bool, device: str, warn=None) -> list:
    """AvatarViews of every visible avatar in ``depsgraph``.

    An avatar is found through its point object (viewport; final renders with "Points in
    Final Renders" on) or, when the point object is skipped in final renders (the default),
    through its rig, which keeps the avatar's shape keys evaluated in the render depsgraph.
    """
    seen = set()
    views = []
    for inst in depsgraph.object_instances:
        ob_eval = inst.object
        orig = ob_eval.original
        if orig is None:
            continue
        matrix = np.array(inst.matrix_world)
        if orig.type == "MESH" and orig.headsplat.is_avatar:
            found = [(orig, ob_eval, _evaluated(orig.headsplat.rig, depsgraph), matrix, ob_eval.headsplat)]
        elif orig.type == "ARMATURE" and orig.headsplat.shape_keys is not None:
            # avatars whose point object is not in this depsgraph (skipped in final renders)
            found = [(pts, None, ob_eval, matrix @ np.array(pts.matrix_parent_inverse) @ np.array(pts.matrix_basis),
                      pts.headsplat)
                     for pts in _avatars_of_rig(orig) if pts.hide_render and depsgraph.mode == "RENDER"]
        else:
            continue
        for pts, pts_eval, rig_eval, m, hs in found:
            # an avatar can appear twice: the object itself and its geometry-nodes point cloud
            # (an instance of the same object with the same matrix); collection instances differ
            key = (pts.name_full, np.round(m, 6).tobytes())
            if key in seen:
                continue
            seen.add(key)
            view = _view(depsgraph, pts, rig_eval, m, hs, viewmat_world, final, device, warn)
            if view is not None:
                views.append(view)
    return views


def _avatars_of_rig(rig) -> list:
    return [ob for ob in rig.children if ob.type == "MESH" and ob.headsplat.is_avatar and ob.headsplat.rig == rig]


def _view(depsgraph, orig, rig_eval, matrix, hs, viewmat_world, final, device, warn):
    from blender_addon.pure.render_core import AvatarView
    settings = depsgraph.scene.headsplat
    try:
        avatar = storage.load_for_object(orig, device)
    except Exception as exc:  # AvatarError, or an unreadable packed blob
        (warn or log.warning)(f"{orig.name}: {exc}")
        return None
    key_eval = _evaluated(orig.data.shape_keys, depsgraph)
    p = params.frame_params(_KeyHolder(key_eval), rig_eval, avatar)
    lod = int(hs.lod)
    if final and settings.render_lod != "OBJECT":
        lod = int(settings.render_lod)
    viewmat_head, scale = convert.head_camera(viewmat_world, matrix)
    return AvatarView(
        key=orig.headsplat.data_key or orig.name_full, avatar=avatar, expression=p["expression"],
        pose=p["pose"], translation=p["translation"], viewmat_head=viewmat_head, scale=scale, lod=lod,
        layers=lookup.layer_selection(hs), mask_threshold=float(hs.mask_threshold),
        colour_mode="RGB" if final or not settings.inspect_in_viewport else hs.colour_mode,
        use_refiner=settings.use_refiner if final else settings.viewport_use_refiner)


class _KeyHolder:
    """Adapter so ``params.expression_values`` reads an (evaluated) Key datablock."""

    class _Data:
        def __init__(self, key):
            self.shape_keys = key

    def __init__(self, key):
        self.data = self._Data(key)


def _evaluated(idb, depsgraph):
    if idb is None:
        return None
    try:
        return idb.evaluated_get(depsgraph)
    except (RuntimeError, ReferenceError):
        return idb


class HeadSplatRenderEngine(bpy.types.RenderEngine):
    bl_idname = ENGINE_ID
    bl_label = "HeadSplat"
    bl_use_preview = False
    bl_use_postprocess = True
    bl_use_shading_nodes_custom = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._draw = None          # (key, width, height, GPUTexture)
        self._last_view = None     # (view matrix bytes, time) for navigation detection
        self._pending = False

    def __del__(self):
        self._draw = None
        try:
            super().__del__()
        except AttributeError:
            pass

    # ---------------------------------------------------------------- final render
    def update_render_passes(self, scene=None, renderlayer=None):
        if renderlayer is not None and renderlayer.use_pass_z:
            self.register_pass(scene, renderlayer, "Depth", 1, "Z", "VALUE")

    def _missing_numpy(self) -> bool:
        if np is not None:
            return False
        from blender_addon.pure import deps
        self.report({"ERROR"}, deps.numpy_sentence())
        return True

    def render(self, depsgraph):
        if self._missing_numpy():
            return
        from avatar_core.devices import resolve_device
        from blender_addon.pure.render_core import apply_threads, render_views
        scene = depsgraph.scene
        apply_threads(prefs.get().cpu_threads)
        camera = self.camera_override or scene.camera
        if camera is None:
            self.report({"ERROR"}, "HeadSplat: the scene has no camera to render from.")
            return
        cam_eval = camera.evaluated_get(depsgraph)
        try:
            K, view, width, height = camera_setup(scene, cam_eval)
        except ValueError as exc:
            self.report({"ERROR"}, str(exc))
            return
        device = resolve_device(prefs.get().device, fallback=True)
        self.update_stats("", "HeadSplat: preparing avatars")
        warnings = []
        views = collect_views(depsgraph, view, True, device, warn=warnings.append)
        for w in warnings:
            self.report({"WARNING"}, w)
        if self.test_break():
            return
        self.update_stats("", f"HeadSplat: rendering {len(views)} avatar(s) on {device}")
        want_depth = bool(depsgraph.view_layer.use_pass_z)
        try:
            img = render_views(views, K, width, height, background(scene), with_depth=want_depth)
        except Exception as exc:  # surface avatar_core's sentence instead of a traceback
            from avatar_core.errors import AvatarError
            if isinstance(exc, AvatarError):
                self.report({"ERROR"}, f"HeadSplat: {exc}")
                return
            raise
        result = self.begin_result(0, 0, width, height)
        layer = result.layers[0]
        # foreach_set copies the buffer in C (assigning an array to .rect goes through Python
        # sequences: ~50 ms for 256x256)
        _write_pass(layer.passes["Combined"], img.rgba)
        depth_pass = next((p for p in layer.passes if p.name == "Depth"), None) if want_depth else None
        if depth_pass is not None:
            _write_pass(depth_pass, img.depth[..., None])
        self.end_result(result)

    # ---------------------------------------------------------------- viewport
    def view_update(self, context, depsgraph):
        self._draw = None if self._draw is None else (None,) + self._draw[1:]

    def view_draw(self, context, depsgraph):
        if self._missing_numpy():
            return
        import gpu
        from gpu_extras.presets import draw_texture_2d

        from avatar_core.devices import resolve_device
        from blender_addon.pure.render_core import apply_threads, render_views
        apply_threads(prefs.get().cpu_threads)
        region, rv3d = context.region, context.region_data
        scene = depsgraph.scene
        settings = scene.headsplat
        device = resolve_device(prefs.get().device, fallback=True)
        view_gl = np.array(rv3d.view_matrix)
        win = np.array(rv3d.window_matrix)
        now = time.monotonic()
        sig = view_gl.tobytes() + win.tobytes()
        moving = self._last_view is not None and self._last_view[0] != sig and \
            now - self._last_view[1] < REST_SECONDS
        self._last_view = (sig, now)
        scale = settings.viewport_scale / 100.0
        if moving and device == "cpu":
            scale /= max(1, settings.navigate_divider)
            self._schedule_rest_redraw()
        w = max(1, int(round(region.width * scale)))
        h = max(1, int(round(region.height * scale)))
        if rv3d.is_perspective:
            K = convert.projection_intrinsics(win, w, h)
            viewmat = np.eye(4)
            viewmat[:3] = convert.BLENDER_CAM_TO_OPENCV @ view_gl[:3]
        else:
            K, viewmat = convert.orthographic_as_perspective(win, view_gl, w, h, rv3d.view_distance)
        views = collect_views(depsgraph, viewmat, False, device)
        bg = background(scene)
        key = (sig, w, h, _views_signature(views), None if bg is None else tuple(bg))
        # the avatar's depth goes into the viewport's depth buffer, so the overlays drawn after
        # the engine (grid, bones, outlines) sit behind it (perspective views; where the GPU
        # module can write depth)
        want_depth = bool(rv3d.is_perspective) and _depth_pass() is not None
        if self._draw is None or self._draw[0] != key:
            img = render_views(views, K, w, h, bg, with_depth=want_depth)
            pixels = np.ascontiguousarray(img.rgba[::-1], dtype=np.float32)
            buf = gpu.types.Buffer("FLOAT", w * h * 4, pixels.ravel())
            tex = gpu.types.GPUTexture((w, h), format="RGBA16F", data=buf)
            depth_tex = None
            if want_depth and img.depth is not None:
                ndc = window_depth(img.depth, win)[::-1]
                dbuf = gpu.types.Buffer("FLOAT", w * h, np.ascontiguousarray(ndc, dtype=np.float32).ravel())
                depth_tex = gpu.types.GPUTexture((w, h), format="R32F", data=dbuf)
            self._draw = (key, w, h, tex, depth_tex)
        gpu.state.blend_set("ALPHA_PREMULT")
        self.bind_display_space_shader(scene)
        draw_texture_2d(self._draw[3], (0, 0), region.width, region.height)
        self.unbind_display_space_shader()
        gpu.state.blend_set("NONE")
        if self._draw[4] is not None:
            _draw_depth(self._draw[4])

    def _schedule_rest_redraw(self):
        if self._pending:
            return
        self._pending = True

        def redraw():
            self._pending = False
            wm = bpy.context.window_manager
            for window in (wm.windows if wm else []):
                for area in window.screen.areas:
                    if area.type == "VIEW_3D":
                        area.tag_redraw()
            return None

        bpy.app.timers.register(redraw, first_interval=REST_SECONDS + 0.05)


def window_depth(depth: np.ndarray, win: np.ndarray) -> np.ndarray:
    """[H, W] camera z (metres, FAR_DEPTH where empty) -> the depth buffer's [0, 1] values
    through the view's projection ``win`` (OpenGL: z_eye = -z); 1 where nothing was drawn."""
    z_eye = -np.asarray(depth, np.float64)
    clip_z = win[2, 2] * z_eye + win[2, 3]
    clip_w = win[3, 2] * z_eye + win[3, 3]
    out = 0.5 * clip_z / np.where(np.abs(clip_w) < 1e-12, 1e-12, clip_w) + 0.5
    from blender_addon.pure.render_core import FAR_DEPTH
    out = np.where(np.asarray(depth) >= 0.5 * FAR_DEPTH, 1.0, np.clip(out, 0.0, 1.0))
    return out.astype(np.float32)


_DEPTH_PASS = None   # (shader, batch), or False where this Blender's GPU module cannot write depth


def _depth_pass():
    global _DEPTH_PASS
    if _DEPTH_PASS is None:
        try:
            import gpu
            from gpu_extras.batch import batch_for_shader
            iface = gpu.types.GPUStageInterfaceInfo("headsplat_depth_iface")
            iface.smooth("VEC2", "uv")
            info = gpu.types.GPUShaderCreateInfo()
            info.vertex_in(0, "VEC2", "pos")
            info.vertex_out(iface)
            info.sampler(0, "FLOAT_2D", "depth_tex")
            info.fragment_out(0, "VEC4", "color")
            if hasattr(info, "depth_write"):
                info.depth_write("ANY")
            info.vertex_source("void main() { uv = pos * 0.5 + 0.5; gl_Position = vec4(pos, 0.0, 1.0); }")
            info.fragment_source("void main() { float d = texture(depth_tex, uv).r; if (d >= 1.0) { discard; } "
                                 "gl_FragDepth = d; color = vec4(0.0); }")
            shader = gpu.shader.create_from_info(info)
            batch = batch_for_shader(shader, "TRI_FAN", {"pos": ((-1, -1), (1, -1), (1, 1), (-1, 1))})
            _DEPTH_PASS = (shader, batch)
        except Exception as exc:  # noqa: BLE001 - no depth: overlays are drawn over the avatar, as before
            log.info("HeadSplat viewport: no depth for the overlays (%s)", exc)
            _DEPTH_PASS = False
    return _DEPTH_PASS or None


def _draw_depth(depth_tex) -> None:
    """Write the avatar's depth (colour untouched) into the bound viewport framebuffer."""
    import gpu
    shader, batch = _depth_pass()
    gpu.state.color_mask_set(False, False, False, False)
    gpu.state.depth_mask_set(True)
    gpu.state.depth_test_set("ALWAYS")
    try:
        shader.bind()
        shader.uniform_sampler("depth_tex", depth_tex)
        batch.draw(shader)
    finally:
        gpu.state.depth_test_set("NONE")
        gpu.state.depth_mask_set(False)
        gpu.state.color_mask_set(True, True, True, True)


def _write_pass(render_pass, image: np.ndarray) -> None:
    """image [H, W, C] top row first -> a render pass (bottom row first)."""
    flat = np.ascontiguousarray(image[::-1], dtype=np.float32).ravel()
    try:
        render_pass.rect.foreach_set(flat)
    except (AttributeError, TypeError):  # older Blender: slow path
        render_pass.rect = flat.reshape(-1, image.shape[-1])


def _views_signature(views) -> tuple:
    return tuple((v.key, v.expression.tobytes(), v.pose.tobytes(), v.translation.tobytes(),
                  v.viewmat_head.tobytes(), v.scale, v.lod, v.layers, v.mask_threshold, v.colour_mode,
                  v.use_refiner) for v in views)


# ------------------------------------------------------------------------ panels of other engines
def _compat_panels():
    """Blender's own panels that make sense for HeadSplat (output, dimensions, film, passes)."""
    names = ("RENDER_PT_format", "RENDER_PT_frame_range", "RENDER_PT_output", "RENDER_PT_color_management",
             "RENDER_PT_film", "VIEWLAYER_PT_layer_passes", "VIEWLAYER_PT_layer", "DATA_PT_lens",
             "DATA_PT_camera", "DATA_PT_camera_display", "WORLD_PT_context_world", "DATA_PT_context_camera",
             "RENDER_PT_post_processing", "RENDER_PT_stamp", "RENDER_PT_time_stretching")
    out = []
    for n in names:
        p = getattr(bpy.types, n, None)
        if p is not None and hasattr(p, "COMPAT_ENGINES"):
            out.append(p)
    return out


def register():
    bpy.utils.register_class(HeadSplatRenderEngine)
    for p in _compat_panels():
        p.COMPAT_ENGINES.add(ENGINE_ID)


def unregister():
    for p in _compat_panels():
        p.COMPAT_ENGINES.discard(ENGINE_ID)
    bpy.utils.unregister_class(HeadSplatRenderEngine)
