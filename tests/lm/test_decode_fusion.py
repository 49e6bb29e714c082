"""Greedy generation through ``mlxtriton.optimize`` with the graphs shaped for a GPU (the H200,
an M3), run here on the CPU where fused regions run as MLX ops: the decode-time rules (attention
with the cache's mask as q @ k^T per kv head, one row kernel, @ v; a norm of a residual add in
one kernel with it) give mlx-lm's tokens, and do fire on the decode step, from a CPU trace and
from a decode step made to look like a GPU trace."""

import mlx.core as mx
import pytest

import mlxtriton
from mlxtriton import lm
from tests import lm_zoo
from tests.lm.test_generation import PROMPTS, TOKENS, _generate

# Grouped-query, multi-head, sliding windows (a rotating cache's mask), latent attention beside
# experts, attention beside a recurrent block; gpt_oss's sinks and gemma2's soft-capped scores
# stay as they are.
MODELS = ["llama", "gpt_neox", "mistral", "deepseek_v3", "lfm2"]


def _decode_step_rewrites(model) -> int:
    """Attention layers the decode step's graph rewrites into the grouped form."""
    cache = lm.make_prompt_cache(model)
    f = mlxtriton.optimize(model, chip="h200")
    mx.eval(f(lm_zoo.prompt(5)[None], cache=cache))
    explanation = f.explain(mx.array([[7]]), cache=cache)
    (patterns,) = [s for s in explanation.stages if s.stage == "patterns"]
    return sum("attention at decode" in f.detail for f in patterns.report.fired)


def _matches(name, chip="h200"):
    model = lm_zoo.build(name)
    for length in PROMPTS:
        prompt = lm_zoo.prompt(length)
        expected, _ = _generate(model, prompt, None)
        optimized = mlxtriton.optimize(model, chip=chip)
        tokens, _ = _generate(optimized, prompt, lm.make_prompt_cache(model))
        assert tokens == expected, f"prompt of {length}"
        assert optimized.cache_info().hits == TOKENS - 1
    return model


@pytest.mark.parametrize("name", MODELS)
def test_generation_shaped_for_cuda_matches_mlx_lm(name):
    model = _matches(name)
    attention_layers = sum(1 for c in lm.make_prompt_cache(model) if hasattr(c, "keys"))
    assert _decode_step_rewrites(model) == attention_layers > 0


@pytest.mark.parametrize("name", ["olmo2", "gemma3_text"])
def test_generation_shaped_for_an_apple_gpu_matches_mlx_lm(name):
    # post-norms: there a norm of a residual add stays decomposed for the fuse stage
    _matches(name, chip="m3")


@pytest.mark.slow
@pytest.mark.parametrize("name", lm_zoo.NAMES)
def test_generation_shaped_for_cuda_matches_mlx_lm_whole_zoo(name):
    _matches(name)


@pytest.mark.parametrize("name", ["llama", "gpt_neox", "gemma3_text", "olmo2"])
def test_a_gpu_shaped_decode_step_keeps_its_values(name):
    # On the CPU stream the fast ops decompose; the pattern stage with no target turns them back
    # into the primitives a GPU trace holds (norms, SDPA with the cache's mask). Optimised for the
    # H200 from there, the decode step computes what the trace does.
    from mlxtriton.graph.evaluate import run
    from mlxtriton.graph.evaluate_mlx import MLX_RULES
    from mlxtriton.patterns import optimize_patterns
    from mlxtriton.runtime.compiled import run_passes

    model = lm_zoo.build(name)
    cache = lm.make_prompt_cache(model)
    f = mlxtriton.optimize(model, chip="h200")
    mx.eval(f(lm_zoo.prompt(9)[None], cache=cache))
    token = mx.array([[7]])
    source = f.trace(token, cache=cache).source
    gpu = optimize_patterns(source, None)[0]
    assert gpu.primitive_counts()["ScaledDotProductAttention"] > 0
    optimized, stages = run_passes(gpu, f.passes, "h200")
    fired = [r.rule for s in stages if s.stage == "patterns" for r in s.report.fired]
    assert "attention_for_fusion" in fired and "ScaledDotProductAttention" not in optimized.primitive_counts()
    if name in ("gemma3_text", "olmo2"):  # post-norms: a norm of a residual add shares its kernel
        assert "rms_norm_for_fusion" in fired
    flat = [token, *source.state_values]  # the cache's arrays as they were when traced
    for got, want in zip(run(optimized, flat, MLX_RULES), run(source, flat, MLX_RULES)):
        assert mx.allclose(got, want, atol=1e-4, rtol=1e-4).item()
