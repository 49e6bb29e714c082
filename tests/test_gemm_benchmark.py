"""benchmarks/gemm.py: which peak each figure is measured against (never one the profile lacks),
the layouts compute the same product, and the summary says which layout was faster only beyond
the noise."""

import importlib.util
import pathlib

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton import hw

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "gemm.py"
_spec = importlib.util.spec_from_file_location("gemm_benchmark", _PATH)
gemm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gemm)


def test_efficiency_only_against_the_peak_that_bounds_the_math():
    assert gemm.ceiling(hw.profile("h200"), "fp32")[0] == 67_000.0
    for math in ("tf32", "fp16", "bf16"):  # tensor cores: the profile has no such peak
        peak, note = gemm.ceiling(hw.profile("h200"), math)
        assert peak is None and "tensor cores" in note
    peak, note = gemm.ceiling(hw.profile("m3"), "fp16")  # FP16 = FP32 rate on M1-M4
    assert peak == 3_500.0 and "an estimate" in note
    assert gemm.ceiling(hw.profile("m5"), "fp32")[0] is None  # no figure: none invented
    peak, note = gemm.ceiling(hw.profile("cpu"), "fp32")
    assert peak is None and "CPU profile records no peak" in note


def test_math_follows_mlx_enable_tf32(monkeypatch):
    monkeypatch.delenv("MLX_ENABLE_TF32", raising=False)
    assert gemm.math_of(hw.profile("h200"), "float32") == "tf32"  # MLX's CUDA default
    assert gemm.math_of(hw.profile("m3"), "float32") == "fp32"
    monkeypatch.setenv("MLX_ENABLE_TF32", "0")
    assert gemm.math_of(hw.profile("h200"), "float32") == "fp32"
    assert gemm.math_of(hw.profile("h200"), "bfloat16") == "bf16"


def test_unaligned_sizes_and_their_layouts():
    assert gemm.unaligned_neighbours([256, 1024, 4096], 64) == [1023, 1025, 4095, 4097]
    assert gemm.layouts_for(4096, 64, gemm.LAYOUTS) == ["nn", "nt"]
    assert gemm.layouts_for(4095, 64, gemm.LAYOUTS) == list(gemm.LAYOUTS)


@pytest.mark.parametrize("layout", gemm.LAYOUTS)
def test_every_layout_computes_a_at_b(layout):
    n = 37
    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    fn, args = gemm.make_call(layout, n, 16, a, b)
    out = fn(*args)
    assert out.shape == (n, n)
    np.testing.assert_allclose(np.array(out), np.array(a) @ np.array(b), rtol=1e-4, atol=1e-4)


def test_pipelined_timing_runs_where_there_is_no_gpu():
    a = mx.random.normal((16, 16))
    seconds, scatter, reps = gemm.time_mlx(lambda x: x @ x, (a,), pipelined=True, target_s=0.002)
    assert seconds > 0 and scatter >= 0 and reps >= 3


def _row(n, layout, time_us, spread=0.01, device="gpu"):
    return {"device": device, "dtype": "bfloat16", "math": "bf16", "n": n, "impl": "mlx", "layout": layout,
            "time_us": time_us, "spread": spread, "gflops": 2 * n**3 / time_us / 1e3,
            "efficiency": None, "vs_fp32_peak": None, "rel_err": None}


def test_summary_names_the_faster_layout_only_beyond_the_noise():
    rows = [_row(4096, "nn", 200.0), _row(4096, "nt", 205.0),
            _row(4095, "nn", 930.0), _row(4095, "nt", 1000.0), _row(4095, "pad", 200.0, spread=0.5),
            _row(256, "nn", 30.0), _row(256, "nt", 60.0)]
    summary = {s["n"]: s for s in gemm.summarize(rows, tile=64)}
    assert summary[4095]["fastest"] == "pad"
    assert summary[4095]["significant"] == {"nn": False, "nt": True, "pad": True}
    assert summary[4096]["significant"]["nt"] is False  # 2.5% apart: noise
    assert summary[4095]["nn_gflops_vs_aligned"] == pytest.approx(0.21, abs=0.01)
    assert summary[256]["launch_bound"]
    text = "\n".join(gemm.findings(list(summary.values())))
    assert "n=4095: pad 4.65x the speed of nn (faster)" in text
    assert "n=4096" not in text and "n=256:" not in text  # noise; launch-bound
    assert "1 GPU cases ran under 100 us" in text


def test_failed_cases_are_rows_not_the_end_of_the_sweep():
    rows = [_row(64, "nn", 10.0, device="cpu"),
            {"device": "cpu", "dtype": "bfloat16", "math": "bf16", "n": 64, "impl": "mlx", "layout": "nt",
             "error": "ValueError: no"}]
    assert gemm.summarize(rows, tile=64)[0]["fastest"] == "nn"
    assert "failed: ValueError: no" in gemm.format_table(rows)


def test_a_repeat_that_moved_widens_the_noise_floor():
    nn = {**_row(1024, "nn", 500.0, device="cpu"), "repeat_us": 700.0, "repeat_scatter": 0.4}
    rows = [nn, _row(1024, "nt", 650.0, device="cpu"), _row(1024, "pad", 1000.0, device="cpu")]
    (summary,) = gemm.summarize(rows, tile=64)
    assert summary["significant"] == {"nn": False, "nt": False, "pad": True}  # 1.3x is within the 1.4x repeat
