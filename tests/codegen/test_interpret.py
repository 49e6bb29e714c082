"""The NumPy interpreter of kernel IR against the JAX oracle on the unfused region, and against
MLX's own CPU ops for per-op semantics."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.codegen import codegen_oracle as oracle
from mlxtriton.codegen.interpret import interpret
from mlxtriton.codegen.kernel_ir import kernel_params
from mlxtriton.codegen.region import Input, Region, RegionBuilder, op

from tests.codegen.targets import TARGETS, built

# The chips: the two targets, and a tiny one whose kernels stream their rows (tests/codegen/targets.py)
CHIPS = sorted(TARGETS)
FLOATS = ("float32", "float16", "bfloat16")


def run_and_compare(region: Region, chip: str, seed: int = 0, scale: float = 1.0):
    inputs = oracle.random_inputs(region, seed)
    kernel = built(region, chip)
    got = interpret(kernel, inputs)
    want = oracle.evaluate(region, inputs)
    outputs = [p for p in kernel_params(kernel) if p.role == "output"]
    for g, w, p in zip(got, want, outputs):
        oracle.assert_close(g, w, p.dtype, scale)
    return kernel


@pytest.mark.parametrize("chip", CHIPS)
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("family", sorted(oracle.FAMILIES))
def test_family_matches_oracle(family, dtype, chip):
    shape = (24, 4, 5) if family == "pointwise" else ((300, 7) if family == "colsum" else (7, 300))
    run_and_compare(oracle.FAMILIES[family](shape=shape, dtype=dtype), chip)


# Row lengths: one element, below/at/above a SIMD width, not a multiple of any threadgroup,
# and past the tiny chip's on-chip budget (256 elements) so rows stream.
LENGTHS = st.sampled_from([1, 2, 3, 5, 31, 32, 33, 64, 100, 257, 700, 1031])
ROW_FAMILIES = ("softmax", "logsoftmax", "layernorm", "rmsnorm", "rmsnormgate", "logsumexp",
                "crossentropy", "colsum", "residualrmsnorm", "softmaxcomposed", "crossentropymlx",
                "rmsnormgrad")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(ROW_FAMILIES), rows=st.integers(1, 5), length=LENGTHS,
       dtype=st.sampled_from(FLOATS), chip=st.sampled_from(CHIPS),
       seed=st.integers(0, 2**16))
def test_row_kernels_any_length(family, rows, length, dtype, chip, seed):
    shape = (length, rows) if family == "colsum" else (rows, length)
    run_and_compare(oracle.FAMILIES[family](shape=shape, dtype=dtype), chip, seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.sampled_from([2, 6, 8, 24, 40]), length=LENGTHS, dtype=st.sampled_from(FLOATS),
       chip=st.sampled_from(CHIPS), seed=st.integers(0, 2**16))
def test_block_column_sums_any_shape(rows, length, dtype, chip, seed):
    # threadgroups walking blocks of 2-8 rows, each keeping its columns' partial sums
    region = oracle.FAMILIES["rmsnormgrad"](shape=(rows, length), dtype=dtype)
    kernel = run_and_compare(region, chip, seed)
    s = kernel.arg
    assert s.rows_per_block == max(n for n in (8, 4, 2, 1) if rows % n == 0) > 1
    assert s.rows_per_group == 1 and s.threads_per_row >= s.simd_width
    assert s.grid == rows // s.rows_per_block * s.threadgroup_size


# -- non-contiguous inputs: the region reads a transposed or strided view of what MLX passes ----

def relayout(region: Region, k: int, kind: str) -> tuple[Region, callable]:
    """Input k becomes a transposed or every-other-element buffer; a movement op recovers the
    region's view. Returns the new region and a function mapping the logical array to the
    stored one."""
    i = region.inputs[k]
    n = len(i.shape)
    if kind == "transposed":
        perm = tuple(reversed(range(n)))
        stored = Input(tuple(i.shape[p] for p in perm), i.dtype, i.name)
        view = op("Transpose", k, axes=perm)
        to_stored = lambda a: np.ascontiguousarray(np.transpose(a, perm))  # noqa: E731
    else:
        stored = Input(i.shape[:-1] + (2 * i.shape[-1],), i.dtype, i.name)
        view = op("Slice", k, start=(0,) * n, stop=stored.shape, strides=(1,) * (n - 1) + (2,))

        def to_stored(a):
            out = np.zeros(stored.shape, a.dtype)
            out[..., ::2] = a
            return out
    n_in = len(region.inputs)

    def remap(v: int) -> int:
        if v == k:
            return n_in  # the view
        return v if v < n_in else v + 1

    ops = (view,) + tuple(op(o.primitive, *[remap(a) for a in o.args], **dict(o.params))
                          for o in region.ops)
    inputs = region.inputs[:k] + (stored,) + region.inputs[k + 1:]
    return Region(inputs, ops, tuple(remap(v) for v in region.outputs), region.name), to_stored


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(ROW_FAMILIES + ("pointwise",)), rows=st.integers(1, 4),
       length=LENGTHS, kind=st.sampled_from(["transposed", "strided"]),
       dtype=st.sampled_from(FLOATS), chip=st.sampled_from(CHIPS), seed=st.integers(0, 99))
def test_non_contiguous_inputs(family, rows, length, kind, dtype, chip, seed):
    if family == "pointwise":
        shape = (rows, 3, length)
    elif family == "colsum":
        shape = (length, rows)
    else:
        shape = (rows, length)
    base = oracle.FAMILIES[family](shape=shape, dtype=dtype)
    logical = oracle.random_inputs(base, seed)
    region, to_stored = relayout(base, 0, kind)
    stored = [to_stored(logical[0])] + logical[1:]
    got = interpret(built(region, chip), stored)
    want = oracle.evaluate(base, logical)
    for g, w in zip(got, want):
        oracle.assert_close(g, w, dtype)


# -- random pointwise programs ----------------------------------------------------------------

_SAFE_UNARY = ["Negative", "Abs", "Exp", "Tanh", "Sigmoid", "Sin", "Square", "Erf", "Floor"]
_SAFE_BINARY = ["Add", "Subtract", "Multiply", "Maximum", "Minimum", "LogAddExp"]


@st.composite
def pointwise_programs(draw):
    dtype = draw(st.sampled_from(FLOATS))
    shape = (draw(st.integers(1, 4)), draw(st.sampled_from([1, 3, 4, 8, 33])))
    b = RegionBuilder("random")
    # full-shape, row-vector, column-vector and 0-d inputs: broadcasting by strides
    x = b.input(shape, dtype, "x")
    extra = draw(st.lists(st.sampled_from([(shape[1],), (shape[0], 1), ()]), max_size=2))
    others = [b.input(s, dtype, f"i{j}") for j, s in enumerate(extra)]
    pool = [x] + [b.op("Broadcast", v, shape=shape) for v in others]
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):
            pool.append(b.op(draw(st.sampled_from(_SAFE_UNARY)), draw(st.sampled_from(pool))))
        else:
            pool.append(b.op(draw(st.sampled_from(_SAFE_BINARY)), draw(st.sampled_from(pool)),
                             draw(st.sampled_from(pool))))
    outs = draw(st.lists(st.sampled_from(pool[1:] or pool), min_size=1, max_size=3, unique=True))
    return b.build(outs), dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=pointwise_programs(), chip=st.sampled_from(CHIPS), seed=st.integers(0, 99))
def test_random_pointwise_programs(program, chip, seed):
    region, dtype = program
    inputs = oracle.random_inputs(region, seed, scale=1.0)
    got = interpret(built(region, chip), inputs)
    want = oracle.evaluate(region, inputs)
    for g, w in zip(got, want):
        oracle.assert_close(g, w, dtype, scale=4.0)
