"""The layering rules (docs/ARCHITECTURE.md): avatar_core never imports bpy (nor mathutils), its
subpackages import one another in one direction only (the floor order below), and the commands
live apart from the library."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

# The floor order of avatar_core, lowest first: a unit (a subpackage, or a top-level module) may
# import units on lower floors only; units on one floor do not import each other. The same table
# stands in docs/ARCHITECTURE.md.
FLOORS = [
    ("errors",),
    ("progress", "validate", "atomic", "metrics", "devices", "camera", "regions", "rotation"),
    ("head", "face"),
    ("gaussians",),
    ("render", "io"),
    ("fit",),
    ("motion",),
    ("recon",),
    ("eval", "train"),
    ("cli",),
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit_of(module: str) -> str:
    """avatar_core.recon.feedforward.network -> recon; avatar_core.errors -> errors; the package
    itself -> errors (its __init__ imports errors only); avatar_core.__main__ -> cli (the
    command table and its entry point)."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "errors"
    return "cli" if unit == "__main__" else unit


def imports_of(path: Path, root: Path):
    """(line, imported module) for every import in the file, at any depth (function-level, lazy
    ones too), relative imports resolved, and importlib.import_module("...") with a literal."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield node.lineno, mod
            for alias in node.names:  # `from avatar_core import io` imports the subpackage io
                if mod == "avatar_core":
                    yield node.lineno, f"avatar_core.{alias.name}"
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def unit_edges(root: Path):
    """{(from unit, to unit): [where, ...]} over avatar_core's sources under ``root``."""
    edges = {}
    for path in sorted((root / "avatar_core").rglob("*.py")):
        src = unit_of(module_name(path, root))
        for line, mod in imports_of(path, root):
            if mod != "avatar_core" and not mod.startswith("avatar_core."):
                continue
            dst = unit_of(mod)
            if dst != src:
                edges.setdefault((src, dst), []).append(f"{path.relative_to(root)}:{line} imports {mod}")
    return edges


def module_edges(root: Path):
    """{(module, module): [where]} between avatar_core's modules, leaving out imports of a
    package's ``__init__`` (a package re-exports its own modules, so those loops are by design)."""
    modules = {module_name(p, root): p for p in (root / "avatar_core").rglob("*.py")}
    edges = {}
    for name, path in sorted(modules.items()):
        for line, mod in imports_of(path, root):
            if mod in modules and mod != name and modules[mod].name != "__init__.py":
                edges.setdefault((name, mod), []).append(f"{path.relative_to(root)}:{line} imports {mod}")
    return edges


def cycles(edges) -> list:
    """The strongly connected components of more than one unit (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def against_the_floors(edges) -> list:
    bad = []
    for (a, b), where in sorted(edges.items()):
        if a not in FLOOR or b not in FLOOR:
            bad.append(f"{a} -> {b}: a unit with no floor (add it to FLOORS and docs/ARCHITECTURE.md): {where[0]}")
        elif FLOOR[b] >= FLOOR[a]:
            bad += [f"{a} (floor {FLOOR[a]}) -> {b} (floor {FLOOR[b]}): {w}" for w in where]
    return bad


def test_avatar_core_sources_never_import_bpy():
    pattern = re.compile(r"^\s*(import|from)\s+(bpy|mathutils|bmesh)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "avatar_core").rglob("*.py")
                 if pattern.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


def test_using_the_core_loads_no_blender_module():
    code = ("import sys, avatar_core.gaussians.avatar, avatar_core.io, avatar_core.render, avatar_core.recon.pipeline, "
            "avatar_core.motion, avatar_core.eval.novelview; print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('bpy', 'mathutils', 'bmesh')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def cycle_report(edges) -> str:
    """'' when the graph has no cycle; else the cycles and every import inside them."""
    found = cycles(edges)
    detail = [w for comp in found for (a, b), where in sorted(edges.items())
              if a in comp and b in comp for w in where]
    return "; ".join(" <-> ".join(c) for c in found) + ("\n" + "\n".join(detail) if detail else "")


def test_no_import_cycle_between_avatar_core_subpackages():
    assert cycle_report(unit_edges(ROOT)) == ""


def test_no_import_cycle_between_avatar_core_modules():
    assert cycle_report(module_edges(ROOT)) == ""


def test_every_import_points_down_the_floor_order():
    assert against_the_floors(unit_edges(ROOT)) == []


def test_every_unit_of_avatar_core_has_a_floor():
    units = {unit_of(module_name(p, ROOT)) for p in (ROOT / "avatar_core").rglob("*.py")}
    assert sorted(units - set(FLOOR)) == []


def test_the_floor_order_is_the_one_architecture_md_states():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    stated = " < ".join(", ".join(units) for units in FLOORS)
    assert stated in text


def test_no_module_under_recon_imports_train_or_eval():
    edges = unit_edges(ROOT)
    assert edges.get(("recon", "train"), []) + edges.get(("recon", "eval"), []) == []




def test_commands_live_in_avatar_core_cli():
    """Options are parsed in avatar_core/cli/ (and in the scripts run by hand: scripts/,
    build_addon.py), nowhere else in what ships; the one command table names those modules."""
    from avatar_core.__main__ import COMMANDS
    pattern = re.compile(r"^def add_arguments\b|\.add_argument\(", re.M)
    shipped = [p for pkg in ("avatar_core", "blender_addon", "operators", "panels", "cuda_backend")
               for p in sorted((ROOT / pkg).rglob("*.py"))]
    parsing = {str(p.relative_to(ROOT)) for p in shipped if pattern.search(p.read_text(encoding="utf-8"))}
    allowed = {p for p in parsing if p.startswith("avatar_core/cli/") or p == "avatar_core/__main__.py"}
    assert sorted(parsing - allowed) == []
    library = {m.replace(".", "/") + ".py" for m, _ in COMMANDS.values() if not m.startswith("avatar_core.cli.")}
    assert sorted(library) == []


@pytest.mark.parametrize("source, message", [
    ({"a/x.py": "from avatar_core.b import y\n", "b/y.py": "def f():\n    import avatar_core.a.x\n"}, "cycle"),
    ({"head/x.py": "def f():\n    from avatar_core.render import camera\n", "render/__init__.py": ""}, "floor"),
    ({"head/x.py": "from ..render import camera\n", "render/__init__.py": ""}, "floor"),
    ({"head/x.py": "import importlib\nimportlib.import_module('avatar_core.io.ply')\n", "io/ply.py": ""}, "floor"),
    ({"render/x.py": "from avatar_core.head import lbs\n", "head/lbs.py": ""}, None),
])
def test_the_layer_checks_catch_lazy_relative_and_cyclic_imports(tmp_path, source, message):
    for rel, text in source.items():
        p = tmp_path / "avatar_core" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    edges = unit_edges(tmp_path)
    if message == "cycle":
        assert cycles(edges) == [["a", "b"]]
    elif message == "floor":
        assert against_the_floors(edges) != []
    else:
        assert cycles(edges) == [] and against_the_floors(edges) == []
