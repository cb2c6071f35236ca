"""Render the head scan with Blender from a ring of yaw angles (runs in its own process).

    python scripts/render_headscan.py JOB.json

This module is the only part of ``eval`` that touches ``bpy``, and only inside ``main()``:
``avatar_core.eval.novelview`` starts it as a subprocess (the same Python, which has the
``bpy`` module), so importing avatar_core never imports bpy and Blender's state never leaks
into the evaluation process.

JOB.json: {"glb", "maps_dir", "out_dir", "yaws" [deg], "size" [px], "samples", "lens_mm",
"sensor_mm", "distance_m", "bust_height_m", "depth_grid" [px], "threads"}.

Scene: the glTF scan (a bust) scaled so its height is ``bust_height_m`` and moved so the
centre of its head (the bounding box of the upper 60% of the bust, the orbit centre) is the
origin; Blender Z up, the face toward -Y.
Material: the scan's maps (colour, tangent-space normal, specular) when they can be read, else
a procedural skin (the job's result says which). Lights are fixed to the head (a soft key
above left, a fill, a rim and a dim grey world), so every view sees the same lit surface, as
the avatar's baked colours assume. A level camera orbits the origin at ``distance_m``: yaw 0
looks at the face; positive yaw moves the camera toward +X (the subject's left). Cycles on the
CPU, a few samples, denoised, transparent film (alpha = the scan's mask), Standard view
transform, 8-bit RGBA PNG.

Writes to out_dir: ``view_XX.png`` per yaw, ``depth_front.npy`` (camera z in metres of the
yaw-0 view on a ``depth_grid`` square grid of pixel centres, NaN off the scan, found by ray
casting) and ``views.json`` (per view: file, yaw, OpenCV K [3, 3] and world-to-camera
viewmat [4, 4]; the orbit centre, distance, material, Blender version).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

MAP_FILES = {"color": "Map-COL.jpg", "normal": "Infinite-Level_02_Tangent_SmoothUV.jpg", "specular": "Map-SPEC.jpg"}
HEAD_SHARE = 0.6                  # the head is the upper 60% of the bust's height
SKIN_LIGHT = (0.80, 0.60, 0.50)   # sRGB skin tones mixed by a noise texture (procedural material)
SKIN_DARK = (0.74, 0.53, 0.44)


def _linear(c):
    return tuple(x / 12.92 if x <= 0.04045 else ((x + 0.055) / 1.055) ** 2.4 for x in c)


def _load_maps(bpy, maps_dir: Path):
    """{role: image} for the maps Blender can read, and a list of problems for the others."""
    images, problems = {}, []
    for role, name in MAP_FILES.items():
        path = maps_dir / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        try:
            img = bpy.data.images.load(str(path), check_existing=True)
        except RuntimeError as exc:
            problems.append(f"{name} cannot be read ({exc})")
            continue
        if not img.has_data or img.size[0] == 0:
            problems.append(f"{name} is not an image Blender can decode")
            bpy.data.images.remove(img)
            continue
        images[role] = img
    return images, problems


def _material(bpy, images):
    mat = bpy.data.materials.new("ScanSkin")
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next(n for n in nt.nodes if n.type == "BSDF_PRINCIPLED")
    bsdf.inputs["Roughness"].default_value = 0.5
    bsdf.inputs["Specular IOR Level"].default_value = 0.35
    if "color" in images:
        tex = nt.nodes.new("ShaderNodeTexImage")
        tex.image = images["color"]
        nt.links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
        if "normal" in images:
            images["normal"].colorspace_settings.name = "Non-Color"
            ntex = nt.nodes.new("ShaderNodeTexImage")
            ntex.image = images["normal"]
            nmap = nt.nodes.new("ShaderNodeNormalMap")
            nt.links.new(ntex.outputs["Color"], nmap.inputs["Color"])
            nt.links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
        if "specular" in images:
            images["specular"].colorspace_settings.name = "Non-Color"
            stex = nt.nodes.new("ShaderNodeTexImage")
            stex.image = images["specular"]
            nt.links.new(stex.outputs["Color"], bsdf.inputs["Specular IOR Level"])
        return mat, "maps"
    noise = nt.nodes.new("ShaderNodeTexNoise")
    noise.inputs["Scale"].default_value = 400.0
    noise.inputs["Detail"].default_value = 4.0
    ramp = nt.nodes.new("ShaderNodeValToRGB")
    ramp.color_ramp.elements[0].color = (*_linear(SKIN_DARK), 1.0)
    ramp.color_ramp.elements[1].color = (*_linear(SKIN_LIGHT), 1.0)
    ramp.color_ramp.elements[0].position = 0.3
    ramp.color_ramp.elements[1].position = 0.7
    nt.links.new(noise.outputs["Fac"], ramp.inputs["Fac"])
    nt.links.new(ramp.outputs["Color"], bsdf.inputs["Base Color"])
    bump = nt.nodes.new("ShaderNodeBump")
    bump.inputs["Strength"].default_value = 0.02
    nt.links.new(noise.outputs["Fac"], bump.inputs["Height"])
    nt.links.new(bump.outputs["Normal"], bsdf.inputs["Normal"])
    return mat, "procedural skin"


def _area_light(bpy, name, location, energy, size, colour=(1.0, 1.0, 1.0)):
    from mathutils import Vector

    light = bpy.data.lights.new(name, "AREA")
    light.energy = energy
    light.size = size
    light.color = colour
    obj = bpy.data.objects.new(name, light)
    obj.location = location
    obj.rotation_euler = (-Vector(location)).to_track_quat("-Z", "Y").to_euler()
    bpy.context.scene.collection.objects.link(obj)
    return obj


def _opencv_view(cam_obj):
    """World -> OpenCV camera (x right, y down, z forward) 4x4, as nested lists."""
    from mathutils import Matrix

    flip = Matrix(((1, 0, 0, 0), (0, -1, 0, 0), (0, 0, -1, 0), (0, 0, 0, 1)))
    m = flip @ cam_obj.matrix_world.inverted()
    return [list(r) for r in m]


def main(argv=None) -> int:
    import bpy
    import numpy as np
    from mathutils import Vector

    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["out_dir"])
    size = int(job["size"])

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(job["glb"]))
    meshes = [o for o in bpy.data.objects if o.type == "MESH"]
    for o in list(bpy.data.objects):
        if o.type != "MESH":
            bpy.data.objects.remove(o)
    if len(meshes) != 1:
        raise SystemExit(f"expected one mesh in {job['glb']}, found {len(meshes)}")
    head = meshes[0]
    bpy.context.view_layer.update()
    corners = [head.matrix_world @ Vector(c) for c in head.bound_box]
    lo = Vector([min(c[i] for c in corners) for i in range(3)])
    hi = Vector([max(c[i] for c in corners) for i in range(3)])
    # the scan is a bust: scale it by its height, and orbit about the centre of the head (the
    # bounding box of the vertices in the upper HEAD_SHARE of the bust)
    scale = float(job["bust_height_m"]) / (hi.z - lo.z)
    z_cut = hi.z - HEAD_SHARE * (hi.z - lo.z)
    pts = [head.matrix_world @ v.co for v in head.data.vertices]
    top = [p for p in pts if p.z > z_cut]
    centre = Vector([(min(p[i] for p in top) + max(p[i] for p in top)) / 2 for i in range(3)])
    head.scale = [s * scale for s in head.scale]
    head.location = head.location - centre * scale
    for p in head.data.polygons:
        p.use_smooth = True

    images, problems = _load_maps(bpy, Path(job["maps_dir"]))
    mat, material = _material(bpy, images)
    head.data.materials.clear()
    head.data.materials.append(mat)

    scene = bpy.context.scene
    world = bpy.data.worlds.new("World")
    world.use_nodes = True
    bg = world.node_tree.nodes["Background"]
    bg.inputs["Color"].default_value = (0.35, 0.35, 0.35, 1.0)
    bg.inputs["Strength"].default_value = 0.35
    scene.world = world
    _area_light(bpy, "Key", (-0.55, -0.85, 0.55), 22.0, 0.6, (1.0, 0.97, 0.92))
    _area_light(bpy, "Fill", (0.8, -0.6, 0.05), 7.0, 0.8, (0.92, 0.96, 1.0))
    _area_light(bpy, "Rim", (0.2, 0.9, 0.6), 10.0, 0.5)

    cam_data = bpy.data.cameras.new("Camera")
    cam_data.lens = float(job["lens_mm"])
    cam_data.sensor_width = float(job["sensor_mm"])
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.clip_start = 0.01
    cam = bpy.data.objects.new("Camera", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam

    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x = r.resolution_y = size
    r.resolution_percentage = 100
    r.film_transparent = True
    r.image_settings.file_format = "PNG"
    r.image_settings.color_mode = "RGBA"
    r.image_settings.color_depth = "8"
    if job.get("threads"):
        r.threads_mode = "FIXED"
        r.threads = int(job["threads"])
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    cyc = scene.cycles
    cyc.device = "CPU"
    cyc.samples = int(job["samples"])
    cyc.use_adaptive_sampling = False
    cyc.max_bounces = 3
    cyc.diffuse_bounces = 2
    cyc.glossy_bounces = 1
    cyc.transmission_bounces = 0
    cyc.transparent_max_bounces = 2
    cyc.use_denoising = bool(getattr(bpy.app.build_options, "openimagedenoise", False))
    cyc.denoiser = "OPENIMAGEDENOISE" if cyc.use_denoising else cyc.denoiser
    cyc.pixel_filter_type = "BLACKMAN_HARRIS"

    f = float(job["lens_mm"]) / float(job["sensor_mm"]) * size
    c = (size - 1) / 2.0
    K = [[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]]
    D = float(job["distance_m"])
    views = []
    for i, yaw in enumerate(job["yaws"]):
        a = math.radians(float(yaw))
        cam.location = (D * math.sin(a), -D * math.cos(a), 0.0)
        cam.rotation_euler = (-Vector(cam.location)).to_track_quat("-Z", "Y").to_euler()
        bpy.context.view_layer.update()
        name = f"view_{i:02d}.png"
        r.filepath = str(out / name)
        bpy.ops.render.render(write_still=True)
        views.append({"file": name, "yaw_deg": float(yaw), "K": K, "viewmat": _opencv_view(cam)})
        print(f"rendered yaw {yaw:+.0f}", flush=True)

    # depth of the yaw-0 view by ray casting through a grid of pixel centres
    cam.location = (0.0, -D, 0.0)
    cam.rotation_euler = (-Vector(cam.location)).to_track_quat("-Z", "Y").to_euler()
    bpy.context.view_layer.update()
    depsgraph = bpy.context.evaluated_depsgraph_get()
    G = int(job.get("depth_grid", 128))
    rot = cam.matrix_world.to_3x3()
    origin = cam.matrix_world.translation.copy()
    forward = rot @ Vector((0.0, 0.0, -1.0))
    depth = np.full((G, G), np.nan, np.float32)
    step = size / G
    for i in range(G):
        v = (i + 0.5) * step - 0.5
        for j in range(G):
            u = (j + 0.5) * step - 0.5
            d = rot @ Vector(((u - c) / f, -(v - c) / f, -1.0))
            hit, loc, _, _, _, _ = scene.ray_cast(depsgraph, origin, d.normalized())
            if hit:
                depth[i, j] = (loc - origin).dot(forward)
    np.save(out / "depth_front.npy", depth)

    meta = {"views": views, "orbit_centre": [0.0, 0.0, 0.0], "distance_m": D, "scale": scale,
            "material": material, "map_problems": problems, "size": size, "samples": int(job["samples"]),
            "denoised": bool(cyc.use_denoising), "blender": bpy.app.version_string, "depth_grid": G}
    (out / "views.json").write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
