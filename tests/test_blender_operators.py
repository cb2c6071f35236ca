"""Each operator through bpy.ops (bpy module, background): import avatar, create from photo
(real error paths; the success path and the modal/threaded mechanics with a tiny stand-in
reconstruction, since a real one takes minutes on CPU), import motion (timing, retargeting,
refusal), export PLY, reset / key expressions, pack / relink, dependencies."""

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from blender_addon import testing

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bpy():
    return testing.ensure_registered()


@pytest.fixture()
def scene(bpy):
    return testing.fresh_scene()


@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory, small_avatar):
    from avatar_core.io import save_avatar
    path = tmp_path_factory.mktemp("av") / "small.avatar"
    save_avatar(small_avatar, path)
    return path


def n_objects(bpy):
    return len(bpy.data.objects)


# --------------------------------------------------------------------------------- avatar file
def test_import_avatar(bpy, scene, avatar_file, small_avatar):
    assert bpy.ops.headsplat.import_avatar(filepath=str(avatar_file)) == {"FINISHED"}
    ob = bpy.context.active_object
    assert ob.headsplat.is_avatar and ob.name == "small"
    assert len(ob.data.vertices) == small_avatar.num_gaussians
    assert bpy.context.scene.render.engine == "HEADSPLAT" and bpy.context.scene.camera is not None


def test_import_bad_avatar_file_reports_and_changes_nothing(bpy, scene, tmp_path):
    bad = tmp_path / "bad.avatar"
    bad.write_bytes(b"not a safetensors file")
    before = n_objects(bpy)
    with pytest.raises(RuntimeError, match="not a readable avatar file"):
        bpy.ops.headsplat.import_avatar(filepath=str(bad))
    assert n_objects(bpy) == before


def test_export_ply_at_current_pose_and_lod(bpy, scene, avatar_file, small_avatar, tmp_path):
    from avatar_core.io import read_ply
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    ob.headsplat.lod = 1
    ob.data.shape_keys.key_blocks["jawOpen"].value = 0.6
    from blender_addon import params
    pose = np.zeros((5, 3), np.float32)
    pose[2, 0] = 0.2
    params.set_pose(ob.headsplat.rig, small_avatar.joint_names, pose)
    out = tmp_path / "pose.ply"
    assert bpy.ops.headsplat.export_ply(filepath=str(out)) == {"FINISHED"}
    got = read_ply(out)
    ref = small_avatar.animate(expression={"jawOpen": 0.6}, pose=torch.tensor(pose)[None], lod=1)
    assert got.means.shape == ref.means.shape
    assert torch.allclose(got.means, ref.means, atol=1e-5)
    # Blender-world coordinates: the same points where the scene has them
    out2 = tmp_path / "world.ply"
    assert bpy.ops.headsplat.export_ply(filepath=str(out2), coordinates="BLENDER") == {"FINISHED"}
    world = read_ply(out2).means[0].numpy()
    M = np.array(ob.matrix_world)
    assert np.allclose(world, ref.means[0].numpy() @ M[:3, :3].T + M[:3, 3], atol=1e-5)


def test_pack_unpack_and_poll_messages(bpy, scene, avatar_file):
    from blender_addon import storage
    # without an avatar the avatar operators are unavailable, with a reason
    assert not bpy.ops.headsplat.export_ply.poll()
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file), pack=False)
    ob = bpy.context.active_object
    assert not storage.is_packed(ob)
    assert bpy.ops.headsplat.pack_avatar(pack=True) == {"FINISHED"}
    assert storage.is_packed(ob)
    assert bpy.ops.headsplat.pack_avatar(pack=False) == {"FINISHED"}
    assert not storage.is_packed(ob) and storage.data_available(ob)


