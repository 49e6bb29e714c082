"""Greedy generation over the mlx-lm zoo with mlxtriton.lm's caches: token for token what mlx-lm's
own caches give, called eagerly, stepped as the runtime's protocol says (tests/lm/replay.py) and
through ``mlxtriton.optimize``, where one build serves every decode step."""

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_map
from mlx_lm.generate import generate, generate_step, speculative_generate_step, stream_generate
from mlx_lm.models import cache as lm_cache

import mlxtriton
from mlxtriton import lm
from tests import lm_zoo
from tests.lm.replay import Replay

TOKENS = 64
PROMPTS = (1, 7, 300)  # one token (no prefill), a short prefill, a prefill past every window
# mx.contiguous (qwen3_next's gated delta rule) cannot be exported: trace it with mx.compile.
TRACERS = {"qwen3_next": "compile"}


def _generate(model, prompt, cache):
    steps = generate_step(prompt, model, max_tokens=TOKENS, sampler=lm_zoo.argmax_sampler,
                          prompt_cache=cache)
    tokens, logprobs = zip(*steps)
    return list(tokens), np.array(mx.stack(logprobs))


@pytest.mark.parametrize("name", lm_zoo.NAMES)
def test_greedy_generation_matches_mlx_lm(name):
    model = lm_zoo.build(name)
    for length in PROMPTS:
        prompt = lm_zoo.prompt(length)
        expected, expected_logprobs = _generate(model, prompt, None)

        tokens, logprobs = _generate(model, prompt, lm.make_prompt_cache(model))
        assert tokens == expected, f"eager, prompt of {length}"
        # Reading a masked buffer sums in another order than mlx-lm's slices: ~1e-5 here.
        np.testing.assert_allclose(logprobs, expected_logprobs, atol=1e-4)

        replay = Replay(model, TRACERS.get(name, "export"))
        tokens, _ = _generate(replay, prompt, lm.make_prompt_cache(model))
        assert tokens == expected, f"replayed, prompt of {length}"
        # Builds: the prefill (when the prompt has more than one token), the prompt's last token
        # (int32) and the decode steps (uint32 tokens from the sampler); every later step replays.
        assert replay.builds == (2 if length == 1 else 3)
        assert replay.replays == TOKENS - 1


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "recurrent_gemma"])
def test_generate_and_stream_generate_match_mlx_lm(name):
    model, tokenizer = lm_zoo.build(name), lm_zoo.tokenizer()
    prompt = lm_zoo.prompt(40).tolist()
    kwargs = dict(max_tokens=24, sampler=lm_zoo.argmax_sampler)
    expected = generate(model, tokenizer, prompt, **kwargs)
    assert len(expected) == 24
    assert generate(model, tokenizer, prompt, prompt_cache=lm.make_prompt_cache(model),
                    **kwargs) == expected
    replay = Replay(model)
    streamed = [r.text for r in stream_generate(replay, tokenizer, prompt,
                                                prompt_cache=lm.make_prompt_cache(model),
                                                **kwargs)]
    assert "".join(streamed) == expected
    assert replay.builds == 3


def _optimized_generation_matches(name):
    model = lm_zoo.build(name)
    for length in PROMPTS:
        prompt = lm_zoo.prompt(length)
        expected, _ = _generate(model, prompt, None)
        optimized = mlxtriton.optimize(model)
        tokens, _ = _generate(optimized, prompt, lm.make_prompt_cache(model))
        assert tokens == expected, f"prompt of {length}"
        info = optimized.cache_info()
        assert info.builds == (2 if length == 1 else 3), info
        assert info.hits == TOKENS - 1, info


@pytest.mark.parametrize("name", lm_zoo.NAMES)
def test_optimized_generation_matches_mlx_lm(name):
    _optimized_generation_matches(name)


