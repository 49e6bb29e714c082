"""The projection kernel (codegen/projection.py) in the Metal emulator against MLX's matmul and
quantized_matmul on the CPU, for every dtype, dense and 4- and 8-bit weights, several weights at
once, and every schedule knob; the CUDA rendering through nvcc, the Metal one type-checked (the
H100 runs it: tests/device/test_projection_gpu.py)."""

from __future__ import annotations

import itertools

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlxtriton.codegen.projection import render_projection
from mlxtriton.graph.projection import Projection, Result, Rope
from mlxtriton.runtime import emulator
from mlxtriton.runtime.launch import _from_host, _to_host

from tests.codegen import cuda_check, metal_check

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler for the Metal emulator")


def operands(spec: Projection, seed: int = 0):
    """x and each weight's operands (dense: w; quantized: w, scales, biases; then a bias
    vector), then each RoPE's offset (and frequencies), and the weights as MLX computes with
    them."""
    rng = np.random.default_rng(seed)
    dt = getattr(mx, spec.dtype)
    x = mx.array(rng.standard_normal((*spec.lead, spec.depth)).astype(np.float32)).astype(dt)
    weights = []
    for i, n in enumerate(spec.widths):
        w = mx.array(rng.standard_normal((n, spec.depth)).astype(np.float32) * 0.1).astype(dt)
        operands = tuple(mx.quantize(w, group_size=spec.group_size, bits=spec.bits)) if spec.bits else (w,)
        if spec.has_bias(i):
            operands += (mx.array(rng.standard_normal((n,)).astype(np.float32)).astype(dt),)
        weights.append(operands)
    for r in spec.outputs:
        if r.rope:
            offset = rng.integers(0, 3000, size=r.rope.offsets).astype(np.int32)
            half = spec.widths[r.products[0]] // r.rope.heads // 2
            weights.append((mx.array(offset),) + ((mx.array(np.exp(rng.uniform(0, 9, half)).astype(np.float32)),)
                                                  if r.rope.base is None else ()))
    return x, weights


def reference(spec: Projection, x, weights):
    """MLX on the CPU, in float32 where the product allows (quantized: MLX's own kernel); a
    gate's or RoPE's products rounded to x's dtype first, as MLX's products are."""
    with mx.stream(mx.cpu):
        f32 = x.astype(mx.float32)
        outs = []
        for i, operands in enumerate(weights[:len(spec.widths)]):
            if spec.bits:
                w, s, b = operands[:3]
                out = mx.quantized_matmul(f32, w, s.astype(mx.float32), b.astype(mx.float32),
                                          transpose=True, group_size=spec.group_size, bits=spec.bits)
            else:
                out = f32 @ operands[0].astype(mx.float32).T
            outs.append(out + operands[-1].astype(mx.float32) if spec.has_bias(i) else out)
        dt = getattr(mx, spec.dtype)
        rounded = [o.astype(dt).astype(mx.float32) for o in outs]
        extras = iter(weights[len(spec.widths):])
        results = []
        for r in spec.outputs:
            if len(r.products) == 2:
                results.append(nn.silu(rounded[r.products[0]]) * rounded[r.products[1]])
            elif r.rope:
                q, (offset, *freqs) = r.rope, next(extras)
                b, heads, length, dim = spec.shape(r)
                t = rounded[r.products[0]].reshape(b, length, heads, dim).transpose(0, 2, 1, 3)
                results.append(mx.fast.rope(t, dim, traditional=q.traditional, base=q.base, scale=q.scale,
                                            offset=offset, freqs=freqs[0] if freqs else None))
            else:
                results.append(outs[r.products[0]])
        mx.eval(results)
    return results


def emulated(spec: Projection, x, weights, **schedule):
    kernel = render_projection(spec, "metal", **schedule)
    arrays = [x, *itertools.chain.from_iterable(weights)]
    return [_from_host(o, spec.dtype) for o in emulator.run(kernel, [_to_host(a) for a in arrays])]