# --------------------------------------------------------------------------------- expressions
def test_reset_and_key_expressions(bpy, scene, avatar_file):
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    blocks = ob.data.shape_keys.key_blocks
    blocks["jawOpen"].value = 0.7
    ob.headsplat.rig.pose.bones["jaw"].rotation_quaternion = (0.9, 0.1, 0.0, 0.0)
    bpy.context.scene.frame_set(5)
    assert bpy.ops.headsplat.keyframe_expressions() == {"FINISHED"}
    from bpy_extras.anim_utils import animdata_get_channelbag_for_assigned_slot
    bag = animdata_get_channelbag_for_assigned_slot(ob.data.shape_keys.animation_data)
    assert {fc.data_path for fc in bag.fcurves} >= {'key_blocks["jawOpen"].value'}
    assert bpy.ops.headsplat.reset_expressions() == {"FINISHED"}
    assert blocks["jawOpen"].value == 0.0
    assert tuple(ob.headsplat.rig.pose.bones["jaw"].rotation_quaternion) == (1.0, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------- motion
def _motion(av, T, fps=30.0, seed=0):
    from avatar_core.motion import MotionSequence
    g = np.random.default_rng(seed)
    t = np.linspace(0, 4 * np.pi, T)
    expr = (0.5 + 0.5 * np.sin(t[:, None] + np.arange(av.num_expr))).astype(np.float32)
    pose = np.zeros((T, 5, 3), np.float32)
    pose[:, 2, 0] = 0.2 * (1 + np.sin(t))
    pose[:, 1, 1] = 0.3 * np.sin(t / 2)
    trans = (g.normal(size=(T, 3)) * 0.001).astype(np.float32)
    return MotionSequence(fps=fps, expr_names=list(av.expr_names), expression=expr, pose=pose, translation=trans,
                          source="test")


def test_import_1000_frame_motion_fast_and_exact(bpy, scene, avatar_file, small_avatar, tmp_path):
    from blender_addon import params
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    motion = _motion(small_avatar, 1000, fps=bpy.context.scene.render.fps)
    path = tmp_path / "take.npz"
    motion.save(path)
    t = time.perf_counter()
    assert bpy.ops.headsplat.import_motion(filepath=str(path), start_frame=1) == {"FINISHED"}
    seconds = time.perf_counter() - t
    assert seconds < 5.0, seconds
    assert bpy.context.scene.frame_end == 1000
    for f in (1, 250, 777):
        bpy.context.scene.frame_set(f)
        p = params.frame_params(ob, ob.headsplat.rig, small_avatar)
        assert np.allclose(p["expression"], motion.expression[f - 1], atol=1e-6)
        assert np.allclose(p["pose"], motion.pose[f - 1], atol=1e-5)
        assert np.allclose(p["translation"], motion.translation[f - 1], atol=1e-6)


def test_import_arkit_csv_retargets_by_name(bpy, scene, avatar_file, small_avatar, tmp_path):
    from avatar_core.motion.arkit import ARKIT_NAMES
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    T = 20
    vals = np.tile(np.linspace(0, 1, T)[:, None], (1, len(ARKIT_NAMES)))
    header = "Timecode,BlendShapeCount," + ",".join(n[0].upper() + n[1:] for n in ARKIT_NAMES)
    rows = [f"00:00:00:{i:02d}.000,52," + ",".join(f"{v:.4f}" for v in r) for i, r in enumerate(vals)]
    path = tmp_path / "take.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    assert bpy.ops.headsplat.import_motion(filepath=str(path), start_frame=10, match_fps=False) == {"FINISHED"}
    bpy.context.scene.frame_set(10 + T - 1)
    assert ob.data.shape_keys.key_blocks["jawOpen"].value == pytest.approx(1.0, abs=1e-4)


def test_import_motion_with_foreign_expressions_is_refused(bpy, scene, avatar_file, tmp_path):
    from avatar_core.motion import MotionSequence
    bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    ob = bpy.context.active_object
    T = 5
    seq = MotionSequence(fps=25, expr_names=[f"exp_{i:03d}" for i in range(10)],
                         expression=np.zeros((T, 10), np.float32), pose=np.zeros((T, 5, 3), np.float32),
                         translation=np.zeros((T, 3), np.float32), source="flame take")
    path = tmp_path / "flame.npz"
    seq.save(path)
    with pytest.raises(RuntimeError, match="expects"):
        bpy.ops.headsplat.import_motion(filepath=str(path))
    assert ob.data.shape_keys.animation_data is None or ob.data.shape_keys.animation_data.action is None
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.headsplat.import_motion(filepath=str(tmp_path / "missing.csv"))


# --------------------------------------------------------------------------------- create from photo
@pytest.fixture()
def tiny_reconstruct(monkeypatch, small_avatar):
    """Replace the minutes-long reconstruction by one that reports progress and honours cancel."""
    import operators.create as create
    calls = []

    def fake(photo, out_path, head, quality, device, progress=None, cancel=None):
        from avatar_core.errors import Cancelled
        calls.append((photo, out_path, head, quality, device))
        for i in range(5):
            progress(i / 5, f"step {i}")
            if cancel is not None and cancel.is_set():
                raise Cancelled("The operation was cancelled.")
            time.sleep(0.01)
        if out_path:
            from avatar_core.io import save_avatar
            save_avatar(small_avatar, out_path)
        return small_avatar

    monkeypatch.setattr(create, "_reconstruct", fake)
    return calls


def test_create_from_photo_runs_the_reconstruction(bpy, scene, tiny_reconstruct, tmp_path, small_avatar):
    photo = tmp_path / "me.png"
    from PIL import Image
    Image.new("RGB", (64, 64), (120, 90, 80)).save(photo)
    assert bpy.ops.headsplat.create_from_photo(filepath=str(photo), quality="fast") == {"FINISHED"}
    (call,) = tiny_reconstruct
    assert call[0] == str(photo) and call[1] == str(tmp_path / "me.avatar") and call[2] == "open"
    assert call[3] == "fast" and call[4] == "cpu"
    ob = bpy.data.objects["me"]
    assert ob.headsplat.is_avatar and ob.headsplat.avatar_path.endswith("me.avatar")
    timing = ob["_headsplat_timing"]
    assert timing["build_s"] < 10.0


def test_create_from_photo_real_reconstruction_then_f12(bpy, scene, tmp_path):
    """The real background job (fast quality) on a shared portrait, then an F12 that draws it.
    Run in the Python 3.13 lane (1-3 min on 2 cores); the 3.11 lane reconstructs in test_recon."""
    if os.environ.get("HEADSPLAT_LANE") != "py313":
        pytest.skip("the real Create from Photo runs in the Python 3.13 lane (scripts/lane313.sh)")
    from conftest import shared_data
    photo = shared_data("portraits", "obama.jpg")
    # save_file off: the avatar would go beside the photo, in the read-only shared folder
    assert bpy.ops.headsplat.create_from_photo(filepath=str(photo), quality="fast", save_file=False) == {"FINISHED"}
    ob = bpy.context.view_layer.objects.active
    assert ob is not None and ob.headsplat.is_avatar and ob.headsplat.num_gaussians > 1000
    img, _ = testing.render_still(64, 64)
    assert img[..., 3].mean() > 0.05 and np.ptp(img[..., :3][img[..., 3] > 0.5]) > 0.05


def test_create_from_photo_bad_inputs_leave_scene_unchanged(bpy, scene, tmp_path):
    before = n_objects(bpy)
    txt = tmp_path / "notes.png"
    txt.write_text("this is not an image")
    with pytest.raises(RuntimeError, match="(?i)image"):
        bpy.ops.headsplat.create_from_photo(filepath=str(txt), save_file=False)
    assert n_objects(bpy) == before
    with pytest.raises(RuntimeError, match="does not exist"):
        bpy.ops.headsplat.create_from_photo(filepath=str(tmp_path / "missing.jpg"))
    from PIL import Image
    blank = tmp_path / "wall.png"
    g = np.linspace(0, 255, 256, dtype=np.uint8)
    Image.fromarray(np.stack([np.tile(g, (256, 1))] * 3, -1)).save(blank)
    with pytest.raises(RuntimeError, match="(?i)face"):
        bpy.ops.headsplat.create_from_photo(filepath=str(blank), save_file=False)
    assert n_objects(bpy) == before
    assert not (tmp_path / "wall.avatar").exists()


class _Stub:
    """Enough of bpy's context for JobOperatorMixin's modal path."""

    def __init__(self):
        self.status, self.progress, self.timers = [], [], []
        self.window = object()
        self.window_manager = self
        self.workspace = self

    def event_timer_add(self, step, window=None):
        self.timers.append(step)
        return "timer"

    def event_timer_remove(self, timer):
        self.timers.remove(0.2)

    def progress_begin(self, a, b):
        pass

    def progress_update(self, v):
        self.progress.append(v)

    def progress_end(self):
        self.progress.append("end")

    def modal_handler_add(self, op):
        pass

    def status_text_set(self, text):
        self.status.append(text)


class _Event:
    def __init__(self, type, value="PRESS"):
        self.type, self.value = type, value


def test_modal_job_progress_and_escape_cancel(bpy, monkeypatch):
    """The modal mechanics: timer ticks show progress in the status bar; Esc cancels the
    worker thread, the operator reports and cancels, the status bar is cleared."""
    from avatar_core.errors import Cancelled

    from blender_addon.pure.jobs import Job
    from operators.common import JobOperatorMixin
    started = threading.Event()

    def work(progress=None, cancel=None):
        progress(0.25, "fitting")
        started.set()
        while not cancel.wait(0.01):
            pass
        raise Cancelled("The operation was cancelled.")

    class Op(JobOperatorMixin):
        reports = []

        def report(self, kind, msg):
            self.reports.append((kind, msg))

        def finish(self, context):
            from operators.common import report_exception
            report_exception(self, self._job.error, "Creating the avatar")
            return {"CANCELLED"}

    op, ctx = Op(), _Stub()
    op._job = Job(work)
    op._job.start()
    op._timer = ctx.event_timer_add(0.2)
    started.wait(5)
    assert op.modal(ctx, _Event("TIMER")) == {"PASS_THROUGH"}
    assert ctx.status[-1].startswith("HeadSplat: 25% fitting")
    assert op.modal(ctx, _Event("ESC")) == {"RUNNING_MODAL"}
    assert op._job.wait(5)
    assert op.modal(ctx, _Event("TIMER")) == {"CANCELLED"}
    assert ctx.status[-1] is None and ctx.progress[-1] == "end" and not ctx.timers
    assert op.reports == [({"WARNING"}, "Creating the avatar was cancelled; the scene is unchanged.")]


def test_job_reports_errors_and_results():
    from blender_addon.pure.jobs import Job
    ok = Job(lambda x, progress=None, cancel=None: x * 2, 21).start()
    assert ok.wait(5) and ok.result == 42 and ok.error is None
    bad = Job(lambda progress=None, cancel=None: 1 / 0).start()
    assert bad.wait(5) and isinstance(bad.error, ZeroDivisionError)


# --------------------------------------------------------------------------------- dependencies
def test_dependency_check_names_what_is_missing(monkeypatch):
    from blender_addon.pure import deps
    reqs = deps.REQUIREMENTS + (deps.Requirement("headsplat_no_such_module", "nope", "nope==1.0", "testing"),)
    st = deps.check(reqs)
    assert not st.ok and [r.pip for r, _ in st.missing] == ["nope==1.0"]
    assert "nope==1.0 (not installed, needed for testing)" in st.sentence()
    assert st.python in st.sentence()
    cmd = deps.command([reqs[-1]], target_dir="/tmp/x", python="/py")
    assert cmd[:6] == ["/py", "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    assert cmd[-3:] == ["--target", "/tmp/x", "nope==1.0"]
    # everything the add-on needs is present in this environment
    assert deps.check().ok, deps.check().sentence()


def test_install_dependencies_into_target_folder(tmp_path):
    """pip --target into the add-on's folder, offline, with a tiny local wheel."""
    import sys
    import zipfile
    from blender_addon.pure import deps
    wheel = tmp_path / "wheels" / "headsplat_dummy-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("headsplat_dummy/__init__.py", "VALUE = 7\n")
        z.writestr("headsplat_dummy-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: headsplat-dummy\nVersion: 1.0\n")
        z.writestr("headsplat_dummy-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("headsplat_dummy-1.0.dist-info/RECORD", "")
    req = deps.Requirement("headsplat_dummy", "headsplat-dummy", "headsplat-dummy", "the test")
    target = tmp_path / "site"
    old = deps.target()
    try:
        assert not deps.check((req,)).ok
        deps.install([req], target_dir=str(target), extra_args=["--no-index", "--find-links", str(wheel.parent)])
        assert deps.check((req,)).ok and str(target) in sys.path
        import headsplat_dummy
        assert headsplat_dummy.VALUE == 7
    finally:
        if str(target) in sys.path:
            sys.path.remove(str(target))
        deps.set_target(old)


PIP_SCIPY_FAILURE = """Collecting scipy==1.99
  Downloading something
ERROR: Ignored the following versions that require a different python version: 1.6.2 Requires-Python >=3.7,<3.10; 1.6.3 Requires-Python >=3.7,<3.10; 1.7.0 Requires-Python >=3.7,<3.10; 1.7.1 Requires-Python >=3.7,<3.10
ERROR: Could not find a version that satisfies the requirement scipy==1.99 (from versions: 1.11.0, 1.11.1, 1.11.2)
ERROR: No matching distribution found for scipy==1.99
"""


def test_pip_failure_is_one_sentence_with_the_decisive_line(tmp_path):
    from blender_addon.pure import deps
    assert deps.decisive_line(PIP_SCIPY_FAILURE.splitlines()) == "ERROR: No matching distribution found for scipy==1.99"
    assert deps.decisive_line(["Collecting x", "ERROR: Ignored the following versions ...", "ERROR: boom"]) == "ERROR: boom"
    req = deps.Requirement("headsplat_no_such_module", "nope", "headsplat-nope==1.0", "the test")
    (tmp_path / "empty").mkdir()
    target = tmp_path / "ext" / "site-packages"
    old = deps.target()
    try:
        with pytest.raises(deps.InstallError) as info:
            deps.install([req], target_dir=str(target), fetch_models=False,
                         extra_args=["--no-index", "--find-links", str(tmp_path / "empty")])
    finally:
        deps.set_target(old)
    sentence = str(info.value)
    assert "No matching distribution found for headsplat-nope==1.0" in sentence
    assert sentence.count("\n") == 0 and len(sentence) < 400, sentence
    log = tmp_path / "ext" / deps.LOG_NAME
    assert info.value.log_path == str(log) and str(log) in sentence
    assert "Could not find a version that satisfies" in log.read_text()   # the full log is kept


def test_numpy_rule_and_the_sentence_for_a_blender_without_numpy(monkeypatch):
    import importlib.metadata
    import sys
    from blender_addon.pure import deps
    import numpy
    assert deps.numpy_spec() == f"numpy=={numpy.__version__}"   # never replace Blender's own numpy
    real = importlib.metadata.version

    def no_numpy(name):
        if name == "numpy":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(importlib.metadata, "version", no_numpy)
    want = "numpy>=1.26,<2" if sys.version_info < (3, 12) else "numpy>=2.2"
    assert deps.numpy_spec() == want
    sentence = deps.numpy_sentence()
    assert "has no numpy" in sentence and "apt install python3-numpy" in sentence and want in sentence
    numpy_req = next(r for r in deps.REQUIREMENTS if r.module == "numpy")
    st = deps.Status("3.13", "/x", [(numpy_req, "not installed, needed for everything")], [])
    assert st.sentence().startswith("This Blender's Python") and want in st.sentence()


def test_addon_registers_without_numpy_and_says_why_it_cannot_render(tmp_path):
    """A distribution's Blender without numpy: registration works, the engine reports the sentence."""
    import subprocess
    import sys
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import bpy; sys.modules['numpy'] = None\n"
            "import blender_addon; blender_addon.register()\n"
            "from blender_addon.pure import deps; assert not deps.check().ok\n"
            "print('REGISTERED', deps.check().sentence())")
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    r = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REGISTERED This Blender's Python" in r.stdout and "has no numpy" in r.stdout


def test_operators_refuse_clearly_when_dependencies_are_missing(bpy, scene, avatar_file, monkeypatch):
    from blender_addon.pure import deps
    torch_req = next(r for r in deps.REQUIREMENTS if r.module == "torch")
    missing = deps.Status("3.11", "/somewhere", [(torch_req, "not installed, needed for everything")], [])
    monkeypatch.setattr(deps, "status", lambda refresh=False: missing)
    before = n_objects(bpy)
    with pytest.raises(RuntimeError, match=r"needs torch>=2\.2 in Blender's Python 3\.11.*Install Dependencies"):
        bpy.ops.headsplat.import_avatar(filepath=str(avatar_file))
    assert n_objects(bpy) == before


def test_check_dependencies_operator(bpy):
    assert bpy.ops.headsplat.check_dependencies() == {"FINISHED"}
    # nothing to install here, and installing needs Blender's online access: unavailable, with a reason
    assert not bpy.ops.headsplat.install_dependencies.poll()