@pytest.mark.parametrize("name", ["llama", "qwen3"])
@pytest.mark.parametrize("prefill_step", [2048, 16])
def test_max_kv_size_generation_matches_mlx_lm(name, prefill_step):
    # mlx-lm's max_kv_size caches: a window of 32 tokens keeping the first 4, prefilled in one
    # chunk or in chunks past the window
    model, prompt = lm_zoo.build(name), lm_zoo.prompt(70)
    kwargs = dict(max_tokens=TOKENS, sampler=lm_zoo.argmax_sampler, prefill_step_size=prefill_step)

    def run(fn, cache):
        tokens, logprobs = zip(*generate_step(prompt, fn, prompt_cache=cache, **kwargs))
        return list(tokens), np.array(mx.stack(logprobs))

    expected, expected_logprobs = run(model, lm_cache.make_prompt_cache(model, max_kv_size=32))
    _, unkept_logprobs = run(model, [lm_cache.RotatingKVCache(32) for _ in model.layers])
    assert not np.allclose(unkept_logprobs, expected_logprobs, atol=1e-3)  # the kept tokens matter
    optimized = mlxtriton.optimize(model)
    tokens, logprobs = run(optimized, lm.make_prompt_cache(model, max_kv_size=32))
    assert tokens == expected
    np.testing.assert_allclose(logprobs, expected_logprobs, atol=1e-4)
    # the chunks of the prompt, its last token, the decode steps
    assert optimized.cache_info().builds <= 5


@pytest.mark.parametrize("settings", [dict(temp=0.7), dict(temp=0.7, top_p=0.9),
                                      dict(temp=0.7, top_k=20), dict(temp=1.0, min_p=0.05, top_k=50)])
def test_sampling_through_optimize_draws_mlx_lms_tokens(settings):
    # mlx-lm's samplers (temperature, top-p, top-k, min-p) optimized: the random key is state, so
    # with one seed the optimized model and sampler draw the tokens plain mlx-lm draws
    from mlx_lm.sample_utils import make_sampler

    model, prompt = lm_zoo.build("llama"), lm_zoo.prompt(12)
    sampler = make_sampler(**settings)

    def run(fn, sample, cache):
        mx.random.seed(7)
        return [t for t, _ in generate_step(prompt, fn, max_tokens=24, sampler=sample, prompt_cache=cache)]

    expected = run(model, sampler, None)
    fast_sampler = mlxtriton.optimize(sampler)
    assert run(mlxtriton.optimize(model), fast_sampler, lm.make_prompt_cache(model)) == expected
    assert fast_sampler.cache_info().builds == 1


def _scalar_adds(graph):
    """Int32 scalar additions (offset advances) in a graph and its fused regions' bodies."""
    count = 0
    for e in graph.eqns:
        if e.primitive == "Fused":
            count += _scalar_adds(e.params["body"])
        elif e.primitive == "Add" and e.outputs[0].shape == () and e.outputs[0].dtype == "int32":
            count += 1
    return count


def test_a_decode_step_for_cuda_writes_by_scatter_and_adds_residuals_in_its_norms():
    """The decode graph optimize builds for an NVIDIA chip: each cache write one scatter (no
    dynamic slice update), no AddMM for the one-row output projections (their residual adds
    join the next norm's kernel); for an Apple chip the AddMM stays."""
    model = lm_zoo.build("llama")
    layers = len(model.layers)
    for chip, addmm in (("h100", 0), ("m3", 2 * layers)):
        f, cache = mlxtriton.optimize(model, chip=chip), lm.make_prompt_cache(model)
        f(lm_zoo.prompt(7)[None], cache=cache)
        counts = f.graph(mx.array([[3]]), cache=cache).primitive_counts()
        assert counts.get("ScatterAxis") == 2 * layers and "DynamicSliceUpdate" not in counts, counts
        assert counts.get("AddMM", 0) == addmm, (chip, counts)


