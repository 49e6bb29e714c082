"""Batched generation (mlx-lm's ``batch_generate`` and ``BatchGenerator``) with mlxtriton.lm's
batch caches (``StaticBatchKVCache``, ``StaticBatchRotatingKVCache``): the same tokens as mlx-lm's
own batch caches, eagerly and through ``mlxtriton.optimize``, where each batch size is one build
per bucket."""

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import BatchGenerator, batch_generate
from mlx_lm.models import cache as lm_cache

import mlxtriton
from mlxtriton import lm
from tests import lm_zoo

PROMPT_LENGTHS = (5, 2, 9, 1)
MAX_TOKENS = [12, 5, 9, 16]  # sequences leave the batch at different steps: filter()
# Prompts and lengths past the zoo's sliding windows (32 tokens): rotating caches wrap around.
LONG_LENGTHS = (40, 5, 33, 1)
LONG_MAX_TOKENS = [40, 12, 30, 45]


class _Tokenizer:
    eos_token_ids = [lm_zoo.VOCAB]  # no token id ends a sequence

    def decode(self, ids):
        return ""


def _batch(model, lengths, max_tokens, caches=None):
    prompts = [lm_zoo.prompt(n, seed=i).tolist() for i, n in enumerate(lengths)]
    return batch_generate(model, _Tokenizer(), prompts, prompt_caches=caches,
                          max_tokens=max_tokens, return_token_ids=True,
                          sampler=lm_zoo.argmax_sampler)


@pytest.mark.parametrize("name, lengths, max_tokens", [
    *[(name, PROMPT_LENGTHS, MAX_TOKENS)
      for name in ("llama", "qwen3", "phi3", "starcoder2", "olmo2", "mamba", "nemotron_h", "qwen3_next")],
    *[(name, LONG_LENGTHS, LONG_MAX_TOKENS) for name in ("mistral", "gemma3_text", "cohere2", "gpt_oss")],
])
def test_batch_generate_matches_mlx_lm(name, lengths, max_tokens):
    model = lm_zoo.build(name)
    expected = _batch(model, lengths, max_tokens).token_ids
    assert [len(t) for t in expected] == list(max_tokens)

    def caches():
        return [lm.make_prompt_cache(model) for _ in lengths]

    assert _batch(model, lengths, max_tokens, caches()).token_ids == expected
    f = mlxtriton.optimize(model)
    signatures, calls = set(), []

    def counted(tokens, cache):
        signatures.add((tokens.shape, tokens.dtype))
        calls.append(tokens.shape)
        return f(tokens, cache=cache)

    counted.layers = model.layers
    assert _batch(counted, lengths, max_tokens, caches()).token_ids == expected
    info = f.cache_info()
    # One build per token signature mlx-lm feeds (the prefill, int32 prompt tokens and uint32
    # sampled ones, each batch size as sequences leave): the caches never cause a rebuild.
    assert info.builds == len(signatures), (info, signatures)
    assert info.hits == len(calls) - info.builds


def _continuous(model, caches, lengths, max_tokens):
    """Continuous batching: two sequences start, two more join after three steps (extend),
    sequences finish at different steps (filter), finished ones' caches come back (extract)."""
    gen = BatchGenerator(model, sampler=lm_zoo.argmax_sampler, stop_tokens=[[lm_zoo.VOCAB]],
                         prefill_batch_size=2, completion_batch_size=8)
    prompts = [lm_zoo.prompt(n, seed=i).tolist() for i, n in enumerate(lengths)]
    tokens: dict[int, list[int]] = {}
    returned = {}
    uids = gen.insert(prompts[:2], max_tokens[:2], caches=caches(2))
    step = 0
    while responses := gen.next_generated():
        for r in responses:
            tokens.setdefault(r.uid, []).append(r.token)
            if r.finish_reason is not None and r.prompt_cache is not None:
                returned[r.uid] = r.prompt_cache
        step += 1
        if step == 3:
            uids += gen.insert(prompts[2:], max_tokens[2:], caches=caches(2))
    gen.close()
    return [tokens[u] for u in uids], [returned[u] for u in uids]


