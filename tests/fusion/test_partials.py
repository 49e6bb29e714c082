"""Column sums over a row kernel's rows move into it as partial sums per block of rows
(`fusion.partials`): a norm's weight and bias gradients. The rewritten graph computes what the
traced one does (the JAX oracle), its bodies are one index space each, the row kernel
walks blocks of rows, and nothing moves where it saves nothing."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.codegen.lowering import kernel_target, lower_fused
from mlxtriton.fusion import fuse_with_report, layout
from mlxtriton.fusion.index_space import RegionError, analyze
from mlxtriton.fusion.partials import block_rows
from mlxtriton.graph import evaluate, verify
from tests.fusion.test_properties import check_bodies
from tests.test_grad import FAMILIES, _arguments, assert_close, mlx_vjp, oracle_vjp, route


def _vjp_graph(fn, args):
    out = fn(*args)
    cot = mx.random.normal(out.shape, key=mx.random.key(9)).astype(out.dtype)

    def backward(*primals_and_cot):
        *primals, c = primals_and_cot
        return mx.vjp(fn, primals, [c])[1]

    return mlxtriton.trace(backward)(*args, cot), (*args, cot)


def _np(a):
    return np.asarray(a.astype(mx.float32), dtype=np.float64)


def _close(want, got, tol):
    for a, b in zip(want, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(_np(b), _np(a), rtol=tol, atol=tol * max(1.0, float(_np(a).max())))


def test_block_rows():
    # the fewest rows per block leaving at most 4 threadgroups per core, and one per core at least
    assert block_rows(32768, 132, 4) == 64  # 512 threadgroups on an H200
    assert block_rows(4096, 132, 4) == 8
    assert block_rows(1024, 132, 4) == 2
    assert block_rows(256, 132, 4) == 1  # 128 blocks of 2 would leave cores idle
    assert block_rows(1031, 132, 4) == 1  # prime
    assert block_rows(4096, 10, 4) == 128  # an M3: 32 threadgroups


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
@pytest.mark.parametrize("shape", [(512, 64), (4, 128, 64)], ids=["2d", "3d"])
@pytest.mark.parametrize("family", ["rms_norm", "layer_norm", "rms_norm_silu_gate"])
def test_weight_gradients_move_into_the_row_kernel(family, shape, dtype):
    fn, spec = FAMILIES[family]
    args = list(_arguments(spec, 512, 64, dtype))
    args = [a.reshape(shape) if a.ndim == 2 else a for a in args]
    g, call = _vjp_graph(fn, args)
    fused, report = fuse_with_report(g, "m3")  # 10 cores: 40 threadgroups, 512 rows: blocks of 16
    moved = {"rms_norm": 1, "layer_norm": 2, "rms_norm_silu_gate": 1}[family]
    assert len(report.partials) == moved, str(report)
    for d in report.partials:
        assert (d.rows, d.blocks, d.cores) == (512, 32, 10)
        assert "32 threadgroups of 16 rows" in d.as_text()
    verify(fused)
    check_bodies(fused)
    rows = [e for e in fused.eqns if e.primitive == "Fused" and e.params["kind"] == "row"]
    (row,) = rows
    partials = [v for v in row.outputs if v.shape == (32, 1, 64)]
    assert len(partials) == moved and all(v.dtype == "float32" for v in partials)
    # the row kernel writes the full-size gradients (x's, the gate's), no summand for columns
    assert sum(v.size == 512 * 64 for v in row.outputs) == sum(a.size == 512 * 64 for a in args)
    tol = 1e-5 if dtype == mx.float32 else 2e-2
    want = evaluate(g, *call, backend="jax")
    for graph in (fused, layout(fused)):
        _close([mx.array(np.asarray(w)) for w in want], evaluate(graph, *call), tol)
    # the kernel: one threadgroup per block, walking its 16 rows
    kernel, _ = lower_fused(row, kernel_target("m3", dialect="metal"))
    s = kernel.kernel.arg
    assert (s.rows_per_block, s.rows_per_group, s.grid // s.threadgroup_size) == (16, 1, 32)
    assert "column sums kept per block" in s.describe()


def _rms(x, w):
    return mx.fast.rms_norm(x, w, 1e-5)


def test_nothing_moves_where_it_saves_nothing():
    x, w = _arguments("xw", 512, 64, mx.float32)
    g, _ = _vjp_graph(_rms, (x, w))
    assert not fuse_with_report(g, None)[1].partials  # no chip: no core count
    assert not fuse_with_report(g, "m3", split=False)[1].partials  # @kernel: one kernel each
    assert fuse_with_report(g, "h200")[1].partials[0].blocks == 256
    g, _ = _vjp_graph(_rms, _arguments("xw", 256, 64, mx.float32))
    assert not fuse_with_report(g, "h200")[1].partials  # 128 blocks would leave SMs idle

    def returns_the_summand(x, w, c):
        y = x * w
        return y * c, mx.sum(y * c, axis=0)  # y * c is written anyway

    x, w = _arguments("xw", 512, 64, mx.float32)
    g = mlxtriton.trace(returns_the_summand)(x, w, x)
    assert not fuse_with_report(g, "m3")[1].partials


def test_a_block_sum_outside_a_row_region_is_refused():
    def block_sum(x):
        return mx.sum(x.reshape(8, 4, 16), axis=1)

    g = mlxtriton.trace(block_sum)(mx.ones((32, 16)))
    assert analyze(g.eqns, block_sums=True).kind == "column"  # no row reduction: left alone

    def in_a_column_region(x):
        return x / mx.sum(x, axis=0, keepdims=True), mx.sum((x * 2).reshape(8, 4, 16), axis=1)

    # outside a row region the sum is an ordinary reduction (a split column reduction's first
    # level reads so), of a reshape no kernel can compute
    g = mlxtriton.trace(in_a_column_region)(mx.ones((32, 16)))
    with pytest.raises(RegionError, match="reorders its elements"):
        analyze(g.eqns, block_sums=True)

    def over_part_of_the_rows(x):  # rows are [4, 8]; blocks cut only the first axis
        return x / mx.sum(x, axis=-1, keepdims=True), mx.sum((x * 2).reshape(2, 2, 8, 16), axis=1)

    g = mlxtriton.trace(over_part_of_the_rows)(mx.ones((4, 8, 16)))
    with pytest.raises(RegionError, match="not the region's rows"):
        analyze(g.eqns, block_sums=True)


@pytest.mark.parametrize("family", ["rms_norm", "layer_norm"])
def test_gradients_through_generated_kernels(family, monkeypatch):
    # mx.vjp of an optimised norm: its backward region optimised into kernels (interpreted),
    # the weight gradients from the row kernel's block sums; against jax.vjp of the traced graph
    fn, spec = FAMILIES[family]
    args = _arguments(spec, 160, 48, mx.float32)  # an M3: 40 blocks of 4 rows
    cot = [mx.random.normal((160, 48), key=mx.random.key(3))]
    want_outs, want_grads = oracle_vjp(fn, args, cot)
    with route("fused_backward"):
        f = mlxtriton.optimize(fn, chip="m3")
        outs, grads = mlx_vjp(f, args, cot)
    assert_close(outs, want_outs, mx.float32)
    assert_close(grads, want_grads, mx.float32)


def test_sums_whose_registers_do_not_fit_stay_column_kernels():
    # an M3 row takes at most 1024 threads, 16 registers of block sums each: 16384 elements
    def one_sum(cols):
        g, _ = _vjp_graph(_rms, _arguments("xw", 40, cols, mx.float32))
        return len(fuse_with_report(g, "m3")[1].partials)

    assert one_sum(16384) == 1 and one_sum(32768) == 0
    fn, spec = FAMILIES["layer_norm"]
    g, _ = _vjp_graph(fn, _arguments(spec, 40, 16384, mx.float32))
    assert len(fuse_with_report(g, "m3")[1].partials) == 1  # the weight's; the bias's stays


def _softmax_times_column_sum(x):
    return mx.softmax(x, axis=-1) * mx.sum(x, axis=0, keepdims=True)


def test_a_row_region_reading_its_column_sum_keeps_the_sum_apart():
    # The row kernel reads the column sum: its partials would wait for themselves (a cycle).
    x = mx.random.normal((64, 128), key=mx.random.key(5))
    g = mlxtriton.trace(_softmax_times_column_sum)(x)
    fused, report = fuse_with_report(g, "m3")
    verify(fused)
    assert not report.partials and [r.kind for r in report.regions].count("column") == 1
    _close([_softmax_times_column_sum(x)], [evaluate(fused, x)], 1e-6)
    # through the API, every path that fuses: a call, the optimised graph, the lowered kernels
    f = mlxtriton.optimize(_softmax_times_column_sum, chip="m3")
    _close([_softmax_times_column_sum(x)], [f(x)], 1e-5)
    assert verify(f.graph(x)).primitive_counts() == {"Fused": 2}
    assert f.trace(x).lower("metal").as_text().startswith("2 metal kernel(s)")


def test_the_cpu_takes_no_launch_decisions():
    # MLX's CPU backend runs no generated kernels: no threadgroups to fill or to give blocks of
    # rows, so neither reductions split nor column sums move (hw.derive would refuse the CPU).
    x = mx.random.normal((512, 64), key=mx.random.key(6))
    for g in (mlxtriton.trace(_softmax_times_column_sum)(x), _vjp_graph(_rms, _arguments("xw", 512, 64, mx.float32))[0],
              mlxtriton.trace(lambda x: mx.sum(x * x))(mx.ones((1 << 20,)))):
        fused, report = fuse_with_report(g, "cpu")
        verify(fused)
        assert not report.splits and not report.partials


@pytest.mark.skipif(mx.is_available(mx.gpu), reason="chip='auto' finds the GPU here, not the CPU")
def test_auto_on_a_cpu_only_machine():
    x = mx.random.normal((64, 128), key=mx.random.key(7))
    f = mlxtriton.optimize(_softmax_times_column_sum, chip="auto")
    _close([_softmax_times_column_sum(x)], [f(x)], 1e-5)
    assert "fuse" in str(f.explain(x))
