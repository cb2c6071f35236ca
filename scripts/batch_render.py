"""Headless batch rendering of a HeadSplat avatar driven by a motion.

Inside Blender:
    blender -b [scene.blend] -P scripts/batch_render.py -- --avatar A.avatar --motion M.csv --out DIR [--lod 2] [--res 512] [--camera frame|scene]
With the bpy module (plain Python):
    python scripts/batch_render.py [--blend scene.blend] --avatar A.avatar --motion M.csv --out DIR [--lod 2] [--res 512]

The camera frames the avatar (its bounding box fills ~83% of the frame's height or width, a
"HeadSplat Camera" placed in front of it) unless ``--camera scene`` asks for the scene's own
camera (which is framed only when the scene has none).

``--avatar`` adds the avatar (or reuses the one built from that file in the .blend); without
it the .blend's avatars are rendered. ``--motion`` keys a FLAME npz, ARKit CSV, HeadSplat
motion or a video (tracked) onto the avatar and sets the frame range. Frames are written as
DIR/frame_0001.png ... by the HeadSplat engine (``bpy.ops.render.render(animation=True)``).
Bad input prints one sentence and exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    ap = argparse.ArgumentParser(prog="batch_render.py", description="Render a HeadSplat avatar headless.")
    ap.add_argument("--blend", help="a .blend to open (plain-Python mode; with blender -b give it before -P)")
    ap.add_argument("--avatar", help="avatar file (.avatar) to render; default: the avatars in the .blend")
    ap.add_argument("--motion", help="motion: FLAME .npz, ARKit .csv, HeadSplat motion .npz or a video")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--lod", type=int, choices=(0, 1, 2), help="level of detail (default: each avatar's)")
    ap.add_argument("--res", default=None, help="resolution: N (square) or WxH (default: the scene's)")
    ap.add_argument("--camera", default="frame", choices=("frame", "scene"),
                    help="frame: a camera framing the avatar (default); scene: the scene's own camera")
    ap.add_argument("--frames", type=int, default=None, help="render only the first N frames")
    ap.add_argument("--format", default="PNG", choices=("PNG", "EXR"), help="image format (default PNG)")
    ap.add_argument("--device", default=None, choices=("auto", "cpu", "cuda"), help="render device")
    ap.add_argument("--transparent", action="store_true", help="transparent film (PNG with alpha)")
    ap.add_argument("--save-blend", help="also save the prepared scene to this .blend")
    return ap.parse_args(argv)


def script_args():
    """Arguments after ``--`` (Blender), else everything after the script name (Python)."""
    if "--" in sys.argv:
        return sys.argv[sys.argv.index("--") + 1:]
    return sys.argv[1:]


def ensure_addon():
    import bpy
    if not hasattr(bpy.types.Object, "headsplat"):
        if ROOT not in sys.path:
            sys.path.insert(0, ROOT)
        import blender_addon
        blender_addon.register()
    return bpy


def fail(message: str) -> int:
    print(f"batch_render: {message}", file=sys.stderr)
    return 1


def run(args) -> int:
    bpy = ensure_addon()
    from avatar_core.errors import AvatarError

    from blender_addon import keyframes, prefs, scene as scene_build, storage
    t0 = time.perf_counter()
    if args.blend:
        if not os.path.isfile(args.blend):
            return fail(f"the .blend file {args.blend!r} does not exist.")
        bpy.ops.wm.open_mainfile(filepath=os.path.abspath(args.blend))
    context = bpy.context
    scene = context.scene
    if args.device:
        p = prefs.get()
        p.device = args.device.upper()

    avatars = storage.avatar_objects(scene.objects)
    if args.avatar:
        path = os.path.abspath(args.avatar)
        from avatar_core.io import load_avatar
        try:
            avatar = load_avatar(path)
        except AvatarError as exc:
            return fail(str(exc))
        same = [ob for ob in avatars if storage.absolute_path(ob) == path]
        if same:
            avatars = same
        else:
            name = os.path.splitext(os.path.basename(path))[0]
            avatars = [scene_build.build_avatar(context, avatar, name=name, source_path=path, pack=False)]
    if not avatars:
        return fail("no avatar: give --avatar FILE or a .blend that contains a HeadSplat avatar.")
    for ob in avatars:
        if not storage.data_available(ob):
            return fail(f"the avatar data of {ob.name!r} is missing ({storage.absolute_path(ob) or 'not packed'}); "
                        f"pass --avatar with its file.")

    if args.motion:
        from avatar_core.motion import load_motion
        from operators.motion import VIDEO_EXTS, load_for_avatar, ready_for_avatar
        if not os.path.isfile(args.motion):
            return fail(f"the motion file {args.motion!r} does not exist.")
        fps = scene.render.fps / scene.render.fps_base
        try:
            if args.motion.lower().endswith(VIDEO_EXTS):
                raw = None
            else:
                raw = load_motion(args.motion)
            for ob in avatars:
                av = storage.load_for_object(ob)
                # a video is tracked first; both then go through motion_for_avatar, as in the add-on
                motion = load_for_avatar(args.motion, av, None, prefs.head_spec(), fps) if raw is None else \
                    ready_for_avatar(raw, av, fps=fps)
                keyframes.key_motion(ob, ob.headsplat.rig, motion, start_frame=1,
                                     name=os.path.splitext(os.path.basename(args.motion))[0])
        except AvatarError as exc:
            return fail(str(exc))
        scene.frame_start, scene.frame_end = 1, motion.num_frames
        for w in motion.warnings:
            print(f"batch_render: warning: {w}")
    if args.frames:
        scene.frame_end = scene.frame_start + args.frames - 1

    scene_build.use_engine(context)
    if args.lod is not None:
        scene.headsplat.render_lod = str(args.lod)
    if args.res:
        try:
            w, h = (args.res.lower().split("x") + [None])[:2]
            w = int(w)
            h = int(h) if h else w
        except ValueError:
            return fail(f"--res must be N or WxH, not {args.res!r}.")
        scene.render.resolution_x, scene.render.resolution_y = w, h
        scene.render.resolution_percentage = 100
    # after the resolution: the framing depends on the frame's aspect
    scene_build.frame_camera(context, avatars[0], refit=args.camera == "frame")
    scene.render.film_transparent = bool(args.transparent)
    settings = scene.render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"
    if args.format == "EXR":
        settings.file_format, settings.color_depth = "OPEN_EXR", "32"
    else:
        settings.file_format = "PNG"
        settings.color_mode = "RGBA" if args.transparent else "RGB"
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    scene.render.filepath = os.path.join(out, "frame_")
    scene.render.use_file_extension = True
    if args.save_blend:
        bpy.ops.wm.save_as_mainfile(filepath=os.path.abspath(args.save_blend))
    n = scene.frame_end - scene.frame_start + 1
    t1 = time.perf_counter()
    bpy.ops.render.render(animation=True)
    t2 = time.perf_counter()
    print(f"batch_render: wrote {n} frames of {len(avatars)} avatar(s) at "
          f"{scene.render.resolution_x}x{scene.render.resolution_y} to {out} in {t2 - t1:.1f} s "
          f"({(t2 - t1) / max(n, 1):.2f} s/frame; setup {t1 - t0:.1f} s)")
    return 0


def main() -> int:
    args = parse(script_args())
    return run(args)


if __name__ == "__main__":
    code = main()
    if code:
        sys.exit(code)
