"""The mlx-lm zoo (tests/lm_zoo.py) itself: every entry builds, is reproducible and runs a prefill
and decode steps with mlx-lm's own caches."""

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten
from mlx_lm.models import cache as lm_cache

from tests import lm_zoo


def test_zoo_covers_the_cache_kinds():
    assert len(lm_zoo.ARCHS) >= 24
    for kind in (lm_zoo.SLIDING, lm_zoo.SSM, lm_zoo.HYBRID, lm_zoo.MOE):
        assert any(kind in a.kinds for a in lm_zoo.ARCHS), kind


@pytest.mark.parametrize("name", lm_zoo.NAMES)
def test_prefill_and_decode_with_mlx_lm_cache(name):
    model = lm_zoo.build(name)
    cache = lm_cache.make_prompt_cache(model)
    logits = model(lm_zoo.prompt(16)[None], cache=cache)
    assert logits.shape == (1, 16, lm_zoo.VOCAB)
    for _ in range(2):
        logits = model(mx.argmax(logits[:, -1:], axis=-1), cache=cache)
        assert logits.shape == (1, 1, lm_zoo.VOCAB)
    assert mx.all(mx.isfinite(logits)).item()
    kinds = {type(c).__name__ for c in cache}
    arch = lm_zoo.BY_NAME[name]
    assert ("RotatingKVCache" in kinds) == (lm_zoo.SLIDING in arch.kinds)
    assert (lm_zoo.SSM in arch.kinds) == any(
        type(c).__name__ == "ArraysCache" or type(c).__name__ == "CacheList" for c in cache)


def test_builds_are_reproducible_and_greedy_matches_a_manual_loop():
    a, b = lm_zoo.build("llama"), lm_zoo.build("llama")
    for (ka, va), (kb, vb) in zip(tree_flatten(a.parameters()), tree_flatten(b.parameters())):
        assert ka == kb and mx.array_equal(va, vb).item()

    prompt = lm_zoo.prompt(5)
    tokens = lm_zoo.greedy(a, prompt, 6)
    cache = lm_cache.make_prompt_cache(b)
    logits = b(prompt[None], cache=cache)
    manual = []
    for _ in range(6):
        manual.append(mx.argmax(logits[0, -1]).item())
        logits = b(mx.array([[manual[-1]]]), cache=cache)
    assert tokens == manual
