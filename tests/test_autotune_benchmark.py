"""benchmarks/autotune.py runs end to end without a GPU (``--dry-run``: the NumPy interpreter as
the device), so the GPU run it stands for has no error left to find."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_dry_run_times_default_and_autotuned_schedules(tmp_path):
    out = tmp_path / "autotune.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), MLXTRITON_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "autotune.py"), "--dry-run",
                    "--families", "softmax,pointwise_chain,softmax_axis_0", "--out", str(out)],
                   env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["family"], r["dtype"], r["shape"]) for r in rows] == [
        ("softmax", "float32", [64, 512]), ("pointwise_chain", "float32", [64, 512]),
        ("softmax_axis_0", "float32", [64, 512])]
    for r in rows:
        assert r["default_us"] > 0 and r["autotuned_us"] > 0 and r["copy_gbs"] > 0
        assert r["kernels"] and all(k["timed"] >= 1 for k in r["kernels"])
