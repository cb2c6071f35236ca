"""The geometry-nodes group that filters and displays an avatar's points (built in code).

Per point (the mesh's attributes written by the scene builder):

    keep = (lod == LOD or lod == -1)
           and mask_chain >= Mask Threshold                  (delayed filtering, see avatar_data)
           and (split_layer < 0 or split_layer >= 8 or bit split_layer of Layer Mask is set)

Kept points become a point cloud (visible in Solid mode) with radius ``Point Size * |scale|``
and a ``display_color`` attribute chosen by Colour Mode (0 colour, 1 split layer, 2 soft
mask, 3 region) for shaders. Nothing is rebuilt when an input changes: the object's
``headsplat`` properties drive the modifier inputs. ``Avatar.select`` computes the same set.
"""

from __future__ import annotations

import bpy

from blender_addon.pure.constants import LAYER_COLOURS, MASK_HIGH, MASK_LOW, MAX_LAYERS, REGION_COLOURS

GROUP_NAME = "HeadSplat Points v3"
MATERIAL_NAME = "HeadSplat Points"
MODIFIER_NAME = "HeadSplat Points"
ARMATURE_MODIFIER_NAME = "FLAME Armature"

# input name -> (socket type, object property path driving it, default)
INPUTS = (
    ("LOD", "NodeSocketInt", "headsplat.lod", 2),
    ("Mask Threshold", "NodeSocketFloat", "headsplat.mask_threshold", 0.5),
    ("Layer Mask", "NodeSocketInt", None, 255),      # driven by headsplat.layers[0..7]
    ("Colour Mode", "NodeSocketInt", None, 0),       # driven by headsplat.colour_mode
    ("Point Size", "NodeSocketFloat", "headsplat.point_size", 1.0),
    ("Gaussian Splats", "NodeSocketBool", "headsplat.native_splats", False),
)
SPLAT_ATTRIBUTE = "radiance:base"   # what Blender 5.3's splat renderer reads (with scale, rotation)


def supports_gaussian_splats() -> bool:
    """Whether this Blender renders point clouds as 3D Gaussian splats (5.3+): it has the
    geometry node that sets a point cloud's type."""
    return hasattr(bpy.types, "GeometryNodePointsSetType")


def _set_menu(socket, *names) -> None:
    for name in names:
        try:
            socket.default_value = name
            return
        except (TypeError, ValueError):
            continue
    raise ValueError(f"none of {names} is an item of {socket.name!r}")


def _named(ng, name, data_type):
    n = ng.nodes.new("GeometryNodeInputNamedAttribute")
    n.data_type = data_type
    n.inputs["Name"].default_value = name
    return n.outputs["Attribute"]


def _math(ng, op, a, b=None, value_b=None):
    n = ng.nodes.new("ShaderNodeMath")
    n.operation = op
    _feed(ng, n.inputs[0], a)
    if b is not None or value_b is not None:
        _feed(ng, n.inputs[1], b if b is not None else value_b)
    return n.outputs[0]


def _feed(ng, socket, value):
    if isinstance(value, bpy.types.NodeSocket):
        ng.links.new(value, socket)
    else:
        socket.default_value = value


# data type of a node -> the socket type its inputs of that type have
_SOCKET_TYPE = {"INT": "INT", "FLOAT": "VALUE", "RGBA": "RGBA", "FLOAT_COLOR": "RGBA", "VECTOR": "VECTOR"}


def _compare(ng, data_type, op, a, b):
    n = ng.nodes.new("FunctionNodeCompare")
    n.data_type = data_type
    n.operation = op
    _feed(ng, _input(n.inputs, "A", data_type), a)
    _feed(ng, _input(n.inputs, "B", data_type), b)
    return n.outputs["Result"]


