"""Every mlx.nn layer and loss through `optimize`, against plain MLX: the forward pass in training
and in evaluation mode (two calls, each after seeding: dropout draws plain MLX's masks), the state
a call leaves (BatchNorm's running statistics), and the gradients of a loss with respect to the
parameters and the input. Twice: on this host, where fused regions run as MLX ops, and with the
generated kernels of an H200 run in the NumPy interpreter."""

from __future__ import annotations

import inspect
import warnings

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_map

import mlxtriton

C = 6


def _normal(*shape, scale=1.0):
    return lambda: mx.random.normal(shape) * scale


def _rows(scale=1.0):
    return (_normal(4, C, scale=scale),)


def _transformer_args():
    return (mx.random.normal((2, 5, 8)), mx.random.normal((2, 4, 8)), None,
            nn.MultiHeadAttention.create_additive_causal_mask(4), None)


# name -> (the layer, its arguments); a name past the class's own picks a variant
LAYERS = {
    "ALiBi": (lambda: nn.ALiBi(), (_normal(2, 4, 5, 5),)),
    "AvgPool1d": (lambda: nn.AvgPool1d(2, 2), (_normal(2, 8, C),)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2, 2), (_normal(2, 8, 8, C),)),
    "AvgPool3d": (lambda: nn.AvgPool3d(2, 2), (_normal(2, 4, 4, 4, C),)),
    "MaxPool1d": (lambda: nn.MaxPool1d(3, 2), (_normal(2, 9, C),)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2, 2, padding=1), (_normal(2, 7, 7, C),)),
    "MaxPool3d": (lambda: nn.MaxPool3d(2, 2), (_normal(2, 4, 4, 4, C),)),
    "BatchNorm": (lambda: nn.BatchNorm(C), (_normal(4, 5, C),)),
    "BatchNorm without affine": (lambda: nn.BatchNorm(C, affine=False, momentum=0.3),
                                 (_normal(4, 3, 3, C),)),
    "Bilinear": (lambda: nn.Bilinear(C, 5, 7), (_normal(3, C), _normal(3, 5))),
    "CELU": (lambda: nn.CELU(0.7), _rows()),
    "Conv1d": (lambda: nn.Conv1d(C, 4, 3, padding=1), (_normal(2, 9, C),)),
    "Conv2d": (lambda: nn.Conv2d(C, 4, 3, stride=2, padding=1), (_normal(2, 7, 7, C),)),
    "Conv2d grouped": (lambda: nn.Conv2d(C, 6, 3, padding=1, groups=3), (_normal(2, 5, 5, C),)),
    "Conv3d": (lambda: nn.Conv3d(C, 4, 2), (_normal(1, 4, 4, 4, C),)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(C, 4, 3, stride=2), (_normal(2, 5, C),)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(C, 4, 3, stride=2, padding=1),
                        (_normal(2, 4, 4, C),)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(C, 4, 2, stride=2), (_normal(1, 3, 3, 3, C),)),
    "Dropout": (lambda: nn.Dropout(0.3), (_normal(8, C),)),
    "Dropout2d": (lambda: nn.Dropout2d(0.4), (_normal(2, 4, 4, C),)),
    "Dropout3d": (lambda: nn.Dropout3d(0.4), (_normal(2, 3, 3, 3, C),)),
    "ELU": (lambda: nn.ELU(), _rows()),
    "Embedding": (lambda: nn.Embedding(11, C), (lambda: mx.array([[1, 2, 10], [0, 5, 5]]),)),
    "GELU": (lambda: nn.GELU(), _rows()),
    "GELU fast": (lambda: nn.GELU("fast"), _rows()),
    "GELU precise": (lambda: nn.GELU("precise"), _rows()),
    "GLU": (lambda: nn.GLU(), _rows()),
    "GRU": (lambda: nn.GRU(C, 5), (_normal(2, 7, C),)),
    "GroupNorm": (lambda: nn.GroupNorm(3, C), (_normal(2, 4, 4, C),)),
    "GroupNorm as PyTorch's": (lambda: nn.GroupNorm(2, C, pytorch_compatible=True),
                               (_normal(2, 4, C),)),
    "HardShrink": (lambda: nn.HardShrink(), _rows()),
    "HardTanh": (lambda: nn.HardTanh(), _rows(2.0)),
    "Hardswish": (lambda: nn.Hardswish(), _rows(3.0)),
    "Identity": (lambda: nn.Identity(), _rows()),
    "InstanceNorm": (lambda: nn.InstanceNorm(C, affine=True), (_normal(2, 5, 5, C),)),
    "LSTM": (lambda: nn.LSTM(C, 5), (_normal(2, 7, C),)),
    "LayerNorm": (lambda: nn.LayerNorm(C), _rows()),
    "LayerNorm without bias": (lambda: nn.LayerNorm(C, bias=False), _rows()),
    "LeakyReLU": (lambda: nn.LeakyReLU(0.2), _rows()),
    "Linear": (lambda: nn.Linear(C, 5), _rows()),
    "LogSigmoid": (lambda: nn.LogSigmoid(), _rows(5.0)),
    "LogSoftmax": (lambda: nn.LogSoftmax(), _rows()),
    "Mish": (lambda: nn.Mish(), _rows()),
    "MultiHeadAttention": (lambda: nn.MultiHeadAttention(8, 2),
                           (_normal(2, 5, 8), _normal(2, 6, 8), _normal(2, 6, 8))),
    "PReLU": (lambda: nn.PReLU(), _rows()),
    "QuantizedLinear": (lambda: nn.QuantizedLinear(64, 32, group_size=32), (_normal(3, 64),)),
    "QuantizedEmbedding": (lambda: nn.QuantizedEmbedding(20, 64, group_size=32),
                           (lambda: mx.array([[1, 2, 19]]),)),
    "RMSNorm": (lambda: nn.RMSNorm(C), _rows()),
    "RNN": (lambda: nn.RNN(C, 5), (_normal(2, 7, C),)),
    "ReLU": (lambda: nn.ReLU(), _rows()),
    "ReLU2": (lambda: nn.ReLU2(), _rows()),
    "ReLU6": (lambda: nn.ReLU6(), _rows(5.0)),
    "RoPE": (lambda: nn.RoPE(8), (_normal(2, 3, 5, 8),)),
    "RoPE traditional, partial": (lambda: nn.RoPE(6, traditional=True, base=100),
                                  (_normal(2, 5, 8),)),
    "SELU": (lambda: nn.SELU(), _rows()),
    "SiLU": (lambda: nn.SiLU(), _rows()),
    "Sigmoid": (lambda: nn.Sigmoid(), _rows()),
    "SinusoidalPositionalEncoding": (lambda: nn.SinusoidalPositionalEncoding(8),
                                     (lambda: mx.arange(5).astype(mx.float32),)),
    "Softmax": (lambda: nn.Softmax(), _rows()),
    "Softmin": (lambda: nn.Softmin(), _rows()),
    "Softplus": (lambda: nn.Softplus(), _rows()),
    "Softshrink": (lambda: nn.Softshrink(0.3), _rows()),
    "Softsign": (lambda: nn.Softsign(), _rows()),
    "Step": (lambda: nn.Step(0.1), _rows()),
    "Tanh": (lambda: nn.Tanh(), _rows()),
    "Transformer": (lambda: nn.Transformer(8, 2, 1, 1, 16, dropout=0.0), _transformer_args),
    "TransformerEncoder with dropout": (lambda: nn.TransformerEncoder(2, 8, 2, 16, dropout=0.2),
                                        (_normal(2, 5, 8), lambda: None)),
    "Upsample nearest": (lambda: nn.Upsample(2.0, "nearest"), (_normal(2, 3, 3, C),)),
    "Upsample linear": (lambda: nn.Upsample((2.0, 1.5), "linear"), (_normal(2, 3, 4, C),)),
    "Upsample cubic, corners aligned": (lambda: nn.Upsample(2.0, "cubic", align_corners=True),
                                        (_normal(1, 3, 3, C),)),
    "Sequential": (lambda: nn.Sequential(nn.Linear(C, 8), nn.ReLU(), nn.Dropout(0.5),
                                         nn.Linear(8, 3)), _rows()),
}

