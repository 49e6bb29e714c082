"""Real MLX functions end to end: trace, fuse, lay out, then every Fused region becomes a
Region, one kernel, whose interpretation matches MLX running the region's body on the CPU."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxtriton
from mlxtriton.codegen import interpret, lower
from tests.codegen.targets import built
from mlxtriton.codegen.from_graph import region_from_graph
from mlxtriton.fusion import fuse, layout
from mlxtriton.graph import dtypes
from mlxtriton.graph.evaluate import _mlx_rules, run
from tests.codegen import codegen_oracle as oracle
from tests.codegen import metal_check

R, L = 37, 300


def _x(*shape, dtype=mx.float32, seed=0):
    return (mx.random.normal(shape, key=mx.random.key(seed)) * 2).astype(dtype)


FUNCTIONS = {
    "softmax": (lambda x: mx.softmax(x, axis=-1), lambda d: [_x(R, L, dtype=d)]),
    "log_softmax": (lambda x: nn.log_softmax(x, axis=-1), lambda d: [_x(R, L, dtype=d)]),
    "layer_norm": (lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5),
                   lambda d: [_x(R, L, dtype=d), _x(L, dtype=d, seed=1), _x(L, dtype=d, seed=2)]),
    "rms_norm": (lambda x, w: mx.fast.rms_norm(x, w, 1e-5),
                 lambda d: [_x(R, L, dtype=d), _x(L, dtype=d, seed=1)]),
    "rms_norm_silu_gate": (lambda x, g, w: mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g),
                           lambda d: [_x(R, L, dtype=d), _x(R, L, dtype=d, seed=3),
                                      _x(L, dtype=d, seed=1)]),
    "residual_rms_norm": (lambda x, r, w: (x + r, mx.fast.rms_norm(x + r, w, 1e-5)),
                          lambda d: [_x(R, L, dtype=d), _x(R, L, dtype=d, seed=4),
                                     _x(L, dtype=d, seed=1)]),
    "logsumexp": (lambda x: mx.logsumexp(x, axis=-1), lambda d: [_x(R, L, dtype=d)]),
    "cross_entropy": (lambda l, t: nn.losses.cross_entropy(l, t),
                      lambda d: [_x(R, L, dtype=d),
                                 mx.random.randint(0, L, (R,), key=mx.random.key(5))]),
    "column_sum_of_transpose": (lambda x: mx.sum(x.T * 2, axis=-1), lambda d: [_x(L, R, dtype=d)]),
    "gelu_bias": (lambda x, b: nn.gelu(x + b), lambda d: [_x(R, L, dtype=d), _x(L, dtype=d)]),
    "variance": (lambda x: mx.var(x, axis=-1), lambda d: [_x(R, L, dtype=d)]),
    "argmax": (lambda x: mx.argmax(x, axis=-1), lambda d: [_x(R, L, dtype=d)]),
    # MLX records a slice's stop as written: :-44 stops at -44, ::-1 at -L - 1
    "slices": (lambda x: mx.exp(x[:, :-44]) * x[::-1, 44:] - x[:, -45::-1],
               lambda d: [_x(R, L, dtype=d)]),
    # mlx-lm's sliding-window mask (models.base.create_causal_mask with a window)
    "window_mask": (lambda i: (i[:, None] >= i[None]) & (i[:, None] < i[None] + 16),
                    lambda d: [mx.arange(64)]),
    "pick_beside_rows": (lambda x, t: (mx.take_along_axis(x, t, axis=-1), x * 2),
                         lambda d: [_x(R, L, dtype=d),
                                    mx.random.randint(0, L, (R, 1), key=mx.random.key(6))]),
}


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_fused_regions_become_one_kernel_each(name, dtype):
    fn, make_args = FUNCTIONS[name]
    args = make_args(dtype)
    graph = layout(fuse(mlxtriton.trace(fn)(*args)))
    env = dict(zip(graph.inputs, args))
    env.update(graph.constants)
    fused = 0
    for eqn in graph.eqns:
        ins = [env[v] for v in eqn.inputs]
        if eqn.primitive != "Fused":
            outs = _mlx_rules()[eqn.primitive](*ins, **eqn.params)
            outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        else:
            fused += 1
            body = eqn.params["body"]
            outs = run(body, ins, _mlx_rules())  # MLX on the CPU: the reference
            region, extra = region_from_graph(body, eqn.params["name"])
            kernel = built(region, "h200")
            got = interpret(kernel, [dtypes.to_numpy(a) for a in list(ins) + list(extra)])
            for g, w, v in zip(got, outs, eqn.outputs):
                oracle.assert_close(g, dtypes.to_numpy(w), v.dtype, scale=4.0)
            problems = metal_check.check(lower(region, "metal"))
            assert not problems, "\n".join(problems)
            lower(region, "cuda")
        for v, o in zip(eqn.outputs, outs):
            env[v] = o
    assert fused >= 1, f"{name}: nothing fused\n{graph}"
    mx.eval([env[v] for v in graph.outputs])


def test_rows_at_the_most_threads_keep_at_most_half_again_their_data():
    # 1024 threads over rows of 32768 (H200): a float32 thread holds 32 registers of x, and
    # keeping the gate's sigmoid (32 more) would take all 64 it has; bfloat16 x takes 16, so
    # its softmax keeps the exponentials for the write pass
    from tests.codegen.targets import tuned

    x, w = _x(256, 32768), _x(32768, seed=1)

    def gate_backward(x, w, g, c):
        def gate(x, w, g):
            return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w * nn.silu(g)
        return mx.vjp(gate, [x, w, g], [c])[1]

    def schedules(fn, *args):
        return [k.kernel.arg for k in mlxtriton.optimize(fn, chip="h200").trace(*args).lower("cuda").kernels]

    row = schedules(gate_backward, x, w, x, x)[0]
    assert (row.threads_per_row, row.elements_per_thread, row.kept) == (1024, 32, 0)
    (soft,) = schedules(lambda x: mx.softmax(x, axis=-1), x.astype(mx.bfloat16))
    assert (soft.threads_per_row, soft.kept) == (1024, 1)
    with tuned("sm_90", cap_kept_at_widest=False):  # the whole register file
        assert schedules(gate_backward, x, w, x, x)[0].kept == 1


def test_rows_holding_more_than_two_threadgroups_leave_take_twice_the_threads():
    # the float32 softmax backward over rows of 16384 holds x and kept exponentials (96
    # registers of arrays at 512 threads): it takes 1024; its forward, a layer norm, and the
    # bfloat16 backward (half the registers) keep 512
    x = _x(256, 16384)

    def backward(x, c):
        return mx.vjp(lambda x: mx.softmax(x, axis=-1), [x], [c])[1]

    def threads(fn, *args):
        (k,) = mlxtriton.optimize(fn, chip="h200").trace(*args).lower("cuda").kernels
        return k.threadgroup[0]

    assert threads(backward, x, x) == 1024
    assert threads(backward, x.astype(mx.bfloat16), x.astype(mx.bfloat16)) == 512
    assert threads(lambda x: mx.softmax(x, axis=-1), x) == 512
    assert threads(lambda x: mx.fast.layer_norm(x, None, None, 1e-5), x) == 512


def test_a_gru_is_generated_kernels_only():
    # nn.GRU slices its gates as x[..., :-hidden]: a negative stop, read as Python reads it
    gru = nn.GRU(16, 32)
    x = _x(2, 5, 16)
    mx.eval(gru.parameters())
    lowered = mlxtriton.optimize(gru, chip="h200").trace(x).lower("cuda")
    assert not lowered.fallbacks and len(lowered) == 9


def test_a_reversed_slice_starting_before_the_axis_is_empty():
    # x[-3::-2] of two rows: MLX records start -1 (n added already), before index 0, so the
    # slice is empty and a sum over it has nothing to launch; read as Python's -1 (the last
    # row) it was a kernel summing exp(x[1]) where MLX's sum is 0
    from mlxtriton.codegen.builder import RegionError

    x = _x(2, 7)
    graph = layout(fuse(mlxtriton.trace(lambda x: mx.sum(mx.exp(x[-3::-2]), axis=0) * x[0])(x)))
    (eqn,) = [e for e in graph.eqns if e.primitive == "Fused"]
    region, _ = region_from_graph(eqn.params["body"], eqn.params["name"])
    with pytest.raises(RegionError, match=r"domain \(0, 7\) is empty"):
        built(region, "h200")