def _input(sockets, name, data_type):
    """The socket ``name`` of a node's sockets for ``data_type``.

    Blender 4.x gives such nodes one socket per data type (identifiers "A", "A_INT", ...,
    all named "A", the unused ones disabled); Blender 5.x keeps only the sockets of the
    chosen type. Found by name and socket type, so either layout works."""
    want = _SOCKET_TYPE.get(data_type, data_type)
    named = [s for s in sockets if s.name == name]
    typed = [s for s in named if s.type == want] or named
    if not typed:
        raise KeyError(f"{name} ({data_type})")
    enabled = [s for s in typed if getattr(s, "enabled", True)]
    return (enabled or typed)[0]


def _sock(sockets, identifier, name=None, data_type=None):
    """A node socket by identifier (names repeat across data types); when this Blender names
    its identifiers differently, by ``name`` and ``data_type``."""
    for s in sockets:
        if s.identifier == identifier:
            return s
    if name is not None:
        return _input(sockets, name, data_type)
    raise KeyError(identifier)


def _bool(ng, op, a, b=None):
    n = ng.nodes.new("FunctionNodeBooleanMath")
    n.operation = op
    ng.links.new(a, n.inputs[0])
    if b is not None:
        ng.links.new(b, n.inputs[1])
    return n.outputs[0]


def _palette(ng, index_socket, colours):
    n = ng.nodes.new("GeometryNodeIndexSwitch")
    n.data_type = "RGBA"
    while len(n.index_switch_items) < len(colours):
        n.index_switch_items.new()
    ng.links.new(index_socket, n.inputs["Index"])
    for i, c in enumerate(colours):
        _sock(n.inputs, f"Item_{i}").default_value = (float(c[0]), float(c[1]), float(c[2]), 1.0)
    return n.outputs["Output"]


