"""The attention kernel (`mlxtriton.codegen.attention`) rendered as Metal and run by the Metal
emulator (the CUDA rendering differs only in the dialect table; tests/device/test_attention_gpu.py
launches it): against MLX's SDPA in float32 over grouped and multi-head queries, one to three
query rows, key counts past 32 SIMD groups' stride and past 1024, masks broadcast every way, rows
hiding every key, NaN; then inside ``optimize``, decoding an mlx-lm model with mlxtriton.lm's
caches against plain mlx-lm."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlxtriton
from mlxtriton import lm
from mlxtriton.codegen import schedule
from mlxtriton.codegen.attention import render_attention
from mlxtriton.graph.attention import decode_attention
from mlxtriton.graph.core import Var
from mlxtriton.patterns import attention as attention_rules
from mlxtriton.runtime import emulator
from mlxtriton.runtime.launch import _from_host, _to_host
from tests import lm_zoo
from tests.codegen import cuda_check, metal_check

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler for the Metal emulator")


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    heads: int
    kv_heads: int
    queries: int
    keys: int
    head_dim: int
    dtype: str
    mask_shape: tuple
    shown: float = 0.6  # the chance a key is shown
    seed: int = 0

    def __str__(self):
        return (f"b{self.batch}h{self.heads}/{self.kv_heads}q{self.queries}k{self.keys}d{self.head_dim}"
                f"-{self.dtype}-m{'x'.join(map(str, self.mask_shape))}-p{self.shown}")


CASES = [
    Case(1, 4, 2, 1, 70, 32, "float32", (1, 70)),  # one cache row read by every head
    Case(2, 4, 1, 3, 40, 64, "bfloat16", (2, 1, 3, 40)),  # per-sequence masks (left padding)
    Case(1, 2, 2, 2, 33, 32, "float16", (1, 2, 2, 33), shown=0.05),  # rows hiding every key
    Case(1, 2, 1, 1, 50, 64, "float32", (50,), shown=0.0),  # every row hides every key
    Case(1, 2, 1, 1, 1100, 64, "float32", (1, 1100)),  # past 1024 keys
    Case(1, 8, 2, 1, 256, 128, "bfloat16", (1, 256), shown=0.5),
]


def case_inputs(case: Case):
    rng = np.random.default_rng(case.seed)
    dt = getattr(mx, case.dtype)
    draw = lambda *shape: mx.array(rng.standard_normal(shape).astype(np.float32)).astype(dt)  # noqa: E731
    q = draw(case.batch, case.heads, case.queries, case.head_dim)
    k = draw(case.batch, case.kv_heads, case.keys, case.head_dim)
    v = draw(case.batch, case.kv_heads, case.keys, case.head_dim)
    mask = mx.array(rng.random(case.mask_shape) < case.shown)
    return q, k, v, mask, case.head_dim ** -0.5


def reference(q, k, v, mask, scale):
    """MLX's SDPA in float32 on the CPU (a GPU's float32 products may run in TF32; a row hiding
    every key averages v, as MLX's fallback does)."""
    with mx.stream(mx.cpu):
        f32 = [x.astype(mx.float32) for x in (q, k, v)]
        full = mx.broadcast_to(mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
        out = mx.fast.scaled_dot_product_attention(*f32, scale=scale, mask=full)
        mx.eval(out)
    return out


def emulated(q, k, v, mask, scale, keys_per_step=4, key_blocks=1, simd_groups=8):
    spec = decode_attention(*(Var(x.shape, str(x.dtype).split(".")[-1]) for x in (q, k, v, mask)), scale)
    kernel = render_attention(spec, "metal", 1 if key_blocks > 1 else keys_per_step, key_blocks, simd_groups)
    (o,) = emulator.run(kernel, [_to_host(x) for x in (q, k, v, mask)])
    return _from_host(o, spec.dtype)


def assert_close(got, want, dtype):
    # float32 throughout in the kernel; a half-precision input is rounded once, at the output
    tol = 2e-6 if dtype == "float32" else 8e-3 if dtype == "bfloat16" else 1e-3
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want), atol=tol, rtol=tol)


