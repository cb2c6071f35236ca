"""``python -m avatar_core bench render`` on a tiny CPU configuration."""

import json
import subprocess
import sys


def test_bench_render_cli_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "avatar_core", "bench", "render", "--device", "cpu", "--lod", "0",
                           "--res", "32", "--frames", "1", "--warmup", "0", "--head", "test", "--refiner", "both",
                           "--channels", "8", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "FPS" in proc.stdout and "fwd+bwd" in proc.stdout
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [r["refiner"] for r in rows] == ["off", "on"]
    assert all(r["fps"] > 0 and r["fwd_bwd_ms"] > 0 and r["backend"] == "torch" for r in rows)


def test_bench_render_rejects_bad_arguments():
    proc = subprocess.run([sys.executable, "-m", "avatar_core", "bench", "render", "--device", "cpu", "--lod", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--lod" in proc.stderr
