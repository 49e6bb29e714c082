"""mlxtriton.lm's still-shaped caches against mlx-lm's own: what each query sees, growth in
buckets, trimming, state round trips, sizes, quantized caches and the refusals."""

import doctest

import mlx.core as mx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mlx.utils import tree_flatten, tree_map
from mlx_lm.models import cache as lm_cache

import mlxtriton
from mlxtriton import lm
from tests import lm_zoo
from tests.lm.replay import Replay


def _write_positions(cache, start: int, n: int, window):
    """Write keys whose value is their position; return (mask, the position each slot holds)."""
    mask = cache.make_mask(n, window_size=window)
    positions = mx.arange(start, start + n, dtype=mx.float32).reshape(1, 1, n, 1)
    keys, _ = cache.update_and_fetch(positions, positions)
    return np.array(mask), np.array(keys[0, 0, :, 0])


def _check_visible(mask, slots, start, n, window):
    assert mask.shape == (n, slots.shape[0])
    for i in range(n):
        q = start + i
        low = 0 if window is None else max(0, q - window + 1)
        assert sorted(slots[mask[i]].tolist()) == list(range(low, q + 1)), f"query at {q}"


@given(step=st.integers(1, 24), headroom=st.integers(1, 8), doubling=st.booleans(),
       window=st.none() | st.integers(1, 30),
       chunks=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_kv_cache_shows_each_query_its_past(step, headroom, doubling, window, chunks):
    cache = lm.StaticKVCache(step=step, headroom=headroom, doubling=doubling)
    start = 0
    for n in chunks:
        mask, slots = _write_positions(cache, start, n, window)
        _check_visible(mask, slots, start, n, window)
        start += n
        assert cache.size() == start == cache.offset.item()
        cache.__mlxtriton_prepare__()
        assert cache.capacity - start >= headroom and cache.capacity % step == 0


@given(max_size=st.integers(1, 24), headroom=st.integers(1, 8), data=st.data(),
       chunks=st.lists(st.integers(1, 40), min_size=1, max_size=8))
def test_rotating_cache_shows_each_query_its_window(max_size, headroom, data, chunks):
    window = data.draw(st.integers(1, max_size))
    cache = lm.StaticRotatingKVCache(max_size, headroom=headroom)
    start = 0
    for n in chunks:
        mask, slots = _write_positions(cache, start, n, window)
        _check_visible(mask, slots, start, n, window)
        start += n
        cache.__mlxtriton_prepare__()
        assert cache.capacity == max_size + headroom - 1  # back to the steady buffer


def _seen(mask, keys, n):
    """The positions each of ``n`` queries sees: keys hold their position; a None mask shows all."""
    keys = np.array(keys[0, 0, :, 0])
    if mask is None:
        return [sorted(keys.tolist())] * n
    mask = np.broadcast_to(np.array(mask), (n, keys.shape[0]))
    return [sorted(keys[mask[i]].tolist()) for i in range(n)]


@given(max_size=st.integers(5, 20), keep=st.integers(1, 4), headroom=st.integers(1, 6),
       chunks=st.lists(st.integers(1, 24), min_size=1, max_size=8))
def test_rotating_cache_with_kept_tokens_shows_what_mlx_lm_shows(max_size, keep, headroom, chunks):
    # mlx-lm's max_kv_size caches keep tokens: decoded tokens see the kept ones and a shorter
    # window, prefill chunks a window over mlx-lm's trimmed buffer
    theirs, mine = lm_cache.RotatingKVCache(max_size, keep), lm.StaticRotatingKVCache(max_size, keep, headroom)
    start = 0
    for n in chunks:
        positions = mx.arange(start, start + n, dtype=mx.float32).reshape(1, 1, n, 1)
        masks = [c.make_mask(n, return_array=n > 1) for c in (theirs, mine)]
        seen = [_seen(m, c.update_and_fetch(positions, positions)[0], n) for c, m in zip((theirs, mine), masks)]
        assert seen[1] == seen[0], f"chunk of {n} from {start}"
        start += n


def test_rotating_cache_refuses_a_window_wider_than_its_buffer():
    with pytest.raises(ValueError, match="window_size 9 exceeds the cache's max_size 8"):
        lm.StaticRotatingKVCache(8).make_mask(1, window_size=9)


def test_capacity_grows_in_buckets_and_each_bucket_is_one_build():
    model = lm_zoo.build("llama")
    prompt = lm_zoo.prompt(7)
    expected = lm_zoo.greedy(model, prompt, 64)
    for doubling, capacity in ((False, 80), (True, 128)):
        cache = lm.make_prompt_cache(model, step=16, headroom=4, doubling=doubling)
        replay = Replay(model)
        assert lm_zoo.greedy(replay, prompt, 64, prompt_cache=cache) == expected
        # 7 + 64 tokens with 4 free slots: 5 buckets of 16, or 16 -> 32 -> 64 -> 128.
        assert [c.capacity for c in cache] == [capacity] * len(cache)
        buckets = 5 if not doubling else 4
        assert replay.builds == 2 + buckets  # prefill, first token (int32), a decode per bucket


def test_nbytes_and_size_follow_the_buffer():
    cache = lm.StaticKVCache()
    assert cache.empty() and cache.nbytes == 0 and cache.size() == 0
    reference = lm_cache.KVCache()
    keys = mx.ones((1, 2, 7, 16))
    cache.update_and_fetch(keys, keys)
    reference.update_and_fetch(keys, keys)
    assert cache.nbytes == reference.nbytes == 2 * 2 * 256 * 16 * 4
    assert cache.size() == reference.size() == 7 and not cache.empty()


def _continue(model, cache, tokens):
    return model(mx.array([tokens]), cache=cache)


@pytest.mark.parametrize("name", ["llama", "mistral", "deepseek_v3"])
def test_trim_matches_mlx_lm(name):
    model = lm_zoo.build(name)
    prompt = lm_zoo.prompt(20).tolist()
    ours, theirs = lm.make_prompt_cache(model), lm_cache.make_prompt_cache(model)
    for cache in (ours, theirs):
        _continue(model, cache, prompt)
    assert lm_cache.can_trim_prompt_cache(ours) == lm_cache.can_trim_prompt_cache(theirs) is True
    assert lm_cache.trim_prompt_cache(ours, 5) == lm_cache.trim_prompt_cache(theirs, 5) == 5
    assert [c.size() for c in ours] == [c.size() for c in theirs]
    a, b = _continue(model, ours, [3, 1, 4]), _continue(model, theirs, [3, 1, 4])
    np.testing.assert_allclose(np.array(a), np.array(b), atol=1e-5)
    # A sliding-window cache that has wrapped around can no longer be trimmed, as in mlx-lm.
    for cache in (ours, theirs):
        _continue(model, cache, lm_zoo.prompt(40, seed=1).tolist())
    assert lm_cache.can_trim_prompt_cache(ours) == lm_cache.can_trim_prompt_cache(theirs)


@pytest.mark.parametrize("name", ["llama", "mistral", "falcon_h1", "mamba2"])
def test_state_round_trip(name):
    model = lm_zoo.build(name)
    cache = lm.make_prompt_cache(model)
    _continue(model, cache, lm_zoo.prompt(20).tolist())
    # tree_map rebuilds the state's lists: mlx-lm's ArraysCache would otherwise share its own.
    copy = [type(c).from_state(tree_map(lambda x: x, c.state)) for c in cache]
    assert [type(c) for c in copy] == [type(c) for c in cache]
    for _ in range(3):
        a, b = _continue(model, cache, [5]), _continue(model, copy, [5])
        assert mx.array_equal(a, b).item()


# A llama whose head dimension (64) is a quantization group.
_LLAMA64 = lm_zoo.Arch("llama64", lm_zoo.config("llama", hidden_size=128, head_dim=64))


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_cache_matches_mlx_lm(bits):
    model = lm_zoo.build_arch(_LLAMA64)
    for length in (1, 7, 300):
        prompt = lm_zoo.prompt(length)
        expected = lm_zoo.greedy(model, prompt, 32, prompt_cache=[
            lm_cache.QuantizedKVCache(64, bits) for _ in model.layers])
        ours = [lm.StaticQuantizedKVCache(64, bits) for _ in model.layers]
        replay = Replay(model)
        assert lm_zoo.greedy(replay, prompt, 32, prompt_cache=ours) == expected
        assert replay.builds <= 3 and replay.replays == 31
        # through optimize: the caches' (packed, scales, biases) tuples are state it rebuilds
        fast = mlxtriton.optimize(model)
        ours = [lm.StaticQuantizedKVCache(64, bits) for _ in model.layers]
        assert lm_zoo.greedy(fast, prompt, 32, prompt_cache=ours) == expected
        assert fast.cache_info().builds <= 3
        # generate_step's kv_bits: a full-precision cache quantized after the prompt.
        kwargs = dict(kv_bits=bits, kv_group_size=64, quantized_kv_start=0)
        expected = lm_zoo.greedy(model, prompt, 32, **kwargs)
        got = lm_zoo.greedy(model, prompt, 32, prompt_cache=lm.make_prompt_cache(model), **kwargs)
        assert got == expected
        fast = mlxtriton.optimize(model)
        assert lm_zoo.greedy(fast, prompt, 32, prompt_cache=lm.make_prompt_cache(model),
                             **kwargs) == expected


def test_kinds_map_to_still_shaped_caches():
    kinds = {name: [type(c).__name__ for c in lm.make_prompt_cache(lm_zoo.build(name))]
             for name in ("llama", "gemma3_text", "mamba", "falcon_h1")}
    assert kinds == {
        "llama": ["StaticKVCache"] * 2,
        "gemma3_text": ["StaticRotatingKVCache", "StaticKVCache"],
        "mamba": ["ArraysCache"] * 2,
        "falcon_h1": ["CacheList"] * 2,
    }
    falcon = lm.make_prompt_cache(lm_zoo.build("falcon_h1"))[0]
    assert [type(c).__name__ for c in falcon.caches] == ["ArraysCache", "StaticKVCache"]


def test_unsupported_caches_are_named():
    class Chunked(lm_zoo.nn.Module):
        def make_cache(self):
            return [lm_cache.ChunkedKVCache(64)]

    with pytest.raises(TypeError, match="no still-shaped counterpart of mlx-lm's ChunkedKVCache: llama4"):
        lm.make_prompt_cache(Chunked())
    with pytest.raises(ValueError, match="keep must be in"):
        lm.StaticRotatingKVCache(8, keep=8)
    with pytest.raises(TypeError, match="does not convert mlx-lm's BatchKVCache: convert each"):
        lm.static_prompt_cache([lm_cache.BatchKVCache([0, 1])])


# Caches mlx-lm built and filled, converted (`static_prompt_cache`) or saved by mlx-lm and loaded
# (`load_prompt_cache`): generation goes on from them as from mlx-lm's own. Prompts shorter than
# every window, past the sliding windows (32) and past the rotating caches with kept tokens (24).
_FILLED = {
    "llama": ("llama", lm_cache.make_prompt_cache, None),
    "sliding": ("gemma3_text", lm_cache.make_prompt_cache, None),
    "kept_tokens": ("llama", lambda m: [lm_cache.RotatingKVCache(24, keep=4) for _ in m.layers],
                    None),
    "quantized": ("llama64", lm_cache.make_prompt_cache, 8),
    "hybrid": ("falcon_h1", lm_cache.make_prompt_cache, None),
    "ssm": ("mamba", lm_cache.make_prompt_cache, None),
}


def _cache_values(cache) -> list:
    return [(k, np.array(v) if isinstance(v, mx.array) else v)
            for k, v in tree_flatten([c.state for c in cache])]


@pytest.mark.parametrize("kind", sorted(_FILLED))
def test_caches_holding_tokens_convert_and_generation_goes_on(kind, tmp_path):
    name, make_cache, bits = _FILLED[kind]
    model = lm_zoo.build_arch(_LLAMA64) if name == "llama64" else lm_zoo.build(name)
    fast = mlxtriton.optimize(model)
    for length in (5, 40, 70):
        theirs = make_cache(model)
        lm_zoo.greedy(model, lm_zoo.prompt(length, seed=1), 6, prompt_cache=theirs)
        if bits:
            theirs = [c.to_quantized(64, bits) for c in theirs]
        lm_cache.save_prompt_cache(str(tmp_path / "cache.safetensors"), theirs, {"turn": "1"})
        before = _cache_values(theirs)
        converted = lm.static_prompt_cache(theirs)
        loaded, metadata = lm.load_prompt_cache(str(tmp_path / "cache.safetensors"), True)
        assert metadata == {"turn": "1"}
        assert ({type(c).__name__ for c in converted + loaded}
                <= {"StaticKVCache", "StaticQuantizedKVCache", "StaticRotatingKVCache",
                    "ArraysCache", "CacheList"})
        prompt = lm_zoo.prompt(6, seed=2)
        got = lm_zoo.greedy(fast, prompt, 12, prompt_cache=converted)
        after = _cache_values(theirs)  # the caches converted are left as they were
        assert [k for k, _ in after] == [k for k, _ in before]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(after, before))
        expected = lm_zoo.greedy(model, prompt, 12, prompt_cache=theirs)
        assert got == expected, f"converted, prompt of {length}"
        assert lm_zoo.greedy(fast, prompt, 12, prompt_cache=loaded) == expected, \
            f"loaded, prompt of {length}"
    assert fast.cache_info().builds <= 3 * 3


