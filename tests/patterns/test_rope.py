"""Rule 2 (RoPE): a decomposed rotary embedding becomes the RoPE primitive where it is exactly
that function: both layouts, partial rotation, offsets, scales, bases, hand-written tables; near
misses for tables that are arguments or follow another frequency law; the JAX oracle."""

import math

import mlx.core as mx
import mlx.nn as nn
from hypothesis import given, settings, strategies as st

from tests.patterns._check import check, misses


def x_of(shape=(1, 2, 6, 16), dtype=mx.float32, seed=0):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def rope_eqn(g2):
    assert set(g2.primitive_counts()) <= {"RoPE"}, g2
    return g2.eqns[0]


def test_nn_rope_both_layouts():
    for traditional in (False, True):
        g2, _ = check(nn.RoPE(16, traditional=traditional), x_of())
        e = rope_eqn(g2)
        assert e.params["traditional"] is traditional and e.params["dims"] == 16 and e.params["base"] == 10000.0


def test_offset_scale_base_and_partial_dims():
    x = x_of(dtype=mx.bfloat16)
    g2, report = check(lambda x: mx.fast.rope(x, 8, traditional=False, base=500000.0, scale=0.5, offset=3), x)
    e = rope_eqn(g2)
    assert (e.params["dims"], e.params["base"], e.params["scale"]) == (8, 500000.0, 0.5)
    assert g2.const_values[e.inputs[1]].item() == 3


def test_hand_written_tables():
    d, length = 16, 6
    inv = 1.0 / (10000.0 ** (mx.arange(0, d, 2).astype(mx.float32) / d))
    theta = mx.arange(length).astype(mx.float32)[:, None] * inv[None]
    cos, sin = mx.cos(theta), mx.sin(theta)

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)

    g2, _ = check(rope, x_of())
    e = rope_eqn(g2)
    assert math.isclose(e.params["base"], 10000.0) and e.params["scale"] == 1.0


def test_near_misses():
    d = 16

    def rope_with(cos, sin):
        def rope(x):
            x1, x2 = x[..., : d // 2], x[..., d // 2:]
            return mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        return rope

    linear = mx.arange(6).astype(mx.float32)[:, None] * (mx.arange(d // 2).astype(mx.float32) * 0.01)[None]
    g2, report = check(rope_with(mx.cos(linear), mx.sin(linear)), x_of())
    assert "RoPE" not in g2.primitive_counts()
    assert any("not of angles (position + offset) * scale * base^(-i/(dims/2))" in m for m in misses(report))

    def from_arguments(x, theta):
        return rope_with(mx.cos(theta), mx.sin(theta))(x)

    g2, report = check(from_arguments, x_of(), linear)
    assert "RoPE" not in g2.primitive_counts()
    assert any("computed from arguments" in m for m in misses(report))


@settings(max_examples=6)
@given(dims=st.sampled_from([4, 8, 16]), traditional=st.booleans(), offset=st.sampled_from([0, 7]),
       dtype=st.sampled_from([mx.float32, mx.bfloat16, mx.float16]), length=st.sampled_from([2, 5]))
def test_rope_matches_the_oracle(dims, traditional, offset, dtype, length):
    if traditional:
        dims = 16  # MLX's traditional fallback rotates the whole last axis
    x = x_of((2, 3, length, 16), dtype, seed=dims)
    g2, _ = check(lambda x: mx.fast.rope(x, dims, traditional=traditional, base=10000.0, scale=1.0, offset=offset), x)
    rope_eqn(g2)


def test_an_offset_that_is_an_argument():
    # an mlx-lm cache's offset on the CPU stream, where mx.fast.rope decomposes: the angle table
    # of a base, or of llama3's frequencies (an argument), computed from it
    freqs = mx.exp(mx.linspace(0, 9, 8))

    def with_base(x, offset):
        return mx.fast.rope(x, 16, traditional=False, base=500000.0, scale=0.5, offset=offset)

    def with_freqs(x, offset, freqs):
        return mx.fast.rope(x, 16, traditional=False, base=None, scale=1.0, offset=offset, freqs=freqs)

    for fn, args in ((with_base, (x_of(), mx.array(5))), (with_freqs, (x_of((1, 4, 1, 16)), mx.array(300), freqs))):
        g2, report = check(fn, *args)
        e = rope_eqn(g2)
        assert e.inputs[1] is g2.inputs[1] and e.params["scale"] == (0.5 if fn is with_base else 1.0)
        assert (len(e.inputs) == 3) is (fn is with_freqs)
        if fn is with_base:
            assert e.params["base"] == 500000.0


def test_an_offset_of_several_sequences_stays_a_near_miss():
    g2, report = check(lambda x, offset: mx.fast.rope(x, 16, traditional=False, base=10000.0, scale=1.0,
                                                      offset=offset), x_of((2, 3, 1, 16)), mx.array([4, 9]))
    assert "RoPE" not in g2.primitive_counts()


def test_an_angle_table_of_an_offset_transposed_stays_a_near_miss():
    # positions along the last axis and frequencies along the rows: no RoPE, though the table's
    # shape [L, half] is a RoPE's where L == half
    d, length = 8, 4

    def rope(x, offset):
        inv = mx.exp(mx.arange(0, -d // 2, -1, dtype=mx.float32) * (math.log(10000.0) / (d // 2)))
        theta = inv[:, None] * (mx.arange(length, dtype=mx.float32) + offset.astype(mx.float32))[None, :]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return mx.concatenate([x1 * mx.cos(theta) - x2 * mx.sin(theta),
                               x1 * mx.sin(theta) + x2 * mx.cos(theta)], axis=-1)

    g2, report = check(rope, x_of((1, 2, length, d)), mx.array(3))
    assert "RoPE" not in g2.primitive_counts()
    assert any("computed from arguments" in m for m in misses(report))