def assert_close(got, want, dtype, depth):
    # float32 accumulation; a half-precision output rounds once
    tol = 2e-5 * depth ** 0.5 if dtype == "float32" else 8e-3 if dtype == "bfloat16" else 2e-3
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), np.array(w), atol=tol, rtol=tol)


SPECS = [
    Projection((1,), 256, (64, 32, 32), "float32"),
    Projection((1, 1), 512, (96,), "bfloat16"),
    Projection((3,), 264, (40, 8), "float16"),  # a row of 33 vectors: the last step is partial
    Projection((2, 1), 256, (64, 32), "bfloat16", 4, 64),
    Projection((1,), 384, (48,), "float16", 4, 32),
    Projection((5,), 256, (16, 16), "bfloat16", 8, 64),
    Projection((1,), 512, (32,), "bfloat16", 4, 128),
    Projection((2,), 256, (64, 16, 16), "bfloat16", biased=(True, True, False)),  # qwen2's q/k/v
    Projection((1,), 256, (32, 32), "float16", 4, 64, biased=(False, True)),
    # SwiGLU gates in the epilogue: silu(y_g) * y_u
    Projection((1,), 256, (64, 64), "bfloat16", results=(Result((0, 1)),)),
    Projection((8,), 264, (32, 32), "float32", results=(Result((1, 0)),)),
    Projection((3,), 256, (32, 48, 32), "float16", 4, 64, biased=(True, False, True),
               results=(Result((1,)), Result((0, 2)))),
    Projection((2,), 256, (16, 16), "bfloat16", 8, 32, results=(Result((0, 1)),)),
    # RoPE in the epilogue: llama's q / k / v (the frequencies an input), traditional lanes, a
    # base, B sequences of several positions with an offset each, biases, quantized weights
    Projection((1, 1), 256, (128, 64, 64), "bfloat16",
               results=(Result((2,)), Result((0,), Rope(4, 1, False, 1.0, None, ())),
                        Result((1,), Rope(2, 1, False, 1.0, None, ())))),
    Projection((2, 3), 256, (64, 32), "float32",
               results=(Result((0,), Rope(2, 3, True, 0.5, 10000.0, (2,))), Result((1,)))),
    Projection((2, 1), 256, (96, 32), "float16", biased=(True, True),
               results=(Result((0,), Rope(3, 1, False, 1.0, 1000000.0, (1,))),
                        Result((1,), Rope(1, 1, False, 1.0, 1000000.0, (1,))))),
    Projection((1,), 256, (64, 64), "bfloat16", 4, 64,
               results=(Result((0,), Rope(2, 1, False, 1.0, None, (1,))), Result((1,)))),
]


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_the_kernel_matches_mlx(spec):
    x, weights = operands(spec)
    assert_close(emulated(spec, x, weights), reference(spec, x, weights), spec.dtype, spec.depth)


@pytest.mark.parametrize("columns_per_simd_group, simd_groups, unroll", [(1, 1, 1), (4, 2, 3), (8, 4, 2)])
@pytest.mark.parametrize("spec", [SPECS[0], SPECS[3], SPECS[10], SPECS[11], SPECS[13], SPECS[14]], ids=str)
def test_every_schedule_matches_mlx(spec, columns_per_simd_group, simd_groups, unroll):
    x, weights = operands(spec, seed=1)
    got = emulated(spec, x, weights, columns_per_simd_group=columns_per_simd_group,
                   simd_groups=simd_groups, unroll=unroll)
    assert_close(got, reference(spec, x, weights), spec.dtype, spec.depth)


def test_columns_a_simd_group_must_divide_the_widths():
    with pytest.raises(ValueError, match="do not divide"):
        render_projection(Projection((1,), 256, (64, 30), "float32"), "metal", columns_per_simd_group=4)


@pytest.mark.skipif(cuda_check.nvcc() is None, reason="nvcc is not installed")
def test_the_cuda_rendering_compiles():
    kernels = [render_projection(s, "cuda", r, 4, u) for s in SPECS for r, u in ((1, 1), (2, 2), (8, 3))]
    errors = cuda_check.compile_errors(kernels)
    assert not errors, errors