def test_a_saved_batch_cache_loads_as_it_was(tmp_path):
    model = lm_zoo.build("llama")
    caches = [lm.make_prompt_cache(model) for _ in range(2)]
    for cache, n in zip(caches, (5, 3)):
        _continue(model, cache, lm_zoo.prompt(n).tolist())
    batch = [lm.StaticKVCache.merge(layer) for layer in zip(*caches)]
    lm_cache.save_prompt_cache(str(tmp_path / "batch.safetensors"), batch)
    loaded = lm.load_prompt_cache(str(tmp_path / "batch.safetensors"))
    assert [type(c) for c in loaded] == [lm.StaticBatchKVCache] * len(batch)
    y = mx.array([[3], [4]])
    assert mx.array_equal(model(y, cache=loaded), model(y, cache=batch)).item()


def test_saved_still_shaped_caches_load_as_they_were(tmp_path):
    model = lm_zoo.build("falcon_h1")
    cache = lm.make_prompt_cache(model)
    _continue(model, cache, lm_zoo.prompt(20).tolist())
    file = str(tmp_path / "ours.safetensors")
    lm_cache.save_prompt_cache(file, cache)
    with pytest.raises(KeyError):  # mlx-lm's own loader knows its classes only
        lm_cache.load_prompt_cache(file)
    loaded = lm.load_prompt_cache(file)
    assert [type(c) for c in loaded] == [type(c) for c in cache]
    assert all(c.caches[1].offset is loaded[0].caches[1].offset for c in loaded)
    for _ in range(3):
        a, b = _continue(model, cache, [5]), _continue(model, loaded, [5])
        assert mx.array_equal(a, b).item()


