"""Exports for other tools: SPZ and glTF (KHR_gaussian_splatting) round trips, the published
layouts byte by byte, Khronos' glTF validator (when node is present), the ``export`` command
for one frame and for a motion as a sequence, and its refusals."""

import gzip
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_core.errors import AvatarError
from avatar_core.gaussians.frame import GaussianFrame
from avatar_core.io.export import INDEX_NAME, export_sequence, read_frame, read_index, write_frame
from avatar_core.io.gltf_splat import read_glb, write_glb
from avatar_core.io.spz import read_spz, write_spz

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
SH_C0 = 0.28209479177387814


@pytest.fixture(scope="module")
def frame(small_avatar):
    with torch.no_grad():
        return small_avatar.animate(expression={"jawOpen": 0.7}, lod=2)


@pytest.fixture()
def avatar_file(tmp_path, small_avatar):
    from avatar_core.io import save_avatar
    return save_avatar(small_avatar, tmp_path / "a.avatar")


def _random_frame(n=500, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g)
    return GaussianFrame(means=(torch.rand(n, 3, generator=g) - 0.5)[None] * 0.4,
                         quats=(q / q.norm(dim=1, keepdim=True))[None],
                         scales=torch.exp(torch.rand(n, 3, generator=g) * 4 - 8)[None],
                         opacities=torch.rand(n, generator=g)[None],
                         features=torch.rand(n, 5, generator=g)[None])


def _rotation_error(a, b):
    """1 - |<a, b>| per Gaussian (0 for the same rotation; q and -q are one rotation)."""
    return (1 - (a * b).sum(-1).abs()).max().item()


# ----------------------------------------------------------------------------- SPZ
def test_spz_round_trip_within_quantisation(tmp_path, frame):
    p = write_spz(tmp_path / "a.spz", frame)
    back = read_spz(p)
    assert back.num == frame.num
    assert (back.means - frame.means).abs().max().item() < 1e-3            # 1 mm; 12 fractional bits give 0.12 mm
    assert (back.features[..., :3] - frame.features[..., :3]).abs().max().item() * 255 <= 2.0
    assert (back.opacities - frame.opacities).abs().max().item() * 255 <= 0.5 + 1e-4
    assert (back.scales / frame.scales).log().abs().max().item() <= 1 / 32 + 1e-4  # log scale in 1/16 steps
    assert _rotation_error(back.quats, frame.quats) < 1e-4
    assert p.stat().st_size * 5 < (frame.num * 62 * 4)                    # far smaller than a PLY


def test_spz_round_trip_random_gaussians(tmp_path):
    f = _random_frame()
    back = read_spz(write_spz(tmp_path / "r.spz", f))
    assert (back.means - f.means).abs().max().item() < 1e-3
    assert (back.features[..., :3] - f.features[..., :3]).abs().max().item() * 255 <= 2.0
    assert _rotation_error(back.quats, f.quats) < 1e-4


def test_spz_layout_is_the_published_one(tmp_path):
    """Header fields, 24-bit fixed-point positions, and hand-computed bytes for one Gaussian."""
    f = GaussianFrame(means=torch.tensor([[[0.5, -0.25, 1.0]]]), quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]),
                      scales=torch.tensor([[[np.exp(-5.0), 1.0, np.exp(-10.0)]]], dtype=torch.float32),
                      opacities=torch.tensor([[1.0]]), features=torch.tensor([[[0.5, 1.0, 0.0]]]))
    raw = gzip.decompress((write_spz(tmp_path / "one.spz", f)).read_bytes())
    magic, version, n, sh, frac, flags, reserved = struct.unpack_from("<IIIBBBB", raw)
    assert (magic, version, n, sh, frac, flags, reserved) == (0x5053474E, 3, 1, 0, 12, 0, 0)
    assert raw[:4] == b"NGSP"
    body = raw[16:]
    assert len(body) == 9 + 1 + 3 + 3 + 4
    assert body[0:3] == (2048).to_bytes(3, "little")                      # 0.5 m * 4096
    assert body[3:6] == ((1 << 24) - 1024).to_bytes(3, "little")          # -0.25 m, two's complement
    assert body[6:9] == (4096).to_bytes(3, "little")
    assert body[9] == 255                                                 # alpha
    f_dc = (np.array([0.5, 1.0, 0.0]) - 0.5) / SH_C0
    assert list(body[10:13]) == list(np.clip(np.round(f_dc * 0.15 * 255 + 127.5), 0, 255).astype(int))
    assert list(body[13:16]) == [80, 160, 0]                              # (log s + 10) * 16
    assert body[16:20] == bytes([0, 0, 0, 0xC0])                          # identity: w largest (index 3)


