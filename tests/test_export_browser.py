"""The exported .glb in a browser: three.js' own KHR_gaussian_splatting loader
(GLTFLoader + GLTFGaussianSplatLoaderExtension, drawn by GaussianSplat through WebGPURenderer
on its WebGL2 fallback) in headless Chromium (software GL, no GPU) draws the face.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and three.js
(``npm ci --prefix tests/js``); skipped with the reason otherwise. The screenshot is kept as
``out/artefacts/export_three_glb.png`` (``HEADSPLAT_ARTEFACTS`` overrides the folder), and
``HEADSPLAT_BROWSER_AVATAR=path.avatar`` draws that avatar instead of the synthetic test head.
"""

import functools
import http.server
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--use-angle=swiftshader",
                  "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-extensions",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars", "--mute-audio", "--window-size=512,512",
                  "--virtual-time-budget=30000"]


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no Chromium: `apt-get install -y chromium` (Debian) for the browser check")


class _Handler(http.server.SimpleHTTPRequestHandler):
    model_dir: Path = None

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        if path.startswith("/model/"):
            return str(self.model_dir / Path(path).name)
        return super().translate_path(path)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path):
    handler = type("Handler", (_Handler,), {"model_dir": tmp_path})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(JS)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _draw(chromium, url, shot):
    """(the page's status line, the screenshot as [H, W, 3] int array)."""
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    status = re.search(r'<pre id="status">([^<]*)', dom.stdout)
    assert status is not None, dom.stderr[-2000:]
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.is_file()
    from PIL import Image
    return status.group(1), np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)


def test_three_js_draws_the_exported_glb_and_spz(tmp_path, server, small_avatar):
    """GLB through three.js' KHR_gaussian_splatting loader draws the face; the SPZ of the same
    frame through three.js' SPZLoader (an independent SPZ reader) draws the same picture."""
    chromium = _chromium()
    loaders = JS / "node_modules" / "three" / "examples" / "jsm" / "loaders"
    if not (loaders / "GLTFGaussianSplatLoaderExtension.js").is_file():
        pytest.skip("three.js (with GLTFGaussianSplatLoaderExtension) is not installed: run `npm ci --prefix tests/js`")
    from avatar_core.io.export import write_frame
    avatar = small_avatar
    if os.environ.get("HEADSPLAT_BROWSER_AVATAR"):
        from avatar_core.io import load_avatar
        avatar = load_avatar(os.environ["HEADSPLAT_BROWSER_AVATAR"])
    with torch.no_grad():
        frame = avatar.animate(lod=avatar.available_lods()[-1])
    write_frame(tmp_path / "face.glb", frame, "glb")
    write_frame(tmp_path / "face.spz", frame, "spz")

    status, rgb = _draw(chromium, f"{server}/view_splats.html?glb=/model/face.glb&webgl=1", tmp_path / "glb.png")
    assert status.startswith("ok "), status
    assert "splat_object=GaussianSplat" in status and f"count={frame.num} " in status
    artefacts = Path(os.environ.get("HEADSPLAT_ARTEFACTS", ROOT / "out" / "artefacts"))
    artefacts.mkdir(parents=True, exist_ok=True)
    shutil.copy(tmp_path / "glb.png", artefacts / "export_three_glb.png")
    drawn = rgb.max(-1) > 24                                               # the page's background is black
    assert drawn.mean() > 0.03, f"only {100 * drawn.mean():.1f}% of the image is drawn"
    ys, xs = np.nonzero(drawn)
    h, w = drawn.shape
    assert abs(xs.mean() / w - 0.5) < 0.2 and abs(ys.mean() / h - 0.5) < 0.25   # framed, not off to a side
    assert rgb[drawn].std(0).mean() > 5                                    # shaded colours, not one flat blob

    status, rgb_spz = _draw(chromium, f"{server}/view_splats.html?spz=/model/face.spz&webgl=1", tmp_path / "spz.png")
    assert status.startswith("ok ") and f"count={frame.num} " in status, status
    shutil.copy(tmp_path / "spz.png", artefacts / "export_three_spz.png")
    assert np.abs(rgb_spz - rgb).mean() < 3.0                               # 8-bit SPZ vs float glTF
