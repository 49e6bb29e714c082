"""The mlx-lm model zoo through `optimize` with mlx-lm's own cache objects: a prefill and 8
decode steps give the plain model's logits, the caches stay usable by the plain model, and a
training step (mixture-of-experts models included) gives the plain model's loss and gradients."""

from __future__ import annotations

import warnings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxtriton

lm_zoo = pytest.importorskip("tests.lm_zoo")
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

# Every kind of model the zoo has: dense, sliding-window, mixture-of-experts, SSM and hybrid.
NAMES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma3_text", "phi3", "cohere",
         "cohere2", "internlm2", "phi", "granite", "helium", "olmo3", "exaone4", "mixtral",
         "qwen2_moe", "olmoe", "deepseek_v3", "mamba", "mamba2", "nemotron_h", "qwen3_next",
         "falcon_h1")


def _close(a, b, tol=1e-4):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol)


@pytest.mark.parametrize("name", NAMES)
def test_prefill_and_decode_with_mlx_lm_caches(name):
    model = lm_zoo.build(name)
    fast = mlxtriton.optimize(model)
    eager_cache, fast_cache = make_prompt_cache(model), make_prompt_cache(model)
    prompt = lm_zoo.prompt(7)[None]
    with warnings.catch_warnings():
        # mlx-lm's caches keep their offset as a Python int: a build per step (mlxtriton.lm's
        # caches do not); the warning says so.
        warnings.simplefilter("ignore", mlxtriton.RebuildWarning)
        _close(fast(prompt, cache=fast_cache), model(prompt, cache=eager_cache))
        for step in range(8):
            token = mx.array([[step + 3]])
            _close(fast(token, cache=fast_cache), model(token, cache=eager_cache))
    # the cache objects the optimized model filled serve the plain model
    token = mx.array([[5]])
    _close(model(token, cache=fast_cache), model(token, cache=eager_cache))


@pytest.mark.parametrize("name", ("llama", "mixtral", "qwen3_moe", "deepseek_v3", "mamba",
                                  "qwen3_next", "gpt_oss"))
def test_a_training_step_gives_the_plain_loss_and_gradients(name):
    model = lm_zoo.build(name)
    fast = mlxtriton.optimize(model)
    x, y = lm_zoo.prompt(9)[None], lm_zoo.prompt(9, seed=1)[None]

    def plain(m, x, y):
        return nn.losses.cross_entropy(m(x), y, reduction="mean")

    def optimized(m, x, y):
        return nn.losses.cross_entropy(fast(x), y, reduction="mean")

    want_loss, want = nn.value_and_grad(model, plain)(model, x, y)
    got_loss, got = nn.value_and_grad(model, optimized)(model, x, y)
    _close(got_loss, want_loss, 1e-5)
    want, got = dict(tree_flatten(want)), dict(tree_flatten(got))
    assert want.keys() == got.keys()
    for k in want:
        _close(got[k], want[k], 1e-5)
