"""``mx.checkpoint`` inside an optimized function, against plain MLX: a training step that takes
its gradient itself recomputes each checkpointed call from the call's inputs, as MLX's
checkpoint VJP does (same losses and gradients, the activations freed: peak memory measured);
mlx-lm's ``--grad-checkpoint`` (its tuner's ``grad_checkpoint``) through a whole fine-tuning step;
a gradient taken outside is right and warned about; a function checkpointed before the trace is
a clear error."""

from __future__ import annotations

import gc

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten

import mlxtriton
from mlxtriton.graph.verify import verify
from tests import lm_zoo

PATHS = {"mlx ops": {}, "kernels": {"MLXTRITON_INTERPRET": "1", "MLXTRITON_CHIP": "h200"}}


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def __call__(self, x):
        return x + self.down(nn.gelu(self.up(self.norm(x))))


class Net(nn.Module):
    """Blocks each called through mx.checkpoint (as mlx-lm's tuner calls its layers) or not."""

    def __init__(self, d: int, depth: int, checkpointed: bool):
        super().__init__()
        self.blocks = [Block(d) for _ in range(depth)]
        self.checkpointed = checkpointed

    def __call__(self, x):
        for block in self.blocks:
            if self.checkpointed:
                def call(params, x, block=block):
                    block.update(params)
                    return block(x)

                x = mx.checkpoint(call)(block.trainable_parameters(), x)
            else:
                x = block(x)
        return x


def _step(net: Net):
    loss_and_grad = nn.value_and_grad(net, lambda m, x: (m(x) ** 2).mean())
    return lambda x: loss_and_grad(net, x)


def _net(d: int, depth: int, checkpointed: bool) -> Net:
    mx.random.seed(0)
    net = Net(d, depth, checkpointed)
    mx.eval(net.parameters())
    return net


@pytest.mark.parametrize("path", PATHS)
def test_a_step_through_checkpointed_calls_matches_plain_mlx(path, monkeypatch):
    for k, v in PATHS[path].items():
        monkeypatch.setenv(k, v)
    x = mx.random.normal((8, 16), key=mx.random.key(1))
    expected = _step(_net(16, 3, True))(x)
    step = mlxtriton.optimize(_step(_net(16, 3, True)))
    for _ in range(2):
        loss, grads = step(x)
        np.testing.assert_allclose(np.array(loss), np.array(expected[0]), rtol=1e-5)
        for (name, g), (_, e) in zip(tree_flatten(grads), tree_flatten(expected[1])):
            np.testing.assert_allclose(np.array(g), np.array(e), rtol=1e-4, atol=1e-6, err_msg=name)
    assert step.cache_info().builds == 1


def test_the_gradient_reads_a_recomputation_of_each_call():
    """In the traced step each checkpointed call's gradient reads a copy of the call computed
    from its inputs after its outputs (one Depends each), and no value computed inside it."""
    net, x = _net(16, 3, True), mx.ones((8, 16))
    graph = mlxtriton.trace(_step(net))(x)
    verify(graph)
    counts, plain = graph.primitive_counts(), mlxtriton.trace(_step(_net(16, 3, False)))(x)
    assert counts["Depends"] == 3
    # what each block's gradient reads runs again: its norm, its first product and gelu (the
    # second product's result is the block's output, which the gradient does not read)
    products = lambda c: c["Matmul"] + c.get("AddMM", 0)  # noqa: E731
    assert products(counts) == products(plain.primitive_counts()) + 3


def _peak_bytes(fn, x) -> int:
    mx.eval(fn(x))  # the build, and MLX's own first-call allocations
    gc.collect()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    mx.eval(fn(x))
    return mx.get_peak_memory() - base


def test_checkpointing_through_optimize_frees_the_activations():
    x = mx.random.normal((1024, 128), key=mx.random.key(2))
    plain = _peak_bytes(_step(_net(128, 8, True)), x)
    kept = _peak_bytes(mlxtriton.optimize(_step(_net(128, 8, False))), x)
    freed = _peak_bytes(mlxtriton.optimize(_step(_net(128, 8, True))), x)
    assert freed < 0.8 * kept, (freed, kept)
    assert freed <= 1.25 * plain, (freed, plain)