# mlx.nn's modules no case above builds, and why
NOT_HERE = {
    "Module": "the base class",
    "TransformerEncoderLayer": "inside Transformer and TransformerEncoder above",
    "TransformerDecoder": "inside Transformer above",
    "TransformerDecoderLayer": "inside Transformer above",
    "QQLinear": "MLX's exporter cannot record QQMatmul: a clear error (test below)",
    "AllToShardedLinear": "needs a distributed group: tests/distributed",
    "ShardedToAllLinear": "needs a distributed group: tests/distributed",
    "QuantizedAllToShardedLinear": "needs a distributed group: tests/distributed",
    "QuantizedShardedToAllLinear": "needs a distributed group: tests/distributed",
    "FullyShardedModule": "needs a distributed group: tests/distributed",
}

PATHS = {"mlx ops": {}, "kernels": {"MLXTRITON_INTERPRET": "1", "MLXTRITON_CHIP": "h200"}}


def _close(got, want, tol):
    got, want = np.array(got), np.array(want)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def _arguments(makers):
    args = makers() if callable(makers) else tuple(m() for m in makers)
    mx.eval([a for a in args if a is not None])
    return args


def test_every_mlx_nn_layer_has_a_case():
    modules = {n for n, c in vars(nn).items() if inspect.isclass(c) and issubclass(c, nn.Module)}
    cased = {n for n in modules for case in LAYERS if case == n or case.startswith(n + " ")}
    assert modules - cased - set(NOT_HERE) == set()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("training", (True, False), ids=("train", "eval"))