@pytest.mark.parametrize("name", ["llama", "gemma3_text"])
def test_every_layer_advances_one_offset(name):
    """make_prompt_cache's caches start from one offset array and, through optimize, keep holding
    one: a decode step advances it once, not once per layer (gemma3: across its sliding-window
    and full-attention caches)."""
    model = lm_zoo.build(name)
    f, cache = mlxtriton.optimize(model), lm.make_prompt_cache(model)
    y = lm_zoo.prompt(7)[None]
    for _ in range(4):
        y = mx.argmax(f(y, cache=cache)[:, -1], axis=-1)[:, None]
        assert all(c.offset is cache[0].offset for c in cache)
    assert cache[0].offset.item() == 10
    assert _scalar_adds(f.graph(y, cache=cache)) == 1
    # trimmed as mlx-lm's speculative decoding trims (each layer in turn): still one array, and
    # the next step finds the build it had
    builds = f.cache_info().builds
    assert lm_cache.trim_prompt_cache(cache, 2) == 2
    assert all(c.offset is cache[0].offset for c in cache) and cache[0].offset.item() == 8
    f(y, cache=cache)
    assert f.cache_info().builds == builds


@pytest.mark.parametrize("name", ["llama", "gemma3_text", "falcon_h1"])
def test_speculative_decoding_through_optimize_matches_mlx_lm(name):
    """mlx-lm's speculative decoding with an optimized model and an optimized draft (the model's
    weights perturbed) on still-shaped caches: mlx-lm's tokens, whatever the draft proposes (its
    verification steps take 2 and 3 tokens, its rewinds trim every layer), in 3 builds each.

    Where the caches cannot be trimmed (falcon_h1's recurrent states) mlx-lm refuses, and so it
    does with these caches. mlx-lm's own speculative decoding of a sliding-window model leaves the
    greedy tokens once the window has filled (its rotating caches stop being trimmable, and
    rejected drafts stay in every layer: mlx-lm #1423); these caches follow it there too."""
    model, draft = lm_zoo.build(name), lm_zoo.build(name)
    noise = mx.random.normal((1,), key=mx.random.key(3))
    draft.update(tree_map(lambda p: p * (1 + 0.05 * noise), draft.parameters()))
    prompt = lm_zoo.prompt(7)

    def run(fn, draft_fn, cache):
        steps = speculative_generate_step(prompt, fn, draft_fn, max_tokens=40,
                                          sampler=lm_zoo.argmax_sampler, prompt_cache=cache)
        return [(token, from_draft) for token, _, from_draft in steps]

    if name == "falcon_h1":
        with pytest.raises(ValueError, match="requires a trimmable prompt cache"):
            run(mlxtriton.optimize(model), mlxtriton.optimize(draft),
                lm.make_prompt_cache(model) + lm.make_prompt_cache(draft))
        return
    expected = run(model, draft, None)
    assert 0 < sum(d for _, d in expected) < 40  # drafts accepted and rejected
    fast, fast_draft = mlxtriton.optimize(model), mlxtriton.optimize(draft)
    cache = lm.make_prompt_cache(model) + lm.make_prompt_cache(draft)
    assert run(fast, fast_draft, cache) == expected
    assert fast.cache_info().builds <= 3 and fast_draft.cache_info().builds <= 3


def test_a_conversation_goes_on_in_its_cache():
    """Two turns of generation in one still-shaped cache through optimize (the second prompt
    appended to the first turn's tokens), as in one mlx-lm cache; one build more for the second
    prompt's length."""
    model = lm_zoo.build("gemma3_text")
    first, second = lm_zoo.prompt(30, seed=1), lm_zoo.prompt(9, seed=2)
    theirs, ours = lm_cache.make_prompt_cache(model), lm.make_prompt_cache(model)
    fast = mlxtriton.optimize(model)
    for prompt in (first, second):
        assert lm_zoo.greedy(fast, prompt, 20, prompt_cache=ours) == lm_zoo.greedy(
            model, prompt, 20, prompt_cache=theirs)
    assert fast.cache_info().builds == 4