@pytest.mark.parametrize("keys_per_step", [1, 3, 4])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_kernel_matches_sdpa(case, keys_per_step):
    q, k, v, mask, scale = case_inputs(case)
    assert_close(emulated(q, k, v, mask, scale, keys_per_step), reference(q, k, v, mask, scale), case.dtype)


@settings(max_examples=12, deadline=None)
@given(heads_per_kv=st.sampled_from([1, 2, 4]), kv_heads=st.integers(1, 2), queries=st.integers(1, 3),
       keys=st.integers(1, 90), head_dim=st.sampled_from([32, 64]), batch=st.integers(1, 2),
       dtype=st.sampled_from(["float32", "bfloat16", "float16"]), shown=st.sampled_from([0.0, 0.1, 0.7, 1.0]),
       broadcast=st.lists(st.booleans(), min_size=4, max_size=4), seed=st.integers(0, 1000))
def test_random_shapes_and_masks(heads_per_kv, kv_heads, queries, keys, head_dim, batch, dtype, shown,
                                 broadcast, seed):
    full = (batch, heads_per_kv * kv_heads, queries, keys)
    mask_shape = tuple(1 if b else n for b, n in zip(broadcast, full))
    case = Case(batch, full[1], kv_heads, queries, keys, head_dim, dtype, mask_shape, shown, seed)
    q, k, v, mask, scale = case_inputs(case)
    assert_close(emulated(q, k, v, mask, scale), reference(q, k, v, mask, scale), dtype)


@pytest.mark.parametrize("key_blocks,simd_groups", [(2, 8), (5, 3), (32, 1)])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_keys_split_over_blocks_match_sdpa(case, key_blocks, simd_groups):
    """The two kernels of a split (partial results, then their merge) over every case, blocks
    left without a visible key or without any key included (32 blocks of one SIMD group over 33
    keys)."""
    q, k, v, mask, scale = case_inputs(case)
    got = emulated(q, k, v, mask, scale, key_blocks=key_blocks, simd_groups=simd_groups)
    assert_close(got, reference(q, k, v, mask, scale), case.dtype)


@pytest.mark.parametrize("key_blocks", [1, 4])
def test_nan_reaches_the_row_it_is_in(key_blocks):
    q, k, v, mask, scale = case_inputs(Case(1, 2, 1, 1, 40, 32, "float32", (1, 40), shown=1.0))
    q = q.at[0, 1, 0, 3].add(float("nan"))
    got = np.array(emulated(q, k, v, mask, scale, key_blocks=key_blocks))
    assert np.isnan(got[0, 1]).all() and np.isfinite(got[0, 0]).all()


def test_what_the_kernel_does_not_compute_is_named():
    q, k, v = Var((1, 4, 1, 48), "float32"), Var((1, 2, 40, 48), "float32"), Var((1, 2, 40, 48), "float32")
    assert "head dims 48" in decode_attention(q, k, v, Var((1, 40), "bool"), 0.1)
    q, k, v = (Var(x.shape[:3] + (32,), "float32") for x in (q, k, v))
    assert "additive" in decode_attention(q, k, v, Var((1, 40), "float32"), 0.1)
    assert "does not broadcast" in decode_attention(q, k, v, Var((3, 40), "bool"), 0.1)


@pytest.mark.parametrize("name,padding", [("llama", None), ("gemma3_text", None), ("llama", [0, 3])])
def test_decoding_through_optimize_runs_the_kernel(monkeypatch, name, padding):
    """The attention region inside a decode step, end to end: the rule fires for Metal here (where
    MLX's own SDPA takes masks and the rule stays off) so that the emulator can run the kernel.
    gemma3's sliding-window layers read a rotating cache's mask; a batch left-padded by mlx-lm's
    batching reads one mask row per sequence."""
    monkeypatch.setattr(attention_rules, "GROUPED_AT_DECODE", frozenset({"cuda", "metal"}))
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")
    arch = lm_zoo.BY_NAME[name]
    model = lm_zoo.build_arch(dataclasses.replace(arch, config={**arch.config, "head_dim": 32}))
    from mlx_lm.models import cache as lm_cache

    f = mlxtriton.optimize(model, chip="m3")
    if padding is None:
        fast, plain = lm.make_prompt_cache(model), lm_cache.make_prompt_cache(model)
        y = lm_zoo.prompt(36)[None]  # past gemma3's window of 32
    else:
        fast = [lm.StaticBatchKVCache(padding) for _ in model.layers]
        plain = [lm_cache.BatchKVCache(padding) for _ in model.layers]
        y = mx.stack([lm_zoo.prompt(9, seed=s) for s in range(len(padding))])
    for _ in range(3):
        a, b = f(y, cache=fast)[:, -1], model(y, cache=plain)[:, -1]
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-4, rtol=1e-4)
        y = mx.argmax(b, axis=-1)[:, None]
    names = [k.name for k in f.lower(y, cache=fast)]
    assert sum(n.startswith("mlxt_attention_") for n in names) == len(model.layers), names