@pytest.mark.parametrize("name, lengths, max_tokens", [
    ("llama", PROMPT_LENGTHS, MAX_TOKENS),
    ("gemma3_text", LONG_LENGTHS, LONG_MAX_TOKENS),  # sliding-window and full layers
    ("mistral", LONG_LENGTHS, LONG_MAX_TOKENS),
])
def test_continuous_batching_matches_mlx_lm(name, lengths, max_tokens):
    model = lm_zoo.build(name)
    expected, plain_caches = _continuous(model, lambda n: None, lengths, max_tokens)
    assert [len(t) for t in expected] == list(max_tokens)

    def ours(n):
        return [lm.make_prompt_cache(model) for _ in range(n)]

    tokens, caches = _continuous(model, ours, lengths, max_tokens)
    assert tokens == expected
    f = mlxtriton.optimize(model)
    tokens, optimized_caches = _continuous(f, ours, lengths, max_tokens)
    assert tokens == expected
    # A finished sequence's cache (BatchGenerator extracts it) continues as mlx-lm's does.
    for last, plain, mine, optimized in zip(expected, plain_caches, caches, optimized_caches):
        assert all(type(c).__name__.startswith("Static") for c in mine if hasattr(c, "offset"))
        start = mx.array(last[-1:])
        want = lm_zoo.greedy(model, start, 6, prompt_cache=plain)
        assert lm_zoo.greedy(model, start, 6, prompt_cache=mine) == want
        assert lm_zoo.greedy(f, start, 6, prompt_cache=optimized) == want


def _visible(keys, mask):
    """Per sequence, the keys the last query sees, in slot order."""
    mask = np.array(mask).reshape(mask.shape[0], -1, mask.shape[-1])[:, -1]
    keys = np.array(keys)
    return [keys[b][:, mask[b]] for b in range(keys.shape[0])]


def test_batch_cache_operations_match_mlx_lm():
    """merge, prepare / finalize (right padding), decode writes, filter, extend, extract and
    trim: every sequence sees the keys mlx-lm's BatchKVCache shows it."""
    rng = np.random.default_rng(0)

    def kv(b, n):
        return mx.array(rng.normal(size=(b, 2, n, 4)).astype(np.float32))

    def singles(kind, lengths):
        out = []
        for n in lengths:
            c = kind()
            if n:
                k = kv(1, n)
                c.update_and_fetch(k, k)
            out.append(c)
        return out

    def check(theirs, mine):
        """One decode step on both: each sequence's query sees the same keys, itself last."""
        assert mine.size() == theirs.size()
        np.testing.assert_array_equal(np.array(mine.offset), np.array(theirs.offset))
        k = kv(mine.offset.shape[0], 1)
        masks = [c.make_mask(1, return_array=True) for c in (theirs, mine)]
        seen = [_visible(c.update_and_fetch(k, k)[0], m) for c, m in zip((theirs, mine), masks)]
        for a, b in zip(*seen):
            np.testing.assert_array_equal(a, b)

    rng_state = rng.bit_generator.state
    theirs = lm_cache.BatchKVCache.merge(singles(lm_cache.KVCache, [3, 0, 5]))
    rng.bit_generator.state = rng_state
    mine = lm.StaticKVCache.merge(singles(lm.StaticKVCache, [3, 0, 5]))
    assert isinstance(mine, lm.StaticBatchKVCache) and mine.capacity == 256
    check(theirs, mine)

    # Prompts of different lengths written together, right-padded, then finalized.
    for c in (theirs, mine):
        c.prepare(lengths=[4, 2, 1], right_padding=[0, 2, 3])
    k = kv(3, 4)
    for c in (theirs, mine):
        c.update_and_fetch(k, k)
        c.finalize()
    check(theirs, mine)
    for _ in range(3):  # decode steps
        check(theirs, mine)

    for c in (theirs, mine):
        c.filter([0, 2])
    check(theirs, mine)

    rng_state = rng.bit_generator.state
    other_theirs = lm_cache.BatchKVCache.merge(singles(lm_cache.KVCache, [2, 7]))
    rng.bit_generator.state = rng_state
    other_mine = lm.StaticKVCache.merge(singles(lm.StaticKVCache, [2, 7]))
    theirs.extend(other_theirs)
    mine.extend(other_mine)
    check(theirs, mine)
    assert mine.capacity == 256

    for i in range(4):
        a, b = theirs.extract(i), mine.extract(i)
        assert b.offset.item() == a.offset
        np.testing.assert_array_equal(np.array(b.keys[:, :, :a.offset]), np.array(a.keys))

    assert mine.trim(2) == theirs.trim(2)
    check(theirs, mine)


def test_a_batch_cache_state_round_trips():
    cache = lm.StaticKVCache.merge([lm.StaticKVCache(), lm.StaticKVCache()])
    k = mx.ones((2, 2, 3, 4))
    cache.update_and_fetch(k, k)
    again = lm.StaticBatchKVCache.from_state(cache.state)
    assert again.size() == 3 and again.capacity == cache.capacity
    np.testing.assert_array_equal(np.array(again.make_mask(1)), np.array(cache.make_mask(1)))


def test_batching_a_cache_without_a_batched_counterpart_is_refused_by_name():
    # mlx-lm batches no quantized cache, and neither does mlxtriton.lm: mlx-lm's error names it
    model = lm_zoo.build("llama")
    caches = [[lm.StaticQuantizedKVCache() for _ in model.layers] for _ in range(2)]
    with pytest.raises(ValueError, match="StaticQuantizedKVCache"):
        _batch(model, (3, 4), [2, 2], caches)
