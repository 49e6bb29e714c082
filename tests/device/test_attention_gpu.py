"""The attention kernel (`mlxtriton.codegen.attention`) launched on the GPU: against MLX's SDPA in
float32 over query lengths, key counts past a threadgroup's 1024 threads, head dims, grouped
heads and masks broadcast every way (rows hiding every key included), one threadgroup a row or the
keys split over 32 (two kernels), and in greedy generation through ``optimize`` with
mlxtriton.lm's caches against plain mlx-lm, past 1024 keys included. The Metal emulator runs the
same kernels in CI (tests/codegen/test_attention.py). Runs on the lent GPU (``-m cuda``)."""

import dataclasses

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models import cache as lm_cache

import mlxtriton
from mlxtriton import lm
from mlxtriton.codegen.attention import render_attention
from mlxtriton.graph.attention import decode_attention
from mlxtriton.graph.core import Var
from mlxtriton.runtime.launch import launcher
from tests import lm_zoo
from tests.codegen.test_attention import CASES, case_inputs, reference

pytestmark = [pytest.mark.cuda]


@pytest.mark.parametrize("key_blocks", [1, 32])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_the_kernel_matches_sdpa_in_float32(case, key_blocks):
    q, k, v, mask, scale = case_inputs(case)
    spec = decode_attention(*(Var(x.shape, str(x.dtype).split(".")[-1]) for x in (q, k, v, mask)), scale)
    (got,) = launcher(render_attention(spec, "cuda", key_blocks=key_blocks))(q, k, v, mask)
    want = reference(q, k, v, mask, scale)
    tol = 2e-5 if q.dtype == mx.float32 else 1e-2
    np.testing.assert_allclose(np.array(got.astype(mx.float32)), np.array(want), atol=tol, rtol=tol)


@pytest.mark.parametrize("name,batch,prompt", [("llama", 1, 40), ("mistral", 1, 40), ("gemma3_text", 1, 40),
                                               ("qwen3", 1, 40), ("llama", 3, 40), ("llama", 1, 1100)])
def test_greedy_generation_through_the_kernel_matches_mlx_lm(name, batch, prompt):
    arch = lm_zoo.BY_NAME[name]
    model = lm_zoo.build_arch(dataclasses.replace(arch, config={**arch.config, "head_dim": 64}))
    f = mlxtriton.optimize(model)
    fast, plain = lm.make_prompt_cache(model), lm_cache.make_prompt_cache(model)
    y = mx.stack([lm_zoo.prompt(prompt, seed=s) for s in range(batch)])  # past gemma3's window of 32
    for _ in range(24):
        a, b = f(y, cache=fast)[:, -1], model(y, cache=plain)[:, -1]
        np.testing.assert_allclose(np.array(a), np.array(b), atol=2e-3, rtol=2e-3)
        y = mx.argmax(b, axis=-1)[:, None]
    assert f.cache_info().builds <= 3
    kernels = [k.name for k in f.lower(y, cache=fast)]
    assert any(n.startswith("mlxt_attention_") for n in kernels), kernels