def test_gradients_through_the_kernel_are_mlxs(monkeypatch):
    """The region's derivative is MLX's of the SDPA it replaces (`runtime/autodiff`)."""
    monkeypatch.setattr(attention_rules, "GROUPED_AT_DECODE", frozenset({"cuda", "metal"}))
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")
    q, k, v, mask, scale = case_inputs(Case(1, 4, 2, 1, 40, 32, "float32", (1, 40)))

    def loss(q, k, v):
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return (out * out).sum()

    f = mlxtriton.optimize(loss, chip="m3")
    assert any(n.name.startswith("mlxt_attention_") for n in f.lower(q, k, v))
    got = mx.grad(f, argnums=(0, 1, 2))(q, k, v)
    want = mx.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5, rtol=1e-4)


def test_a_long_cache_splits_its_keys_as_the_chip_says(monkeypatch):
    """Past the chip's ``attention_split_keys`` the region lowers to two kernels (partial results,
    their merge), and the optimised function still matches MLX's SDPA."""
    monkeypatch.setattr(attention_rules, "GROUPED_AT_DECODE", frozenset({"cuda", "metal"}))
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")
    assert schedule.attention_blocks(1024, schedule.kernel_target("h100")) == (1, 8)
    assert schedule.attention_blocks(1025, schedule.kernel_target("h100")) == (32, 8)
    q, k, v, mask, scale = case_inputs(Case(1, 4, 2, 1, 1100, 32, "float32", (1, 1100)))

    def attend(q, k, v, mask):
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)

    f = mlxtriton.optimize(attend, chip="m3")
    (kernel,) = [k for k in f.lower(q, k, v, mask) if k.name.startswith("mlxt_attention")]
    assert [c.name.split("_")[2] for c in kernel.chain()] == ["part", "merge"]
    assert "split over 64 threadgroups" in str(f.explain(q, k, v, mask))
    assert_close(f(q, k, v, mask), reference(q, k, v, mask, scale), "float32")


def _specs():
    for dtype in ("float32", "float16", "bfloat16"):
        for head_dim, mask_shape in ((64, (1, 256)), (128, (2, 1, 3, 256))):
            yield decode_attention(Var((2, 8, 3, head_dim), dtype), Var((2, 2, 256, head_dim), dtype),
                                   Var((2, 2, 256, head_dim), dtype), Var(mask_shape, "bool"), 0.125)


@pytest.mark.skipif(cuda_check.nvcc() is None, reason="nvcc is not installed")
def test_the_cuda_rendering_compiles():
    """nvcc on the CUDA source, wrapped as MLX's build_kernel does, for every dtype and several
    keys per step (the H100 ran one key a step: tests/device/test_attention_gpu.py)."""
    kernels = [render_attention(spec, "cuda", u) for spec in _specs() for u in (1, 3, 4)]
    kernels += [c for spec in _specs() for c in render_attention(spec, "cuda", key_blocks=32).chain()]
    errors = cuda_check.compile_errors(kernels)
    assert not errors, errors


def test_the_metal_rendering_type_checks():
    split = (c for spec in _specs() for c in render_attention(spec, "metal", key_blocks=64).chain())
    for kernel in (*(render_attention(spec, "metal", u) for spec in _specs() for u in (1, 4)), *split):
        assert metal_check.check(kernel) == [], kernel.as_text()