def test_docstring_examples_run():
    assert doctest.testmod(lm).failed == 0


@pytest.mark.parametrize("bits", [None, 4])
def test_optimized_decoding_holds_no_buffer_a_step_replaced(bits):
    """Between steps an optimized model holds the cache's buffers and no earlier ones."""
    import gc

    model = lm_zoo.build_arch(_LLAMA64)

    def decode(fn):
        cache = [lm.StaticQuantizedKVCache(64, bits, step=2048) if bits else
                 lm.StaticKVCache(step=2048) for _ in model.layers]
        lm_zoo.greedy(fn, lm_zoo.prompt(7), 12, prompt_cache=cache)
        return cache

    def held(fn) -> int:
        gc.collect()
        base = mx.get_active_memory()
        cache = decode(fn)  # noqa: F841 - alive while measured
        gc.collect()
        return mx.get_active_memory() - base

    eager = held(model)
    assert eager >= len(model.layers) * 2 * 2048 * 64 * (bits / 8 if bits else 4)  # k and v
    assert held(mlxtriton.optimize(model)) <= eager + 64 * 1024


def test_an_optimized_model_keeps_no_cache_once_another_is_used():
    """Its builds keep no state object: a generation's cache goes when the caller drops it and the
    next call reads another (the last call's objects are kept for the next call to refresh,
    until `clear_cache`)."""
    import gc
    import weakref

    model = lm_zoo.build("llama")
    fast = mlxtriton.optimize(model)
    caches = [lm.make_prompt_cache(model), lm.make_prompt_cache(model)]
    for cache in caches:
        lm_zoo.greedy(fast, lm_zoo.prompt(7), 4, prompt_cache=cache)
    first, last = weakref.ref(caches[0][0]), weakref.ref(caches[1][0])
    del caches, cache
    gc.collect()
    assert first() is None and last() is not None
    fast.clear_cache()
    gc.collect()
    assert last() is None