def test_the_metal_rendering_type_checks():
    for spec in SPECS:
        kernel = render_projection(spec, "metal")
        assert metal_check.check(kernel) == [], kernel.as_text()


def test_the_chips_schedule_halves_its_columns_to_divide_every_width():
    from mlxtriton import hw
    from mlxtriton.codegen.schedule import kernel_target, projection_schedule

    t, target = hw.tuning.SM_90, kernel_target("h100")
    assert projection_schedule(1, (64,), target)[0] == t.projection_columns_one_row
    assert projection_schedule(8, (64, 32), target)[0] == t.projection_columns
    assert projection_schedule(8, (64, 33), target)[0] == 1


def test_every_candidate_schedule_matches_mlx():
    # the tuner's whole space for one kernel with a plain output, a gate and a RoPE
    from mlxtriton.codegen.schedule import kernel_target, projection_candidates

    spec = Projection((2,), 128, (32, 64, 64, 64), "bfloat16",
                      results=(Result((0,)), Result((1, 2)), Result((3,), Rope(2, 1, False, 1.0, None, (2,)))))
    x, weights = operands(spec, seed=2)
    want = reference(spec, x, weights)
    for schedule in projection_candidates(spec.rows, spec.columns, kernel_target("h100")):
        got = emulated(spec, x, weights, **dict(zip(("columns_per_simd_group", "simd_groups", "unroll"), schedule)))
        assert_close(got, want, spec.dtype, spec.depth)


@st.composite
def _specs(draw):
    """A projection kernel's spec: products of one x (dense, or 4- / 8-bit for half x), bias
    vectors or not, and outputs that may be a SwiGLU gate of two products of one width or a
    RoPE of one (heads of an even head_dim, any offsets' shape, frequencies or a base)."""
    dtype = draw(st.sampled_from(["float32", "bfloat16", "float16"]))
    bits = 0 if dtype == "float32" else draw(st.sampled_from([0, 0, 4, 8]))
    group = draw(st.sampled_from([32, 64])) if bits else 0
    batch, length = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    unit = max(group, 16)
    depth = unit * draw(st.integers(1, 4))
    heads, dim = draw(st.integers(1, 3)), draw(st.sampled_from([8, 16]))
    widths = [heads * dim] + [draw(st.sampled_from([8, 16, 24]))] * draw(st.integers(0, 2))
    biased = tuple(draw(st.booleans()) for _ in widths) if not bits and draw(st.booleans()) else ()
    results, used = [], set()
    if draw(st.booleans()):
        results.append(Result((0,), Rope(heads, length, draw(st.booleans()), draw(st.sampled_from([1.0, 0.5])),
                                         draw(st.sampled_from([None, 10000.0])),
                                         draw(st.sampled_from([(), (1,), (batch,)])))))
        used.add(0)
    pair = [i for i in range(1, len(widths)) if i not in used]
    if len(pair) == 2 and widths[pair[0]] == widths[pair[1]] and draw(st.booleans()):
        results.append(Result(tuple(pair)))
        used |= set(pair)
    results += [Result((i,)) for i in range(len(widths)) if i not in used]
    return Projection((batch, length), depth, tuple(widths), dtype, bits, group, biased,
                      tuple(draw(st.permutations(results))))


@settings(max_examples=15, deadline=None)
@given(spec=_specs(), pick=st.integers(0, 1000), seed=st.integers(0, 1000))
def test_any_spec_under_any_candidate_schedule_matches_mlx(spec, pick, seed):
    from mlxtriton.codegen.schedule import kernel_target, projection_candidates

    space = projection_candidates(spec.rows, spec.columns, kernel_target("h100"))
    columns, groups, unroll = space[pick % len(space)]
    x, weights = operands(spec, seed)
    got = emulated(spec, x, weights, columns_per_simd_group=columns, simd_groups=groups, unroll=unroll)
    assert_close(got, reference(spec, x, weights), spec.dtype, spec.depth)