def test_mlx_lms_grad_checkpoint_fine_tuning_step():
    """mlx-lm's tuner with --grad-checkpoint: every layer of the class called through
    mx.checkpoint; a whole optimized step (loss, gradient, SGD) follows the plain one."""
    from mlx_lm.tuner.trainer import grad_checkpoint

    layer_class = type(lm_zoo.build("llama").layers[0])
    original = layer_class.__call__
    tokens = lm_zoo.prompt(17)[None]
    batch, lengths = tokens[:, :16], mx.array([[0, 16]])

    def run(optimize: bool):
        model = lm_zoo.build("llama")
        step = lm_zoo.training_step(model, optim.SGD(0.1, momentum=0.9))
        fn = mlxtriton.optimize(step) if optimize else step
        losses = [fn(batch, lengths).item() for _ in range(3)]
        return losses, dict(tree_flatten(model.parameters())), fn

    try:
        grad_checkpoint(lm_zoo.build("llama").layers[0])
        expected, expected_params, _ = run(False)
        losses, params, fn = run(True)
    finally:
        layer_class.__call__ = original
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    for name, p in params.items():
        np.testing.assert_allclose(np.array(p), np.array(expected_params[name]), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
    assert fn.cache_info().builds == 2  # the first call makes the optimizer's state


def test_a_gradient_taken_outside_is_right_and_warned_about():
    net, x = _net(16, 2, True), mx.random.normal((4, 16), key=mx.random.key(3))

    def loss(x):
        return (net(x) ** 2).mean()

    fast = mlxtriton.optimize(loss)
    with pytest.warns(mlxtriton.TraceWarning, match="calls mx.checkpoint 2 time.*takes no gradient"):
        got = mx.grad(fast)(x)
    np.testing.assert_allclose(np.array(got), np.array(mx.grad(loss)(x)), rtol=1e-4, atol=1e-6)


def test_a_function_checkpointed_before_the_trace_is_a_clear_error():
    layer = nn.utils.checkpoint(nn.Linear(8, 4))
    with pytest.raises(mlxtriton.TraceError, match="call mx.checkpoint\\(fn\\)\\(...\\) inside"):
        mlxtriton.optimize(layer)(mx.ones((2, 8)))
    # and mx.checkpoint, outside any trace, is MLX's own again
    assert mx.checkpoint.__module__ != "mlxtriton._checkpoint"


def test_nested_calls_and_an_array_passed_twice():
    def inner(a, b):
        return mx.sin(a * b) * a

    def outer(x, w):
        return mx.checkpoint(inner)(mx.tanh(x), w) + mx.checkpoint(inner)(x, x) ** 2

    def loss(x, w):
        return (mx.checkpoint(outer)(x, w) @ w).sum()

    step = mx.value_and_grad(loss, argnums=(0, 1))
    x, w = mx.random.normal((6, 6), key=mx.random.key(4)), mx.random.normal((6, 6))
    graph = mlxtriton.trace(step)(x, w)
    verify(graph)
    assert graph.primitive_counts()["Depends"] == 3
    (value, grads), (expected, expected_grads) = mlxtriton.optimize(step)(x, w), step(x, w)
    np.testing.assert_allclose(np.array(value), np.array(expected), rtol=1e-5)
    for g, e in zip(grads, expected_grads):
        np.testing.assert_allclose(np.array(g), np.array(e), rtol=1e-4, atol=1e-5)


def test_dropout_inside_a_checkpointed_call_is_recomputed_with_its_own_mask():
    """A LoRA step with dropout and --grad-checkpoint: the recomputation reads the random bits
    the forward pass drew, so the gradient is the one without checkpointing. (MLX's own
    checkpoint calls the function again, which draws new masks: its gradient differs.)"""
    from mlx_lm.tuner.trainer import grad_checkpoint

    from tests.test_state_models import _lora_model

    layer_class = type(lm_zoo.build("llama").layers[0])
    original = layer_class.__call__
    tokens = lm_zoo.prompt(9)[None]
    batch, lengths = mx.concatenate([tokens, tokens[:, ::-1]]), mx.array([[0, 8], [0, 6]])

    def run(checkpointed: bool, optimize: bool):
        try:
            if checkpointed:
                grad_checkpoint(lm_zoo.build("llama").layers[0])
            model = _lora_model(None)
            step = lm_zoo.training_step(model, optim.Adam(1e-3))
            step = mlxtriton.optimize(step) if optimize else step
            losses = []
            for i in range(2):
                mx.random.seed(100 + i)
                losses.append(step(batch, lengths).item())
            return losses, dict(tree_flatten(model.trainable_parameters()))
        finally:
            layer_class.__call__ = original

    want, want_params = run(False, False)
    got, got_params = run(True, True)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for name, p in got_params.items():
        np.testing.assert_allclose(np.array(p), np.array(want_params[name]), rtol=1e-4,
                                   atol=1e-5, err_msg=name)
