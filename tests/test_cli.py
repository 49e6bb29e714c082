"""The command line's `explain` and `bench` commands, called through ``main(argv)`` (``chips`` and
``demo`` are tested in tests/hw/test_cli.py and tests/test_demo.py)."""

import json
import textwrap

import mlx.core as mx
import pytest

import mlxtriton.__main__ as cli

USER_MODULE = textwrap.dedent("""
    import mlx.core as mx

    def gated_softmax(x, w):
        return mx.softmax(x * w, axis=-1) * mx.sigmoid(x)

    def two_kernels(x):
        return mx.sum(mx.softmax(x, axis=-1), axis=0)
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermodel.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "usermodel", raising=False)
    return tmp_path / "usermodel.py"


@pytest.mark.parametrize("target, marker", [("metal", "thread_position_in_threadgroup"), ("cuda", "threadIdx.x")])
def test_explain_prints_graph_decisions_and_kernel_source(user_module, capsys, target, marker):
    code = cli.main(["explain", "usermodel:gated_softmax", "--shape", "x=4,128",
                     "--shape", "w=128:float32", "--target", target, "--chip", "m3"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gated_softmax(float32[4, 128], float32[128])" in out  # bound to the parameters
    assert "== traced graph" in out and "Softmax" in out
    assert "== optimized graph: 1 equations" in out and "Fused[kind='row'" in out
    assert "-- fuse:" in out and "-- cache:" in out  # the passes' decisions
    assert f"1 {target} kernel(s) for the M3" in out
    assert marker in out  # the generated body, in the dialect asked for


def test_explain_takes_a_file_path_positional_shapes_and_kernel_ir(user_module, capsys):
    code = cli.main(["explain", f"{user_module}:gated_softmax", "--shape", "2,64:float16",
                     "--shape", "64:float16", "--kernel-ir", "--no-source"])
    out = capsys.readouterr().out
    assert code == 0
    assert "-- kernel IR of mlxt_row" in out and "KERNEL" in out
    assert "--- source ---" not in out


def test_explain_instantiates_a_module_class(capsys):
    code = cli.main(["explain", "mlxtriton.examples:MLP", "--shape", "2,8,64", "--no-source",
                     "--target", "cuda", "--chip", "h200"])
    out = capsys.readouterr().out
    assert code == 0
    assert "AddMM" in out and "not fused:" in out and "2 cuda kernel(s) for the H200" in out
    # on the H200 the generated LayerNorm row kernel beats mx.fast.layer_norm: left for fusion
    assert "recognised layer_norm" in out


def test_explain_on_the_cpu_names_the_chip_kernels_are_shaped_for(user_module, capsys):
    if mx.is_available(mx.gpu):
        pytest.skip("the note is for machines without a GPU")
    assert cli.main(["explain", "usermodel:gated_softmax", "--shape", "4,32", "--shape", "32",
                     "--no-source"]) == 0
    assert "kernels are shaped for the M3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["explain", "usermodel"], "expected MODULE:FUNCTION"),
    (["explain", "usermodel:nothing", "--shape", "4"], "has no attribute 'nothing'"),
    (["explain", "no_such_module_here:f"], "No module named"),
    (["explain", "usermodel:gated_softmax", "--shape", "x=4,8:float99"], "unknown dtype 'float99'"),
    (["explain", "usermodel:gated_softmax", "--shape", "x=4,a"], "dimensions are integers"),
    (["explain", "usermodel:gated_softmax", "--shape", "x=4,8", "--shape", "y=8"], "do not fit"),
    (["explain", "usermodel:gated_softmax", "--shape", "4", "--shape", "4", "--chip", "m99"], "m99"),
])
def test_explain_usage_errors_exit_2_with_a_message(user_module, capsys, argv, message):
    assert cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_explain_kernel_reports_why_a_function_is_not_one_kernel(user_module, capsys):
    code = cli.main(["explain", "usermodel:two_kernels", "--shape", "8,32", "--passes", "kernel"])
    assert code == 1
    assert "SingleKernelError: cannot be one kernel" in capsys.readouterr().err


def test_bench_gemm_writes_json_and_a_table(tmp_path, capfd):
    code = cli.main(["bench", "gemm", "--out-dir", str(tmp_path), "--devices", "cpu", "--sizes", "32",
                     "--unaligned", "33", "--dtypes", "float32,bfloat16", "--tile", "32"])
    out = capfd.readouterr().out
    assert code == 0
    result = json.loads((tmp_path / "gemm.json").read_text())
    layouts = {(r["impl"], r["dtype"], r["n"], r["layout"]) for r in result["rows"]}
    assert {("mlx", "float32", 33, "pad"), ("mlx", "bfloat16", 32, "nt"), ("numpy", "float32", 32, "nn")} <= layouts
    assert all(r["efficiency"] is None for r in result["rows"])  # the CPU profile has no peak
    assert result["method"] and result["mlx_version"] == mx.__version__ and result["date"]
    assert "GFLOPS" in out and "the CPU profile records no peak" in out
    assert "benchmark" in out and "gemm       ran" in out  # the suite's table


def test_bench_suite_skips_gpu_benchmarks_on_the_cpu(tmp_path, capfd):
    if mx.is_available(mx.gpu):
        pytest.skip("runs the GPU row kernels where a GPU exists")
    assert cli.main(["bench", "rows", "--out-dir", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert "skipped: needs a GPU" in out and "rows       skipped" in out


def test_bench_rejects_an_unknown_benchmark(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "nonsense"])
    assert e.value.code == 2
