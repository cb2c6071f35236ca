"""`reconstruct --method feedforward --checkpoint CKPT` end to end (untrained tiny network)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from skimage.data import astronaut
    p = tmp_path_factory.mktemp("ff") / "astronaut.png"
    Image.fromarray(astronaut()).save(p)
    return p


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "avatar_core", "reconstruct", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_feedforward_reconstruct_writes_an_avatar(tmp_path, photo):
    from avatar_core.io import load_avatar
    from avatar_core.recon.feedforward.model_file import save_model
    from avatar_core.recon.feedforward.network import FeedForwardNet, NetworkConfig
    net = FeedForwardNet(NetworkConfig.tiny(head="open"))
    ckpt = save_model(net, tmp_path / "model.safetensors", step=1)
    out = tmp_path / "ff.avatar"
    r = _cli(photo, "-o", out, "--method", "feedforward", "--checkpoint", ckpt, "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "feed-forward reconstruction" in r.stdout and "landmark median error" in r.stdout
    av = load_avatar(out)
    assert av.info["method"] == "feedforward" and av.available_lods() == [0, 1, 2]
    assert (tmp_path / "ff.preview.png").is_file()
    frame = av.animate(expression={"jawOpen": 1.0}, lod=0)
    assert np.isfinite(frame.means.numpy()).all()


def test_feedforward_needs_a_matching_checkpoint(tmp_path, photo):
    r = _cli(photo, "-o", tmp_path / "a.avatar", "--method", "feedforward")
    assert r.returncode == 1 and "needs --checkpoint" in r.stderr
    r = _cli(photo, "-o", tmp_path / "a.avatar", "--method", "feedforward", "--checkpoint", tmp_path / "none.safetensors")
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    from avatar_core.recon.feedforward.model_file import save_model
    from avatar_core.recon.feedforward.network import FeedForwardNet, NetworkConfig
    ckpt = save_model(FeedForwardNet(NetworkConfig.tiny()), tmp_path / "synthetic.safetensors", step=1)
    r = _cli(photo, "-o", tmp_path / "a.avatar", "--method", "feedforward", "--checkpoint", ckpt)
    assert r.returncode == 1 and "head model" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "a.avatar").exists()