def ensure_material() -> bpy.types.Material:
    mat = bpy.data.materials.get(MATERIAL_NAME)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL_NAME)
    mat.diffuse_color = (0.8, 0.62, 0.52, 1.0)
    mat.use_nodes = True
    nt = mat.node_tree
    bsdf = next((n for n in nt.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is not None:
        attr = nt.nodes.new("ShaderNodeAttribute")
        attr.attribute_name = "display_color"
        nt.links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
        if "Emission Color" in bsdf.inputs:
            nt.links.new(attr.outputs["Color"], bsdf.inputs["Emission Color"])
            bsdf.inputs["Emission Strength"].default_value = 0.6
    return mat


def ensure_group() -> bpy.types.NodeTree:
    ng = bpy.data.node_groups.get(GROUP_NAME)
    if ng is not None and ng.bl_idname == "GeometryNodeTree":
        return ng
    ng = bpy.data.node_groups.new(GROUP_NAME, "GeometryNodeTree")
    ng.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    for name, stype, _path, default in INPUTS:
        s = ng.interface.new_socket(name, in_out="INPUT", socket_type=stype)
        s.default_value = default
    ng.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    gi = ng.nodes.new("NodeGroupInput")
    go = ng.nodes.new("NodeGroupOutput")
    inp = {s.name: s for s in gi.outputs}

    # --- selection
    lod = _named(ng, "lod", "INT")
    lod_ok = _bool(ng, "OR", _compare(ng, "INT", "EQUAL", lod, inp["LOD"]),
                   _compare(ng, "INT", "EQUAL", lod, -1))
    mask_ok = _compare(ng, "FLOAT", "GREATER_EQUAL", _named(ng, "mask_chain", "FLOAT"), inp["Mask Threshold"])
    layer = _named(ng, "split_layer", "INT")
    # not a split Gaussian, or a layer beyond the UI's toggles (kept, as lookup.layer_selection does)
    untoggled = _bool(ng, "OR", _compare(ng, "INT", "LESS_THAN", layer, 0),
                      _compare(ng, "INT", "GREATER_EQUAL", layer, MAX_LAYERS))
    # bit = floor(mask / 2^layer) mod 2
    pow2 = _math(ng, "POWER", 2.0, layer)
    bit = _math(ng, "MODULO", _math(ng, "FLOOR", _math(ng, "DIVIDE", inp["Layer Mask"], pow2)), value_b=2.0)
    layer_on = _bool(ng, "OR", untoggled, _compare(ng, "FLOAT", "GREATER_THAN", bit, 0.5))
    # every toggle on (the usual case): a Switch on a single value evaluates only the branch it
    # picks, so the per-point layer test is skipped (~4 ms per evaluation of 103k points)
    every_layer = ng.nodes.new("GeometryNodeSwitch")
    every_layer.input_type = "BOOLEAN"
    ng.links.new(_compare(ng, "INT", "EQUAL", inp["Layer Mask"], 2 ** MAX_LAYERS - 1), every_layer.inputs["Switch"])
    ng.links.new(layer_on, every_layer.inputs["False"])
    every_layer.inputs["True"].default_value = True
    keep = _bool(ng, "AND", _bool(ng, "AND", lod_ok, mask_ok), every_layer.outputs[0])

    # --- the kept points with a display radius (Mesh to Points selects them itself: no
    # intermediate filtered mesh, which cost ~5 ms per evaluation of the open head's 103k points)
    length = ng.nodes.new("ShaderNodeVectorMath")
    length.operation = "LENGTH"
    ng.links.new(_named(ng, "scale", "FLOAT_VECTOR"), length.inputs[0])
    radius = _math(ng, "MULTIPLY", length.outputs["Value"], inp["Point Size"])
    to_points = ng.nodes.new("GeometryNodeMeshToPoints")
    ng.links.new(inp["Geometry"], to_points.inputs["Mesh"])
    ng.links.new(keep, to_points.inputs["Selection"])
    ng.links.new(radius, to_points.inputs["Radius"])

    # --- display colour
    mode = ng.nodes.new("GeometryNodeIndexSwitch")
    mode.data_type = "RGBA"
    while len(mode.index_switch_items) < 4:
        mode.index_switch_items.new()
    ng.links.new(inp["Colour Mode"], mode.inputs["Index"])
    ng.links.new(_named(ng, "color", "FLOAT_COLOR"), _sock(mode.inputs, "Item_0"))
    layer_plus = _math(ng, "ADD", _named(ng, "split_layer", "INT"), value_b=1.0)
    ng.links.new(_palette(ng, layer_plus, LAYER_COLOURS), _sock(mode.inputs, "Item_1"))
    # sigmoid(soft_mask) = 1 / (1 + exp(-x))
    sig = _math(ng, "DIVIDE", 1.0, _math(ng, "ADD", _math(ng, "EXPONENT", _math(
        ng, "MULTIPLY", _named(ng, "soft_mask", "FLOAT"), value_b=-1.0)), value_b=1.0))
    mix = ng.nodes.new("ShaderNodeMix")
    mix.data_type = "RGBA"
    ng.links.new(sig, _sock(mix.inputs, "Factor_Float", "Factor", "FLOAT"))
    _sock(mix.inputs, "A_Color", "A", "RGBA").default_value = (*MASK_LOW, 1.0)
    _sock(mix.inputs, "B_Color", "B", "RGBA").default_value = (*MASK_HIGH, 1.0)
    ng.links.new(_sock(mix.outputs, "Result_Color", "Result", "RGBA"), _sock(mode.inputs, "Item_2"))
    ng.links.new(_palette(ng, _named(ng, "region", "INT"), REGION_COLOURS), _sock(mode.inputs, "Item_3"))
    store = ng.nodes.new("GeometryNodeStoreNamedAttribute")
    store.data_type = "FLOAT_COLOR"
    store.domain = "POINT"
    store.inputs["Name"].default_value = "display_color"
    ng.links.new(to_points.outputs["Points"], store.inputs["Geometry"])
    ng.links.new(mode.outputs["Output"], store.inputs["Value"])

    setmat = ng.nodes.new("GeometryNodeSetMaterial")
    setmat.inputs["Material"].default_value = ensure_material()
    ng.links.new(store.outputs["Geometry"], setmat.inputs["Geometry"])
    out = setmat.outputs["Geometry"]
    if supports_gaussian_splats():
        # Gaussian Splats on: the kept points become a 3D Gaussian splat cloud, which Blender's
        # own renderers draw from position, scale, rotation and radiance:base (the mesh's
        # attributes, carried over by Mesh to Points). A Switch on a single value evaluates
        # only the branch it picks.
        # no material: with one, Blender shades the splats with it instead of their own radiance
        no_material = ng.nodes.new("GeometryNodeSetMaterial")
        ng.links.new(store.outputs["Geometry"], no_material.inputs["Geometry"])
        set_type = ng.nodes.new("GeometryNodePointsSetType")
        _set_menu(set_type.inputs["Type"], "3D Gaussian Splat", "GAUSSIAN_SPLAT")
        ng.links.new(no_material.outputs["Geometry"], set_type.inputs["Points"])
        switch = ng.nodes.new("GeometryNodeSwitch")
        switch.input_type = "GEOMETRY"
        ng.links.new(inp["Gaussian Splats"], switch.inputs["Switch"])
        ng.links.new(out, switch.inputs["False"])
        ng.links.new(set_type.outputs[0], switch.inputs["True"])
        out = switch.outputs[0]
    ng.links.new(out, go.inputs[0])
    _layout(ng)
    return ng


def _layout(ng):
    """Spread nodes left to right by link depth (for a readable editor view)."""
    depth = {n: 0 for n in ng.nodes}
    for _ in range(len(ng.nodes)):
        changed = False
        for link in ng.links:
            d = depth[link.from_node] + 1
            if d > depth[link.to_node]:
                depth[link.to_node] = d
                changed = True
        if not changed:
            break
    rows = {}
    for n, d in depth.items():
        r = rows.setdefault(d, 0)
        n.location = (d * 220.0, -r * 160.0)
        rows[d] = r + 1


def socket_id(ng, name: str) -> str:
    return ng.interface.items_tree[name].identifier


def input_path(mod, sid: str) -> str:
    """The data path (from the object) of a geometry-nodes modifier's input value: an ID
    property of the modifier (``modifiers["M"]["Socket_1"]``) up to Blender 5.2, a typed
    property under ``properties.inputs`` where the modifier has that (Blender 5.3)."""
    inputs = getattr(getattr(mod, "properties", None), "inputs", None)
    if inputs is not None and hasattr(inputs, sid):
        return f'modifiers["{mod.name}"].properties.inputs.{sid}.value'
    return f'modifiers["{mod.name}"]["{sid}"]'


def add_modifier(ob: bpy.types.Object) -> bpy.types.NodesModifier:
    """Add the points modifier to an avatar object and drive its inputs from ``ob.headsplat``."""
    ng = ensure_group()
    mod = ob.modifiers.new(MODIFIER_NAME, "NODES")
    mod.node_group = ng
    for name, _stype, path, _default in INPUTS:
        sid = socket_id(ng, name)
        data_path = input_path(mod, sid)
        fc = ob.driver_add(data_path)
        drv = fc.driver
        if path is not None:
            drv.type = "AVERAGE"
            _var(drv, "v", ob, path)
        elif name == "Layer Mask":
            drv.type = "SCRIPTED"
            terms = []
            for i in range(8):
                _var(drv, f"l{i}", ob, f"headsplat.layers[{i}]")
                terms.append(f"l{i}*{2 ** i}")
            drv.expression = " + ".join(terms)  # a "simple expression": no Python needed
        elif name == "Colour Mode":
            drv.type = "AVERAGE"
            _var(drv, "v", ob, "headsplat.colour_mode")
        # drivers write the value at evaluation; remove the default F-curve modifier's noise
        for m in list(fc.modifiers):
            fc.modifiers.remove(m)
    return mod


def _var(drv, name, ob, path):
    v = drv.variables.new()
    v.name = name
    v.type = "SINGLE_PROP"
    v.targets[0].id_type = "OBJECT"
    v.targets[0].id = ob
    v.targets[0].data_path = path