@pytest.mark.parametrize("name", LAYERS)
def test_a_layer_matches_plain_mlx(name, training, path, monkeypatch):
    for k, v in PATHS[path].items():
        monkeypatch.setenv(k, v)
    make, makers = LAYERS[name]
    mx.random.seed(3)
    layer, twin = make(), make()
    twin.update(tree_map(lambda p: p, layer.parameters()))
    layer.train(training)
    twin.train(training)
    args = _arguments(makers)
    fast = mlxtriton.optimize(layer)
    for call in range(2):
        mx.random.seed(10 + call)
        want = _first(twin(*args))
        mx.random.seed(10 + call)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mlxtriton.RebuildWarning)
            got = _first(fast(*args))
        _close(got, want, 1e-4)
    # the state the calls left: BatchNorm's running statistics
    for (k, a), (_, b) in zip(tree_flatten(layer.state), tree_flatten(twin.state)):
        if isinstance(b, mx.array):
            _close(a, b, 1e-4)

    def loss(m, *a):
        return (_first(m(*a)) ** 2).sum()

    if tree_flatten(layer.trainable_parameters()):
        mx.random.seed(20)
        want_loss, want_grads = nn.value_and_grad(twin, lambda *a: loss(twin, *a))(*args)
        mx.random.seed(20)
        got_loss, got_grads = nn.value_and_grad(
            layer, mlxtriton.optimize(lambda *a: loss(layer, *a)))(*args)
        _close(got_loss, want_loss, 1e-3)
        for (k, a), (_, b) in zip(tree_flatten(got_grads), tree_flatten(want_grads)):
            _close(a, b, 1e-3)
    floats = [i for i, a in enumerate(args) if a is not None and a.dtype == mx.float32]
    if floats and not name.startswith("Quantized"):
        i = floats[0]

        def through(m):
            def f(x):
                a = list(args)
                a[i] = x
                return loss(m, *a)
            return f

        mx.random.seed(30)
        want = mx.grad(through(twin))(args[i])
        mx.random.seed(30)
        got = mx.grad(mlxtriton.optimize(through(layer)))(args[i])
        _close(got, want, 1e-3)