def test_spz_refuses_foreign_and_truncated_files(tmp_path, frame):
    bad = tmp_path / "x.spz"
    bad.write_bytes(b"not a splat")
    with pytest.raises(AvatarError, match="not an SPZ file"):
        read_spz(bad)
    good = gzip.decompress(write_spz(tmp_path / "g.spz", frame).read_bytes())
    bad.write_bytes(gzip.compress(good[:100]))
    with pytest.raises(AvatarError, match="truncated"):
        read_spz(bad)


# ----------------------------------------------------------------------------- glTF
def _glb_json(path):
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data)
    assert magic == 0x46546C67 and version == 2 and length == len(data)
    chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
    assert chunk_type == 0x4E4F534A  # JSON
    return json.loads(data[20:20 + chunk_len])


def test_glb_declares_the_extension_and_its_attributes(tmp_path, frame):
    p = write_glb(tmp_path / "a.glb", frame, extras={"lod": 2})
    doc = _glb_json(p)
    assert doc["extensionsUsed"] == ["KHR_gaussian_splatting"]
    assert "extensionsRequired" not in doc                                # viewers without it show points
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0
    assert prim["extensions"]["KHR_gaussian_splatting"]["kernel"] == "ellipse"
    assert prim["extensions"]["KHR_gaussian_splatting"]["colorSpace"] == "srgb_rec709_display"
    for name in ("POSITION", "KHR_gaussian_splatting:ROTATION", "KHR_gaussian_splatting:SCALE",
                 "KHR_gaussian_splatting:OPACITY", "KHR_gaussian_splatting:SH_DEGREE_0_COEF_0", "COLOR_0"):
        acc = doc["accessors"][prim["attributes"][name]]
        assert acc["componentType"] == 5126 and acc["count"] == frame.num
    pos = doc["accessors"][prim["attributes"]["POSITION"]]
    assert np.allclose(pos["min"], frame.means[0].min(0).values.numpy(), atol=1e-6)
    meta = doc["asset"]["extras"]["headsplat"]
    assert "refiner is not part" in meta["colours"] and meta["lod"] == 2


def test_glb_round_trip(tmp_path, frame):
    back = read_glb(write_glb(tmp_path / "a.glb", frame))
    assert back.num == frame.num
    assert (back.means - frame.means).abs().max().item() < 1e-6
    assert (back.features[..., :3] - frame.features[..., :3]).abs().max().item() < 1e-5
    assert torch.allclose(back.opacities, frame.opacities, atol=1e-6)
    assert torch.allclose(back.scales, frame.scales, rtol=1e-6)
    assert _rotation_error(back.quats, frame.quats) < 1e-6


def test_glb_without_pygltflib_is_one_sentence(tmp_path, frame, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "pygltflib", None)                   # import fails
    with pytest.raises(AvatarError, match="pip install pygltflib"):
        write_glb(tmp_path / "a.glb", frame)
    assert list(tmp_path.iterdir()) == []


