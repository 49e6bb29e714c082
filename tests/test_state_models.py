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


def _lora_model(bits):
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model = lm_zoo.build("llama")
    if bits:
        nn.quantize(model, group_size=32, bits=bits)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 10.0, "dropout": 0.1,
                                     "keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    mx.eval(model.parameters())
    model.train()
    return model


@pytest.mark.parametrize("bits", (None, 4), ids=("LoRA", "QLoRA"))
def test_a_lora_fine_tuning_step_as_mlx_lm_trains_it(bits):
    """mlx-lm's tuner: a frozen (or 4-bit) base, LoRA adapters with dropout, its masked loss,
    Adam: the whole step optimized follows the plain one, dropout masks included, in two builds."""
    import mlx.optimizers as optim

    runs = []
    for optimized in (False, True):
        model, optimizer = _lora_model(bits), optim.Adam(1e-3)
        step = lm_zoo.training_step(model, optimizer)
        step = mlxtriton.optimize(step) if optimized else step
        tokens = lm_zoo.prompt(9)[None]
        batch, lengths = mx.concatenate([tokens, tokens[:, ::-1]]), mx.array([[0, 8], [0, 6]])
        losses = []
        for i in range(3):
            mx.random.seed(100 + i)
            losses.append(step(batch, lengths))
            mx.eval(losses[-1], model.trainable_parameters(), optimizer.state)
        runs.append((losses, dict(tree_flatten(model.trainable_parameters())), step))
    (want, want_params, _), (got, got_params, fast) = runs
    for a, b in zip(got, want):
        _close(a, b, 1e-5)
    assert want_params.keys() == got_params.keys() and len(want_params) == 8
    for k in want_params:
        _close(got_params[k], want_params[k], 1e-4)
    assert fast.cache_info().builds == 2  # before and after Adam made its state


def _bf16_loss_and_grads(model, forward, x, y):
    loss, grads = nn.value_and_grad(model, lambda m, x, y: nn.losses.cross_entropy(
        forward(x).astype(mx.float32), y, reduction="mean"))(model, x, y)
    return loss.item(), {k: g.astype(mx.float32) for k, g in tree_flatten(grads)}


@pytest.mark.parametrize("interpreted", (False, True), ids=("mlx ops", "kernels"))
@pytest.mark.parametrize("name", ("llama", "gemma3_text", "phi3"))
def test_bfloat16_gradients_are_as_close_to_float32_as_plain_mlx(name, interpreted, monkeypatch):
    """In bfloat16 the kernels round at casts and stores where MLX rounds after every op: the
    optimized loss and gradients are held to the float32 ones, no further than plain MLX's."""
    from mlx.utils import tree_map

    if interpreted:
        monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
        monkeypatch.setenv("MLXTRITON_CHIP", "h200")
    x, y = lm_zoo.prompt(9)[None], lm_zoo.prompt(9, seed=1)[None]
    model = lm_zoo.build(name)
    model.update(tree_map(lambda p: p.astype(mx.bfloat16), model.parameters()))
    reference = lm_zoo.build(name)  # float32, from the same bfloat16 weights
    reference.update(tree_map(lambda p: p.astype(mx.float32), model.parameters()))
    want_loss, want = _bf16_loss_and_grads(reference, reference, x, y)
    plain_loss, plain = _bf16_loss_and_grads(model, model, x, y)
    got_loss, got = _bf16_loss_and_grads(model, mlxtriton.optimize(model), x, y)

    def error(grads):
        return max(float(mx.max(mx.abs(grads[k] - want[k])) / mx.max(mx.abs(want[k])))
                   for k in want if mx.any(want[k] != 0).item())

    tolerance = max(1.5 * abs(plain_loss - want_loss), 2e-3 * abs(want_loss))
    assert abs(got_loss - want_loss) <= tolerance
    assert error(got) <= 1.2 * error(plain) + 0.01


@pytest.mark.parametrize("name", lm_zoo.NAMES)
def test_a_fine_tuning_step_of_every_architecture(name):
    """mlx-lm's fine-tuning step (loss, gradient, SGD) through optimize follows the plain one for
    every architecture of the zoo, in two builds. Mixture-of-experts routers stop the gradient
    of the experts they pick (mx.stop_gradient of an argpartition) and gather at them: the trace
    keeps them stopped for the gradient the step takes, so the gather is not asked for the
    indices' gradient. Where plain mlx-lm's step raises, so does this one."""
    import mlx.optimizers as optim

    tokens = lm_zoo.prompt(17)[None]
    batch, lengths = tokens[:, :16], mx.array([[0, 16]])
    runs = []
    for optimized in (False, True):
        model = lm_zoo.build(name)
        step = lm_zoo.training_step(model, optim.SGD(0.05))
        step = mlxtriton.optimize(step) if optimized else step
        try:
            losses = [step(batch, lengths) for _ in range(2)]
        except Exception as err:  # noqa: BLE001 - compared below
            runs.append(err)
            continue
        runs.append((losses, dict(tree_flatten(model.parameters())), step))
    (want, got) = runs
    if isinstance(want, Exception):  # recurrent_gemma: mlx-lm's Model misses Module's _no_grad
        assert isinstance(got, Exception) and str(got) == str(want), got
        return
    (want, want_params, _), (got, got_params, fast) = want, got
    for a, b in zip(got, want):
        _close(a, b, 1e-5)
    for k in want_params:
        _close(got_params[k], want_params[k], 1e-4)
    assert fast.cache_info().builds == 2  # before and after the optimizer made its state
