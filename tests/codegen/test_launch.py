"""Real launches (device-marked): every kernel family through ``mx.fast.cuda_kernel`` /
``mx.fast.metal_kernel`` on the backend present, against the NumPy interpreter of the same
kernel IR. This is what checks thread mapping, guards, shuffles and barriers, which the
interpreter does not model. Run on the H200 with ``pytest -m cuda tests/codegen/test_launch.py``.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton.codegen.schedule import default
from tests.codegen.targets import built, target as target_of
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import LoweredKernel, render
from mlxtriton.codegen.builder import build
from mlxtriton.graph import dtypes
from tests.codegen import codegen_oracle as oracle

# Row shapes reaching every schedule: one-element rows, several rows per SIMD-group with a
# partial last threadgroup, one SIMD-group per row, a non-power-of-two count of SIMD-groups,
# registers at the budget, rows staged in threadgroup memory (32768 float32, 65536 halves) and
# streamed rows (online softmax).
ROW_SHAPES = [(37, 1), (37, 24), (37, 500), (9, 3000), (16, 16384), (3, 24576), (5, 32768), (4, 65536)]


def _cases():
    for family, make in sorted(oracle.FAMILIES.items()):
        for dtype in ("float32", "float16", "bfloat16"):
            if family == "pointwise":
                yield f"{family}-{dtype}", make(shape=(3, 5, 64), dtype=dtype)
                yield f"{family}-odd-{dtype}", make(shape=(3, 5, 7), dtype=dtype)
                continue
            for R, L in ROW_SHAPES:
                shape = (L, R) if family == "colsum" else (R, L)
                yield f"{family}-{dtype}-{R}x{L}", make(shape=shape, dtype=dtype)
    b = RegionBuilder("argmax")
    x = b.input((37, 1000), "float32", "x")
    yield "argmax-min-prod", b.build([b.op("ArgReduce", x, kind="argmax", axis=1),
                                      b.op("Reduce", x, kind="min", axes=(1,))])
    for L, R in ((3000, 37), (40, 9)):  # interleaved column lanes with two-part accumulators
        b = RegionBuilder("colargmax")
        x = b.input((L, R), "float32", "x")
        yield f"column-argmin-max-sum-{L}x{R}", b.build([
            b.op("ArgReduce", x, kind="argmin", axis=0), b.op("Reduce", x, kind="max", axes=(0,)),
            b.op("Reduce", b.op("Exp", x), kind="sum", axes=(0,))])
    # a variance's centred sum of squares over columns: one pass with the mean where streamed
    for shape, dtype in (((3000, 37), "float32"), ((40, 9), "bfloat16"), ((8, 16, 64), "float16")):
        yield f"column-moments-{dtype}-{'x'.join(map(str, shape))}", oracle.channel_moments(shape, dtype)
    b = RegionBuilder("anyall")
    m = b.input((37, 70), "bool", "m")
    yield "bool", b.build([b.op("Reduce", m, kind="and", axes=(1,)),
                           b.op("Reduce", m, kind="or", axes=(1,))])


CASES = list(_cases())


def launch(kernel: LoweredKernel, inputs: list[np.ndarray]) -> list[np.ndarray]:
    make = mx.fast.cuda_kernel if kernel.target == "cuda" else mx.fast.metal_kernel
    fn = make(**kernel.kernel_kwargs())
    call = kernel.call_kwargs()
    call["output_dtypes"] = [dtypes.to_mx(d) for d in call["output_dtypes"]]
    arrays = [mx.array(np.asarray(a, np.float32)).astype(dtypes.to_mx(d))
              if d == "bfloat16" else mx.array(a)
              for a, d in zip(inputs, kernel.input_dtypes)]
    outs = fn(inputs=arrays, **call)
    mx.eval(outs)
    return [dtypes.to_numpy(o) for o in outs]


def _check(target: str, name: str, region) -> None:
    kernel = render(built(region, "h200" if target == "cuda" else "m3"), target)
    inputs = oracle.random_inputs(region, seed=len(name))
    want = interpret(kernel.kernel, inputs)
    got = launch(kernel, inputs)
    for g, w, d in zip(got, want, kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)


@pytest.mark.cuda
@pytest.mark.parametrize("name,region", CASES, ids=[n for n, _ in CASES])
def test_cuda_launch_matches_interpreter(name, region):
    _check("cuda", name, region)


@pytest.mark.metal
@pytest.mark.parametrize("name,region", CASES, ids=[n for n, _ in CASES])
def test_metal_launch_matches_interpreter(name, region):
    _check("metal", name, region)


def _special_rows(shape) -> np.ndarray:
    """Row 0: one +inf; row 1: all -inf; row 2: a NaN; row 3: -inf everywhere but the end (the
    running max stays -inf for most of the row, then the sum must not be poisoned)."""
    R, L = shape
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32) * 3
    x[0, L // 3] = np.inf
    x[1, :] = -np.inf
    x[2, L // 2] = np.nan
    x[3, : L - 5] = -np.inf
    return x


@pytest.mark.cuda
@pytest.mark.parametrize("family", ["softmax", "logsumexp", "crossentropy", "crossentropymlx"])
@pytest.mark.parametrize("L", [500, 65536], ids=["resident", "streamed"])
def test_cuda_online_rows_keep_special_values(family, L):
    # The online max-and-sum rescales once per vector on hardware; the interpreter follows the
    # kernel IR's semantics (MLX's): the two agree on infinities and NaN too.
    region = oracle.FAMILIES[family](shape=(4, L), dtype="float32")
    kernel = render(built(region, "h200"), "cuda")
    inputs = oracle.random_inputs(region, seed=3)
    inputs[0] = _special_rows((4, L))
    want = interpret(kernel.kernel, inputs)
    got = launch(kernel, inputs)
    for g, w, d in zip(got, want, kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)
        assert np.array_equal(np.isnan(np.asarray(g, np.float64)), np.isnan(np.asarray(w, np.float64)))


@pytest.mark.cuda
def test_cuda_declared_launch_bound_reaches_nvrtc():
    """MLX's wrapper writes no __launch_bounds__; our header redefines __global__ with it. A
    1024-thread softmax forced to hold 64 float32 per thread needs more than the 64 registers
    a thread of a full threadgroup gets: without the bound reaching NVRTC its launch fails
    ("too many resources requested for launch"); with it NVRTC spills and the kernel runs."""
    import dataclasses

    region = oracle.softmax(shape=(4, 65536))
    held = dataclasses.replace(default(region, target_of("h200")), threads_per_row=1024,
                               registers=("x",), staged=(), launch_bound=1024)
    kernel = render(build(region, held), "cuda")
    s = kernel.kernel.arg
    assert (s.threads_per_row, s.on_chip, s.launch_bound) == (1024, "registers", 1024)
    inputs = oracle.random_inputs(region, seed=5)
    for g, w, d in zip(launch(kernel, inputs), interpret(kernel.kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(g, w, d)


@pytest.mark.cuda
@pytest.mark.parametrize("case", ["gated-16x16384", "gated-bf16-8x16384", "rmsnormgrad-forced-16x4096"])
def test_cuda_block_sums_in_threadgroup_memory(case):
    """Block column sums held in threadgroup memory (the rule picks it for a 1024-thread kernel
    that keeps computed values; asked for here for one that does not) add up as in registers."""
    import dataclasses

    if case == "gated-16x16384":
        region = oracle.gated_block_sum(shape=(16, 16384))
    elif case == "gated-bf16-8x16384":
        region = oracle.gated_block_sum(shape=(8, 16384), dtype="bfloat16")
    else:
        region = oracle.FAMILIES["rmsnormgrad"](shape=(16, 4096), dtype="bfloat16")
    chosen = default(region, target_of("h200"))
    if case.endswith("forced-16x4096"):
        chosen = dataclasses.replace(chosen, block_sums_shared=True)
    kernel = render(build(region, chosen), "cuda")
    assert kernel.kernel.arg.block_sums_shared
    inputs = oracle.random_inputs(region, seed=11)
    for g, w, d in zip(launch(kernel, inputs), interpret(kernel.kernel, inputs), kernel.output_dtypes):
        oracle.assert_close(g, w, d, scale=4.0)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_max_and_min_propagate_nan_from_either_side(dtype):
    # From sm_80 a float max / min is one PTX max.NaN.f32 / min.NaN.f32 (codegen/dialects.py):
    # a NaN in either operand, elementwise or anywhere in a row, gives NaN as MLX's does.
    b = RegionBuilder("nanminmax")
    x, y = b.input((6, 300), dtype, "x"), b.input((6, 300), dtype, "y")
    region = b.build([b.op("Maximum", x, y), b.op("Minimum", x, y),
                      b.op("Reduce", x, kind="max", axes=(1,)), b.op("Reduce", y, kind="min", axes=(1,))])
    kernel = render(built(region, "h200"), "cuda")
    assert "max.NaN.f32" in kernel.header
    inputs = oracle.random_inputs(region, seed=11)
    inputs[0][1, 7] = inputs[0][4, 299] = np.nan
    inputs[1][2, 0] = inputs[1][4, 150] = np.nan
    got, want = launch(kernel, inputs), interpret(kernel.kernel, inputs)
    for g, w, d in zip(got, want, kernel.output_dtypes):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        assert np.isnan(w).any() and np.array_equal(np.isnan(g), np.isnan(w))
        assert np.array_equal(g[~np.isnan(g)], w[~np.isnan(w)])
