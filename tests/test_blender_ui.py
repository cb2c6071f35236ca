"""The panels' and preferences' draw code against real data (no window in background mode, so
a layout stand-in checks every property and operator they name)."""

import pytest

from blender_addon import testing


class Layout:
    """Records draw calls; ``prop`` / ``operator`` fail on unknown names like Blender would."""

    def __init__(self, log):
        self.log = log
        self.use_property_split = self.use_property_decorate = self.alert = False

    def _child(self, *a, **k):
        return Layout(self.log)

    row = column = box = split = _child

    def grid_flow(self, *a, **k):
        return Layout(self.log)

    def label(self, text="", icon="NONE", **k):
        self.log.append(("label", text))

    def separator(self, **k):
        pass

    def prop(self, data, name, **k):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        if "index" in k:
            assert 0 <= k["index"] < data.bl_rna.properties[name].array_length
        self.log.append(("prop", name))

    def operator(self, idname, **k):
        import bpy
        mod, fn = idname.split(".")
        assert hasattr(bpy.types, f"{mod.upper()}_OT_{fn}"), f"no operator {idname}"
        self.log.append(("operator", idname))

        class Props:
            def __setattr__(self, key, value):
                rna = getattr(getattr(bpy.ops, mod), fn).get_rna_type()
                assert key in rna.properties, f"{idname} has no property {key!r}"

        return Props()


@pytest.fixture(scope="module")
def bpy():
    return testing.ensure_registered()


def draw(panel_cls, context):
    log = []
    # bpy Panel instances cannot be made from Python; call draw with a stand-in self
    stand_in = type("P", (), {"layout": Layout(log)})()
    panel_cls.draw(stand_in, context)
    return log


def test_sidebar_and_render_panels_draw(bpy, small_avatar):
    from panels import render, sidebar
    testing.fresh_scene()
    ctx = bpy.context
    # without an avatar: only Create (and Render) show
    assert not sidebar.VIEW3D_PT_headsplat_lod.poll(ctx)
    log = draw(sidebar.VIEW3D_PT_headsplat_create, ctx)
    assert ("operator", "headsplat.create_from_photo") in log
    ob = testing.add_avatar(small_avatar, name="UI")
    for cls in sidebar.classes:
        assert not hasattr(cls, "poll") or cls.poll(ctx)
        log = draw(cls, ctx)
        assert log, cls.__name__
    log = draw(sidebar.VIEW3D_PT_headsplat_expressions, ctx)
    assert sum(1 for k, n in log if k == "prop" and n == "value") == len(small_avatar.expr_names)
    log = draw(sidebar.VIEW3D_PT_headsplat_inspect, ctx)
    assert sum(1 for k, n in log if n == "layers") == small_avatar.split_levels + 1
    assert render.RENDER_PT_headsplat.poll(type("C", (), {"engine": "HEADSPLAT"})())
    assert not render.RENDER_PT_headsplat.poll(type("C", (), {"engine": "CYCLES"})())
    draw(render.RENDER_PT_headsplat, ctx)
    # a missing avatar file shows a warning and the relink button
    from blender_addon import storage
    storage.unpack_remove(ob)
    ob.headsplat.avatar_path = "/nonexistent/x.avatar"
    log = draw(sidebar.VIEW3D_PT_headsplat_create, ctx)
    assert ("operator", "headsplat.relink_avatar") in log
    assert any("missing" in t for k, t in log if k == "label")


def test_preferences_draw_and_dependency_box(bpy, monkeypatch):
    from blender_addon import prefs
    from blender_addon.pure import deps
    cls = prefs._cls
    stand_in = type("P", (), {"layout": Layout([]), "head_model": "FLAME", "bl_rna": cls.bl_rna})()
    log = stand_in.layout.log
    for name in ("device", "head_model", "flame_path", "quality", "cpu_threads"):
        assert name in cls.bl_rna.properties
    # the dependency box lists what is missing and offers the install operator
    anny = next(r for r in deps.REQUIREMENTS if r.module == "anny")
    missing = deps.Status("3.11", "/x", [(anny, "not installed, needed for the built-in open head")], [])
    monkeypatch.setattr(deps, "status", lambda refresh=False: missing)
    prefs.draw_dependencies(stand_in.layout)
    assert ("operator", "headsplat.install_dependencies") in log
    assert any("anny==0.6.2" in t for k, t in log if k == "label")