def _loss_cases():
    L = nn.losses
    mx.random.seed(0)
    n, k = 6, 5
    logits, x, y = (mx.random.normal((n, k)) for _ in range(3))
    targets = mx.random.randint(0, k, (n,))
    probs = mx.softmax(mx.random.normal((n, k)), axis=-1)
    labels = mx.where(mx.random.normal((n,)) > 0, 1.0, -1.0)
    bits = (y > 0).astype(mx.float32)
    return {
        "cross_entropy": (L.cross_entropy, (logits, targets), {}),
        "cross_entropy, label smoothing": (L.cross_entropy, (logits, targets),
                                           {"label_smoothing": 0.1, "reduction": "mean"}),
        "cross_entropy, probabilities": (L.cross_entropy, (logits, probs), {"reduction": "sum"}),
        "cross_entropy, weights": (L.cross_entropy, (logits, targets),
                                   {"weights": mx.arange(n).astype(mx.float32)}),
        "binary_cross_entropy": (L.binary_cross_entropy, (x, bits), {}),
        "binary_cross_entropy, probabilities": (L.binary_cross_entropy, (mx.sigmoid(x), bits),
                                                {"with_logits": False, "reduction": "mean"}),
        "l1_loss": (L.l1_loss, (x, y), {"reduction": "sum"}),
        "mse_loss": (L.mse_loss, (x, y), {}),
        "nll_loss": (L.nll_loss, (nn.log_softmax(logits), targets), {"reduction": "mean"}),
        "gaussian_nll_loss": (L.gaussian_nll_loss, (x, y, mx.abs(y) + 0.1), {"full": True}),
        "kl_div_loss": (L.kl_div_loss, (nn.log_softmax(x), nn.log_softmax(y)),
                        {"reduction": "sum"}),
        "smooth_l1_loss": (L.smooth_l1_loss, (x, y), {"beta": 0.5}),
        "triplet_loss": (L.triplet_loss, (x, y, y * 0.5), {"margin": 0.3, "reduction": "mean"}),
        "hinge_loss": (L.hinge_loss, (x[:, 0], labels), {"reduction": "mean"}),
        "huber_loss": (L.huber_loss, (x, y), {"delta": 0.7}),
        "log_cosh_loss": (L.log_cosh_loss, (x, y), {"reduction": "sum"}),
        "cosine_similarity_loss": (L.cosine_similarity_loss, (x, y), {"reduction": "mean"}),
        "margin_ranking_loss": (L.margin_ranking_loss, (x[:, 0], y[:, 0], labels),
                                {"margin": 0.1}),
    }


LOSSES = _loss_cases()


def test_every_mlx_nn_loss_has_a_case():
    functions = {n for n, f in vars(nn.losses).items() if inspect.isfunction(f)
                 and f.__module__ == nn.losses.__name__ and not n.startswith("_")}
    cased = {case.split(",")[0] for case in LOSSES}
    assert functions - cased == set()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", LOSSES)
def test_a_loss_and_its_gradient_match_plain_mlx(name, path, monkeypatch):
    for k, v in PATHS[path].items():
        monkeypatch.setenv(k, v)
    fn, args, kwargs = LOSSES[name]

    def f(*a):
        return fn(*a, **kwargs).sum()

    _close(mlxtriton.optimize(f)(*args), f(*args), 1e-4)
    _close(mx.grad(mlxtriton.optimize(f))(*args), mx.grad(f)(*args), 1e-4)


@pytest.mark.parametrize("make, primitive", [
    (lambda: nn.QQLinear(64, 32), "QQMatmul"),
    (lambda: nn.utils.checkpoint(nn.Linear(64, 32)), "CustomTransforms"),
], ids=["QQLinear", "nn.utils.checkpoint"])
def test_what_mlx_cannot_export_is_a_clear_error(make, primitive):
    with pytest.raises(mlxtriton.TraceError, match=f"it calls MLX primitive {primitive}, which"):
        mlxtriton.optimize(make())(mx.random.normal((3, 64)))