def _validate(paths):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the glTF validator runs on node")
    if not (JS / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("Khronos' glTF validator is not installed: run `npm ci --prefix tests/js`")
    r = subprocess.run([node, str(JS / "validate.mjs"), *map(str, paths)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def _rename_namespaced_attributes(src, dst):
    """The same .glb with ``KHR_gaussian_splatting:X`` attributes renamed ``_KHR_GS_X`` (JSON chunk only)."""
    data = Path(src).read_bytes()
    n = struct.unpack_from("<I", data, 12)[0]
    doc = json.loads(data[20:20 + n])
    prim = doc["meshes"][0]["primitives"][0]
    prim["attributes"] = {k.replace("KHR_gaussian_splatting:", "_KHR_GS_"): v for k, v in prim["attributes"].items()}
    js = json.dumps(doc).encode()
    js += b" " * (-len(js) % 4)
    rest = data[20 + n:]
    out = struct.pack("<III", 0x46546C67, 2, 12 + 8 + len(js) + len(rest)) + struct.pack("<II", len(js),
                                                                                           0x4E4F534A)
    Path(dst).write_bytes(out + js + rest)
    return dst


def test_glb_passes_khronos_validator(tmp_path, frame):
    """Khronos' gltf-validator (npm 2.0.0-dev.3.10, the newest published) knows nothing of
    KHR_gaussian_splatting and rejects attribute names prefixed by an extension, which the
    ratified extension requires (KhronosGroup/glTF-Validator#252, open; the core-spec change is
    KhronosGroup/glTF#2514). So: the only errors it reports are those four names, and the same file
    with the names underscored (application-specific semantics) has no error and no warning."""
    p = write_glb(tmp_path / "a.glb", frame)
    alt = _rename_namespaced_attributes(p, tmp_path / "underscored.glb")
    report, report_alt = _validate([p, alt])
    assert report["info"]["extensionsUsed"] == ["KHR_gaussian_splatting"]
    errors = [m for m in report["issues"]["messages"] if m["severity"] == 0]
    assert {m["code"] for m in errors} <= {"MESH_PRIMITIVE_INVALID_ATTRIBUTE"}, errors
    assert sorted(m["pointer"].rsplit("/", 1)[1] for m in errors) == sorted(
        f"KHR_gaussian_splatting:{k}" for k in ("ROTATION", "SCALE", "OPACITY", "SH_DEGREE_0_COEF_0"))
    assert report["issues"]["numWarnings"] == 0
    assert report_alt["issues"]["numErrors"] == 0 and report_alt["issues"]["numWarnings"] == 0, report_alt
    assert report_alt["info"]["totalVertexCount"] == frame.num and report_alt["info"]["drawCallCount"] == 1


# ----------------------------------------------------------------------------- frames and sequences
@pytest.mark.parametrize("fmt", ["ply", "glb", "spz"])
def test_write_frame_by_suffix_and_read_back(tmp_path, frame, fmt):
    p = write_frame(tmp_path / f"f.{fmt}", frame)
    back = read_frame(p)
    assert back.num == frame.num and (back.means - frame.means).abs().max().item() < 1e-3
    assert [x.name for x in tmp_path.iterdir()] == [f"f.{fmt}"]          # no temporary left over


def test_write_frame_refuses_an_unknown_suffix(tmp_path, frame):
    with pytest.raises(AvatarError, match=r"\.ply, \.glb or \.spz"):
        write_frame(tmp_path / "f.obj", frame)


def test_sequence_folder_and_index(tmp_path, small_avatar):
    frames = [small_avatar.animate(expression={"jawOpen": 0.1 * i}, lod=0) for i in range(3)]
    batch = GaussianFrame(*(torch.cat([getattr(f, k) for f in frames]) for k in
                            ("means", "quats", "scales", "opacities", "features")))
    idx = export_sequence(tmp_path / "seq", [batch.index(0), GaussianFrame(*(getattr(batch, k)[1:] for k in (
        "means", "quats", "scales", "opacities", "features")))], "spz", fps=24)
    assert idx["frame_count"] == 3 and idx["fps"] == 24 and idx["files"][2] == "frame_00002.spz"
    assert read_index(tmp_path / "seq") == idx
    assert sorted(x.name for x in (tmp_path / "seq").iterdir()) == ["frame_00000.spz", "frame_00001.spz",
                                                                     "frame_00002.spz", INDEX_NAME]
    jaw = read_spz(tmp_path / "seq" / "frame_00002.spz")
    assert (jaw.means - frames[2].means).abs().max().item() < 1e-3
    # a second, shorter export into the same folder replaces the frames
    export_sequence(tmp_path / "seq", [frames[0]], "spz", fps=24)
    assert sorted(x.name for x in (tmp_path / "seq").iterdir()) == ["frame_00000.spz", INDEX_NAME]


def test_sequence_interrupted_leaves_nothing(tmp_path, small_avatar):
    def frames():
        yield small_avatar.animate(lod=0)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_sequence(tmp_path / "seq", frames(), "ply", fps=30)
    assert list(tmp_path.iterdir()) == []


def test_frame_transformed_moves_points_and_turns_gaussians(frame):
    c, s = np.cos(0.3), np.sin(0.3)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    out = frame.transformed(R, 2.0, [0.0, 0.0, 1.0])
    assert torch.allclose(out.means, 2 * frame.means @ torch.tensor(R, dtype=torch.float32).T
                          + torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert torch.allclose(out.scales, 2 * frame.scales)
    from avatar_core.rotation import quaternion_to_matrix
    M = quaternion_to_matrix(out.quats[0, :5])
    assert torch.allclose(M, torch.tensor(R, dtype=torch.float32) @ quaternion_to_matrix(frame.quats[0, :5]),
                          atol=1e-5)


# ----------------------------------------------------------------------------- the command
def _cli(*args):
    from avatar_core.__main__ import main
    return main([str(a) for a in args])


def _csv(path, n, names=("jawOpen", "eyeBlinkLeft")):
    rows = [",".join(names)] + [",".join(f"{(i % 10) / 10:.2f}" for _ in names) for i in range(n)]
    Path(path).write_text("\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["ply", "glb", "spz"])
def test_cli_export_one_frame(tmp_path, avatar_file, small_avatar, fmt, capsys):
    out = tmp_path / f"face.{fmt}"
    assert _cli("export", avatar_file, "-o", out, "--format", fmt, "--lod", 1, "--expr", "jawOpen=0.5") == 0
    ref = small_avatar.animate(expression={"jawOpen": 0.5}, lod=1)
    got = read_frame(out)
    assert got.num == ref.num and (got.means - ref.means).abs().max().item() < 1e-3
    assert "Gaussians at LOD 1" in capsys.readouterr().out


def test_cli_export_ply_alias_is_the_same_command(tmp_path, avatar_file):
    a, b = tmp_path / "a.ply", tmp_path / "b.ply"
    assert _cli("export-ply", avatar_file, "-o", a, "--lod", 0) == 0
    assert _cli("export", avatar_file, "-o", b, "--lod", 0) == 0
    assert a.read_bytes() == b.read_bytes()


def test_cli_export_motion_as_sequence(tmp_path, avatar_file, small_avatar):
    csv = _csv(tmp_path / "take.csv", 12)
    out = tmp_path / "seq"
    assert _cli("export", avatar_file, "-o", out, "--format", "glb", "--lod", 0, "--motion", csv,
                "--motion-fps", 30, "--frames", "2:7", "--batch", 2) == 0
    idx = read_index(out)
    assert idx["frame_count"] == 5 and idx["fps"] == 30 and idx["first_frame"] == 2 and idx["lod"] == 0
    assert "refiner is not part" in idx["colours"]
    got = read_glb(out / "frame_00001.glb")                               # source frame 3: 0.3 on both keys
    ref = small_avatar.animate(expression={"jawOpen": 0.3, "eyeBlinkLeft": 0.3}, lod=0)
    assert (got.means - ref.means).abs().max().item() < 1e-5


@pytest.mark.parametrize("args,message", [
    (["--frames", "0:5"], "--frames needs --motion"),
    (["--expr", "jawOpen"], "NAME=VALUE"),
    (["--lod", "7"], "--lod 7 is not in"),
])
def test_cli_export_refusals_are_one_sentence(tmp_path, avatar_file, args, message, capsys):
    out = tmp_path / "x.ply"
    assert _cli("export", avatar_file, "-o", out, *args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and err.count("\n") == 0
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.avatar"]


def test_cli_export_never_overwrites_its_input(tmp_path, avatar_file, capsys):
    before = avatar_file.read_bytes()
    assert _cli("export", avatar_file, "-o", avatar_file, "--format", "ply") == 1
    assert "is the input" in capsys.readouterr().err
    assert avatar_file.read_bytes() == before
    csv = _csv(tmp_path / "take.csv", 3)
    assert _cli("export", avatar_file, "-o", csv, "--motion", csv) == 1
    assert "is the input" in capsys.readouterr().err


def test_cli_export_missing_folder_and_bad_frames(tmp_path, avatar_file, capsys):
    assert _cli("export", avatar_file, "-o", tmp_path / "no" / "x.glb") == 1
    assert "does not exist" in capsys.readouterr().err
    csv = _csv(tmp_path / "take.csv", 4)
    assert _cli("export", avatar_file, "-o", tmp_path / "seq", "--motion", csv, "--frames", "3:1") == 1
    assert "selects no frame" in capsys.readouterr().err
    assert not (tmp_path / "seq").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_avatar_core_export_does_not_import_bpy():
    code = ("import sys; import avatar_core.io.export, avatar_core.io.spz, avatar_core.io.gltf_splat, "
            "avatar_core.cli.export; assert 'bpy' not in sys.modules")
    subprocess.run([os.fspath(Path(os.sys.executable)), "-c", code], check=True, cwd=ROOT)


def test_blender_ply_importer_reads_a_sequence_frame(tmp_path, avatar_file, small_avatar):
    """Blender's own PLY importer (the bpy of this Python, in a subprocess: 5.0 here, 5.3 in the
    Python 3.13 lane, where it makes a Gaussian point cloud) reads a frame of an exported sequence."""
    import sys
    pytest.importorskip("bpy")
    csv = _csv(tmp_path / "take.csv", 3)
    assert _cli("export", avatar_file, "-o", tmp_path / "seq", "--lod", 0, "--motion", csv, "--motion-fps", 30) == 0
    p = tmp_path / "seq" / "frame_00001.ply"
    script = f"""
import bpy
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.wm.ply_import(filepath={str(p)!r})
d = bpy.context.selected_objects[0].data
pts = d.points if hasattr(d, "points") else d.vertices
print("VERSION", bpy.app.version_string)
print("COUNT", len(pts))
print("X0", pts[0].co.x)
print("ATTRS", ",".join(sorted(a.name for a in d.attributes)))
"""
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "bur"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    got = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line.split(" ")[0] in
               ("VERSION", "COUNT", "X0", "ATTRS"))
    ref = small_avatar.animate(expression={"jawOpen": 0.1, "eyeBlinkLeft": 0.1}, lod=0)
    assert int(got["COUNT"]) == ref.num
    assert abs(float(got["X0"]) - float(ref.means[0, 0, 0])) < 1e-5
    attrs = set(got["ATTRS"].split(","))
    # Blender < 5.3 keeps the PLY's properties; 5.3 makes a Gaussian point cloud
    assert {"f_dc_0", "opacity", "scale_0", "rot_0"} <= attrs or {"radiance:base", "scale", "rotation"} <= attrs