# ---- whole training steps of small models built from these layers ---------------------------
class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm(c)

    def __call__(self, x):
        y = nn.relu(self.b1(self.c1(x)))
        return nn.relu(x + self.b2(self.c2(y)))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.block = nn.Conv2d(3, 8, 3, padding=1), ResBlock(8)
        self.pool, self.drop = nn.MaxPool2d(2, 2), nn.Dropout(0.25)
        self.head = nn.Linear(8 * 4 * 4, 10)

    def __call__(self, x):
        x = self.pool(self.block(nn.silu(self.stem(x))))
        return self.head(self.drop(x.reshape(x.shape[0], -1)))


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc, self.mu, self.lv = nn.Linear(16, 32), nn.Linear(32, 4), nn.Linear(32, 4)
        self.dec = nn.Linear(4, 16)

    def __call__(self, x):
        h = nn.relu(self.enc(x))
        mu, lv = self.mu(h), self.lv(h)
        z = mu + mx.exp(0.5 * lv) * mx.random.normal(mu.shape)
        return self.dec(z), mu, lv


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch, self.pos = nn.Conv2d(3, 16, 4, stride=4), mx.zeros((1, 4, 16))
        self.enc = nn.TransformerEncoder(2, 16, 2, 32, dropout=0.1, norm_first=True)
        self.head = nn.Linear(16, 10)

    def __call__(self, x):
        p = self.patch(x)
        p = p.reshape(p.shape[0], -1, p.shape[-1]) + self.pos
        return self.head(self.enc(p, None).mean(axis=1))


class Denoiser(nn.Module):
    """A diffusion U-Net's pieces: group norm, SiLU, a time embedding, upsampling."""

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(4, 8, pytorch_compatible=True)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.up, self.out = nn.Upsample(2.0, "nearest"), nn.Conv2d(8, 3, 3, padding=1)
        self.time = nn.Linear(1, 8)

    def __call__(self, x, t):
        h = self.conv(nn.silu(self.norm(x))) + self.time(t)[:, None, None, :]
        return self.out(self.up(h))


def _classify(m, x, y):
    return nn.losses.cross_entropy(m(x), y, reduction="mean")


def _elbo(m, x, y):
    r, mu, lv = m(x)
    return nn.losses.mse_loss(r, x, reduction="sum") - 0.5 * mx.sum(1 + lv - mu ** 2 - mx.exp(lv))


def _denoise(m, x, y):
    t = mx.random.uniform(shape=(x.shape[0], 1))
    noise = mx.random.normal((x.shape[0], 2 * x.shape[1], 2 * x.shape[2], 3))
    return nn.losses.mse_loss(m(x, t), noise)


MODELS = {
    "CNN with batch norm and dropout": (CNN, _classify, lambda: (mx.random.normal((4, 8, 8, 3)),
                                                                mx.array([1, 2, 3, 4]))),
    "VAE, reparameterised": (VAE, _elbo, lambda: (mx.random.normal((8, 16)), None)),
    "ViT with dropout": (ViT, _classify, lambda: (mx.random.normal((2, 8, 8, 3)),
                                                  mx.array([1, 2]))),
    "denoiser, random times and noise": (Denoiser, _denoise,
                                         lambda: (mx.random.normal((2, 4, 4, 8)), None)),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", MODELS)
def test_a_whole_training_step_follows_plain_mlx(name, path, monkeypatch):
    """Loss, backward and SGD with momentum and weight decay in one optimized step: its losses,
    the parameters and BatchNorm statistics it leaves, the random numbers it draws, two builds."""
    for k, v in PATHS[path].items():
        monkeypatch.setenv(k, v)
    make, loss, data = MODELS[name]
    runs = []
    for optimized in (False, True):
        mx.random.seed(0)
        model = make()
        mx.eval(model.parameters())
        optimizer = optim.SGD(1e-2, momentum=0.9, weight_decay=1e-4)
        loss_and_grad = nn.value_and_grad(model, loss)

        def step(x, y):
            value, grads = loss_and_grad(model, x, y)
            optimizer.update(model, grads)
            return value

        step = mlxtriton.optimize(step) if optimized else step
        mx.random.seed(1)
        x, y = data()
        losses = []
        for i in range(3):
            mx.random.seed(50 + i)
            losses.append(step(x, y))
            mx.eval(losses[-1], model.state, optimizer.state)
        runs.append((losses, tree_flatten(model.state), step))
    (want, want_state, _), (got, got_state, fast) = runs
    for a, b in zip(got, want):
        _close(a, b, 1e-4)
    for (k, a), (_, b) in zip(got_state, want_state):
        _close(a, b, 1e-4)
    assert fast.cache_info().builds == 2  # before and after SGD made its state
