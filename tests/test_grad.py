"""MLX's transformations of optimised functions (issue 6): ``mx.grad`` / ``mx.vjp`` / ``mx.jvp`` /
``mx.vmap`` of `optimize`d and ``@kernel`` functions against the JAX oracle (``jax.vjp`` /
``jax.jvp`` of the oracle evaluation of the unoptimised graph), over shapes and dtypes, with the
forward on MLX's CPU ops and on the generated kernels (NumPy interpreter); ``nn.value_and_grad``
and an ``mlx.optimizers`` loop on a tiny transformer give the losses of the plain model and never
retrace."""

from __future__ import annotations

import contextlib
import os

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph import dtypes
from mlxtriton.graph.evaluate import run
from mlxtriton.graph.evaluate_mlx import MLX_RULES
from mlxtriton.graph.fused import body_of
from mlxtriton.runtime import compiled as compiled_module
from mlxtriton.runtime.autodiff import FUSED_BACKWARD_ENV, stop_shift_gradients, vjp_function
from mlxtriton.runtime.launch import INTERPRET_ENV
from tests.strategies import programs

jax = pytest.importorskip("jax")


def _floating(a: mx.array) -> bool:
    return mx.issubdtype(a.dtype, mx.floating)


def _listed(out) -> list:
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ---- the kernel families: fn, and its arguments for a (rows, cols) shape and dtype ------------

def _normal(shape, dtype, key):
    return (mx.random.normal(shape, key=key) * 2).astype(dtype)


FAMILIES = {
    "softmax": (lambda x: mx.softmax(x, axis=-1), "x"),
    "log_softmax": (lambda x: nn.log_softmax(x, axis=-1), "x"),
    "logsumexp": (lambda x: mx.logsumexp(x, axis=-1), "x"),
    "layer_norm": (lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), "xwb"),
    "rms_norm": (lambda x, w: mx.fast.rms_norm(x, w, 1e-5), "xw"),
    "rms_norm_silu_gate": (lambda x, w, g: mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g), "xwg"),
    "cross_entropy": (lambda x, labels: nn.losses.cross_entropy(x, labels, reduction="mean"), "xl"),
    "pointwise": (lambda x, g: mx.tanh(x) * mx.exp(-g * g) + x / (1.0 + mx.abs(g)) * 0.5, "xg"),
}


def _arguments(spec: str, rows: int, cols: int, dtype, seed: int = 0) -> tuple:
    keys = mx.random.split(mx.random.key(seed), len(spec))
    make = {
        "x": lambda k: _normal((rows, cols), dtype, k),
        "g": lambda k: _normal((rows, cols), dtype, k),
        "w": lambda k: (1.0 + 0.3 * mx.random.normal((cols,), key=k)).astype(dtype),
        "b": lambda k: _normal((cols,), dtype, k),
        "l": lambda k: mx.random.randint(0, cols, (rows,), key=k),
    }
    return tuple(make[c](k) for c, k in zip(spec, keys))


# ---- the oracle: JAX's transformations of the unoptimised graph ---------------------------------

def _oracle_function(fn, args):
    """The unoptimised graph as a JAX function of the inexact arguments (the others closed over)."""
    from mlxtriton.graph.evaluate_jax import jax_rules, to_jax

    graph = mlxtriton.trace(fn)(*args)
    rules = jax_rules()
    flat = [to_jax(a) for a in args]
    inexact = [i for i, a in enumerate(args) if _floating(a)]

    def f(*values):
        full = list(flat)
        for i, v in zip(inexact, values):
            full[i] = v
        return run(graph, full, rules, to_jax)

    return f, [flat[i] for i in inexact]


def oracle_vjp(fn, args, cotangents):
    """Outputs and cotangents of the inexact arguments, by jax.vjp (jitted whole: one XLA compile
    per case instead of one per equation)."""
    from mlxtriton.graph.evaluate_jax import from_jax, to_jax

    f, primals = _oracle_function(fn, args)

    @jax.jit
    def vjp(primals, cotangents):
        outs, pullback = jax.vjp(f, *primals)
        return outs, pullback(cotangents)

    outs, grads = vjp(primals, [to_jax(c) for c in cotangents])
    return [from_jax(o) for o in outs], [from_jax(g) for g in grads]


def oracle_jvp(fn, args, tangents):
    from mlxtriton.graph.evaluate_jax import from_jax, to_jax

    f, primals = _oracle_function(fn, args)
    outs, tans = jax.jit(lambda p, t: jax.jvp(f, tuple(p), tuple(t)))(primals, [to_jax(t) for t in tangents])
    return [from_jax(o) for o in outs], [from_jax(t) for t in tans]


def _of_inexact(fn, args):
    """``fn`` as a function of its inexact arguments alone (the others fixed), and their values."""
    inexact = [i for i, a in enumerate(args) if _floating(a)]

    def f(*values):
        full = list(args)
        for i, v in zip(inexact, values):
            full[i] = v
        return _listed(fn(*full))

    return f, [args[i] for i in inexact]


def mlx_vjp(fn, args, cotangents):
    """``mx.vjp`` of ``fn`` with respect to its inexact arguments."""
    return mx.vjp(*_of_inexact(fn, args), cotangents)


def mlx_jvp(fn, args, tangents):
    return mx.jvp(*_of_inexact(fn, args), tangents)


# Tolerances relative to the largest magnitude of the expected value: gradients of row
# reductions sum a row's worth of rounding; in half precision the oracle (f32 internally for
# transcendental ops) and MLX round intermediate results at different points.
TOL = {mx.float32: 2e-4, mx.float16: 2e-2, mx.bfloat16: 6e-2}


def assert_close(got, want, dtype):
    got, want = _listed(got), _listed(want)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = np.asarray(w, dtype=np.float32)
        g = np.array(g.astype(mx.float32)) if isinstance(g, mx.array) else np.asarray(g, np.float32)
        assert g.shape == w.shape
        scale = max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
        np.testing.assert_allclose(g, w, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@contextlib.contextmanager
def route(name: str):
    """"cpu": fused regions run as MLX ops; "kernels": the generated kernels run (NumPy
    interpreter of the kernel IR), as on a GPU; "fused_backward": and their VJPs are generated
    kernels too (MLXTRITON_FUSED_BACKWARD)."""
    wanted = {INTERPRET_ENV: "0" if name == "cpu" else "1",
              FUSED_BACKWARD_ENV: "1" if name == "fused_backward" else "0"}
    old = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


DTYPES = st.sampled_from([mx.float32, mx.float16, mx.bfloat16])
ROWS = st.sampled_from([3, 1, 8, 17])
COLS = st.sampled_from([33, 1, 8, 100, 257])


ROUTES = ("cpu", "kernels", "fused_backward")


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=3)
@given(rows=ROWS, cols=COLS, dtype=DTYPES, seed=st.integers(0, 3))
def test_vjp_of_every_family_matches_the_oracle(family, rows, cols, dtype, seed):
    fn, spec = FAMILIES[family]
    args = _arguments(spec, rows, cols, dtype, seed)
    out_shapes = [o.shape for o in _listed(fn(*args))]
    keys = mx.random.split(mx.random.key(seed + 100), len(out_shapes))
    cotangents = [mx.random.normal(s, key=k).astype(dtype) for s, k in zip(out_shapes, keys)]
    want_outs, want_grads = oracle_vjp(fn, args, cotangents)
    for name in ROUTES:
        with route(name):
            f = mlxtriton.optimize(fn, chip="m3")
            outs, grads = mlx_vjp(f, args, cotangents)
        assert_close(outs, want_outs, dtype)
        assert_close(grads, want_grads, dtype)
        for g, a in zip(grads, [a for a in args if _floating(a)]):
            assert g.dtype == a.dtype and g.shape == a.shape


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=1)
@given(rows=ROWS, cols=COLS, seed=st.integers(0, 3))
def test_jvp_of_every_family_matches_the_oracle(family, rows, cols, seed):
    fn, spec = FAMILIES[family]
    args = _arguments(spec, rows, cols, mx.float32, seed)
    keys = mx.random.split(mx.random.key(seed + 200), len(args))
    tangents = [mx.random.normal(a.shape, key=k) for a, k in zip(args, keys) if _floating(a)]
    want_outs, want_tans = oracle_jvp(fn, args, tangents)
    for name in ROUTES:
        with route(name):
            f = mlxtriton.optimize(fn, chip="m3")
            outs, tans = mlx_jvp(f, args, tangents)
        assert_close(outs, want_outs, mx.float32)
        assert_close(tans, want_tans, mx.float32)


# ---- pattern rewrites: model code the patterns stage turns into MLX fast ops ---------------------

def _rope_tables(d: int, length: int):
    inv = 1.0 / (10000.0 ** (mx.arange(0, d, 2).astype(mx.float32) / d))
    theta = mx.arange(length).astype(mx.float32)[:, None] * inv[None]
    return mx.cos(theta), mx.sin(theta)


COS, SIN = _rope_tables(16, 6)
CAUSAL = examples.causal_mask(6)


def _rope(x):
    x1, x2 = x[..., :8], x[..., 8:]
    return mx.concatenate([x1 * COS - x2 * SIN, x1 * SIN + x2 * COS], axis=-1)


def _attention(q, k, v):
    return mx.softmax((q * 0.25) @ k.transpose(0, 1, 3, 2) + CAUSAL, axis=-1, precise=True) @ v


PATTERNS = {  # name: (fn, argument shapes, the primitive the rewrite produces)
    "rms_norm": (lambda x, w: x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + 1e-6) * w,
                 [(3, 6, 32), (32,)], "RMSNorm"),
    "layer_norm": (lambda x, w, b: (x - mx.mean(x, axis=-1, keepdims=True))
                   * mx.rsqrt(mx.var(x, axis=-1, keepdims=True) + 1e-5) * w + b,
                   [(3, 6, 32), (32,), (32,)], "LayerNorm"),
    "softmax": (lambda x: (lambda e: e / mx.sum(e, axis=-1, keepdims=True))(
                    mx.exp(x - mx.max(x, axis=-1, keepdims=True))), [(5, 40)], "Softmax"),
    "rope": (_rope, [(1, 2, 6, 16)], "RoPE"),
    "attention": (_attention, [(1, 4, 6, 16)] * 3, "ScaledDotProductAttention"),
}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_vjp_through_pattern_rewrites_matches_the_oracle(name):
    fn, shapes, primitive = PATTERNS[name]
    keys = mx.random.split(mx.random.key(7), len(shapes) + 1)
    args = tuple(mx.random.normal(s, key=k) for s, k in zip(shapes, keys))
    f = mlxtriton.optimize(fn, chip="m3")
    rewritten = mlxtriton.rewrite(fn, chip="m3")  # the rewrite alone, nothing fused around it
    assert primitive in rewritten.graph(*args).primitive_counts()
    out = fn(*args)
    cotangents = [mx.random.normal(out.shape, key=keys[-1])]
    want_outs, want_grads = oracle_vjp(fn, args, cotangents)
    for g in (f, rewritten):
        outs, grads = mlx_vjp(g, args, cotangents)
        assert_close(outs, want_outs, mx.float32)
        assert_close(grads, want_grads, mx.float32)


# ---- random programs: the custom rules on any graph equal MLX's own transformations ----------

@settings(max_examples=15)
@given(programs(max_steps=14))
def test_vjp_of_random_programs_equals_mlx(case):
    fn, args = case
    outs = _listed(fn(*args))
    cotangents = [mx.random.normal(o.shape, key=mx.random.key(i)).astype(o.dtype) if _floating(o)
                  else mx.zeros_like(o) for i, o in enumerate(outs)]
    try:
        want = mlx_vjp(fn, args, cotangents)
        mx.eval(want)
    except ValueError:  # a primitive MLX cannot differentiate: nothing to compare with
        return
    got = mlx_vjp(mlxtriton.optimize(fn, chip="m3"), args, cotangents)
    for g, w in zip(got[0] + got[1], want[0] + want[1]):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)),
                                   rtol=1e-2 if w.dtype in (mx.float16, mx.bfloat16) else 1e-5,
                                   atol=1e-2 if w.dtype in (mx.float16, mx.bfloat16) else 1e-5)


# ---- the entry points users call -----------------------------------------------------------------

def rms_gate(x, w):
    return mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x)


@pytest.mark.parametrize("route_name", ROUTES)
def test_grad_value_and_grad_and_second_order(route_name):
    x, w = _arguments("xw", 4, 64, mx.float32)
    with route(route_name):
        for f in (mlxtriton.optimize(rms_gate, chip="m3"), mlxtriton.kernel(rms_gate, chip="m3")):
            def loss(fn):
                return lambda x, w: (fn(x, w) * mx.cos(x)).sum()

            assert_close(mx.grad(loss(f), argnums=(0, 1))(x, w),
                         mx.grad(loss(rms_gate), argnums=(0, 1))(x, w), mx.float32)
            (v, g), (v0, g0) = (mx.value_and_grad(loss(h))(x, w) for h in (f, rms_gate))
            assert_close([v, g], [v0, g0], mx.float32)

            def second(fn):  # d/dw of a function of d/dx
                return mx.grad(lambda x, w: (mx.grad(loss(fn))(x, w) ** 2).sum(), argnums=1)(x, w)

            assert_close(second(f), second(rms_gate), mx.float32)


def _scaled_softmax(x, counts):
    return mx.softmax(x * counts.astype(x.dtype), axis=-1)


@pytest.mark.parametrize("route_name", ROUTES)
def test_integer_arguments(route_name):
    """Gradients with respect to the floating arguments next to integer ones (labels, counts);
    with respect to an integer argument, integer zeros, as MLX gives."""
    x, _ = _arguments("xg", 5, 12, mx.float32)
    cases = [(_scaled_softmax, (x, mx.arange(12))), (FAMILIES["cross_entropy"][0], (x, mx.arange(5)))]
    with route(route_name):
        for fn, args in cases:
            f = mlxtriton.optimize(fn, chip="m3")
            got, want = (mx.grad(lambda *a: (g(*a) * mx.cos(x)).sum())(*args) for g in (f, fn))
            assert_close(got, want, mx.float32)
        f = mlxtriton.optimize(_scaled_softmax, chip="m3")
        _, g_counts = mx.grad(lambda *a: (f(*a) * mx.cos(x)).sum(), argnums=(0, 1))(*cases[0][1])
    assert g_counts.dtype == mx.int32 and not g_counts.any().item()


def _picked_and_compared(a, b):
    picked = mx.take_along_axis(a, mx.argmax(a, axis=0, keepdims=True), axis=0)
    return a + 0.0, mx.min(picked != b, keepdims=True)


@pytest.mark.parametrize("route_name", ROUTES)
def test_a_region_with_a_bool_output_is_differentiated_as_mlx_does(route_name):
    """One region computes a float output and a bool one (a comparison of what an argmax picked):
    its VJP leaves the bool output out, as MLX's autodiff never goes down the path to it (where
    the gather would be asked for its indices' gradient)."""
    a, b = mx.array([0.3, -1.0, 2.0]), mx.array([5.0])
    with route(route_name):
        f = mlxtriton.optimize(_picked_and_compared, chip="h200")
        got, want = (mx.grad(lambda *x: (g(*x)[0] * mx.cos(a)).sum())(a, b)
                     for g in (f, _picked_and_compared))
    assert_close(got, want, mx.float32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_vmap_on_the_cpu(family):
    """On MLX's CPU backend fused regions run as MLX ops, which MLX batches. (MLX cannot batch a
    generated kernel: where kernels launch, optimise the batched function instead, next test.)"""
    fn, spec = FAMILIES[family]
    args = _arguments(spec, 3, 16, mx.float32)
    batched = tuple(mx.stack([a, a + 1 if _floating(a) else a]) for a in args)
    f = mlxtriton.optimize(fn, chip="m3")
    assert_close(mx.vmap(f)(*batched), mx.vmap(fn)(*batched), mx.float32)
    in_axes = (0,) + (None,) * (len(args) - 1)
    assert_close(mx.vmap(f, in_axes=in_axes)(batched[0], *args[1:]),
                 mx.vmap(fn, in_axes=in_axes)(batched[0], *args[1:]), mx.float32)


def test_optimizing_a_vmapped_function_gives_batched_kernels():
    x, w = _arguments("xw", 6, 64, mx.float32)
    xs = mx.stack([x, 2 * x, -x])
    vfn = mx.vmap(rms_gate, in_axes=(0, None))
    with route("kernels"):
        f = mlxtriton.optimize(vfn, chip="m3")
        assert len(f.lower(xs, w)) >= 1  # generated kernels over the batched shapes
        assert_close(f(xs, w), vfn(xs, w), mx.float32)
        assert_close(mx.grad(lambda x, w: f(x, w).sum(), argnums=(0, 1))(xs, w),
                     mx.grad(lambda x, w: vfn(x, w).sum(), argnums=(0, 1))(xs, w), mx.float32)


def test_transformations_never_retrace(monkeypatch):
    traces = []
    original = compiled_module.trace_call
    monkeypatch.setattr(compiled_module, "trace_call", lambda *a, **k: traces.append(1) or original(*a, **k))
    x, w = _arguments("xw", 4, 32, mx.float32)
    f = mlxtriton.optimize(rms_gate, chip="m3")
    for _ in range(3):
        mx.eval(f(x, w), mx.grad(lambda x: f(x, w).sum())(x), mx.jvp(lambda x: f(x, w), [x], [x]),
                mx.vmap(f, in_axes=(0, None))(mx.stack([x, x]), w))
    assert len(traces) == 1


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_backward_traces_each_region_vjp_once(family, monkeypatch):
    """With MLXTRITON_FUSED_BACKWARD each region's VJP is traced and optimised once (then cached),
    on the first gradient, except a pointwise region's (mx.compile of MLX's VJP fuses it) and a
    region whose forward saves its statistics (its backward is a graph already: log-softmax);
    with MLXTRITON_FUSED_BACKWARD=0 MLX's VJP is compiled and nothing more is traced."""
    traces, saving = [], []
    original = compiled_module.trace_call
    monkeypatch.setattr(compiled_module, "trace_call", lambda *a, **k: traces.append(1) or original(*a, **k))
    real_saving = compiled_module.differentiable_saving
    monkeypatch.setattr(compiled_module, "differentiable_saving",
                        lambda *a: saving.append(1) or real_saving(*a))
    fn, spec = FAMILIES[family]
    args = _arguments(spec, 4, 16, mx.float32)
    argnums = tuple(i for i, a in enumerate(args) if _floating(a))
    for name, extra in (("kernels", 0), ("fused_backward", None)):
        traces.clear()
        with route(name):
            f = mlxtriton.optimize(fn, chip="m3")
            regions = sum(e.primitive == "Fused" and e.params["kind"] != "pointwise"
                          for e in f.graph(*args).eqns)
            traces.clear()
            for _ in range(2):
                mx.eval(mx.grad(lambda *a: f(*a).sum(), argnums=argnums)(*args))
        assert len(traces) == 1 + (regions - len(saving) if extra is None else extra)
    assert bool(saving) == (family == "log_softmax")


# ---- modules: nn.value_and_grad and an optimizer loop --------------------------------------------

class TinyLM(nn.Module):
    """Embedding -> Llama block -> RMSNorm -> vocabulary head."""

    def __init__(self, vocab: int = 40):
        super().__init__()
        cfg = examples.LlamaConfig(dims=32, n_heads=4, n_kv_heads=2, hidden_dims=64)
        self.embed = nn.Embedding(vocab, cfg.dims)
        self.block = examples.LlamaBlock(cfg)
        self.norm = nn.RMSNorm(cfg.dims)
        self.head = nn.Linear(cfg.dims, vocab, bias=False)

    def __call__(self, tokens):
        return self.head(self.norm(self.block(self.embed(tokens))))


def _train(optimized: bool, steps: int = 4, compile_step: bool = False, chip: str = "m3",
           after_first_step=lambda: None):
    mx.random.seed(0)  # parameters are drawn when the module is built
    model = examples.init_eval(TinyLM())
    forward = mlxtriton.optimize(model, chip=chip) if optimized else model

    def loss_fn(tokens, targets):
        logits = forward(tokens)
        return nn.losses.cross_entropy(logits, targets, reduction="mean")

    loss_and_grad = nn.value_and_grad(model, loss_fn)
    optimizer = optim.AdamW(learning_rate=1e-2)

    def step(tokens, targets):
        loss, grads = loss_and_grad(tokens, targets)
        optimizer.update(model, grads)
        return loss

    if compile_step:
        state = [model.state, optimizer.state]
        step = mx.compile(step, inputs=state, outputs=state)
    losses = []
    tokens = mx.random.randint(0, 40, (2, 8), key=mx.random.key(1))  # one batch, learnt by heart
    for _ in range(steps):
        loss = step(tokens, mx.roll(tokens, -1, axis=1))
        mx.eval(loss, model.parameters(), optimizer.state)
        losses.append(loss.item())
        if len(losses) == 1:
            after_first_step()
    return losses, model


@pytest.mark.parametrize("variant", ["cpu", "kernels", "fused_backward", "compiled_step"])
def test_training_a_tiny_transformer_matches_and_never_retraces(variant, monkeypatch):
    traces = []
    original = compiled_module.trace_call
    monkeypatch.setattr(compiled_module, "trace_call", lambda *a, **k: traces.append(1) or original(*a, **k))
    compile_step = variant == "compiled_step"
    want, plain = _train(False, compile_step=compile_step)
    assert not traces
    first = []
    with route("cpu" if compile_step else variant):
        got, trained = _train(True, compile_step=compile_step, after_first_step=lambda: first.append(len(traces)))
    # the first step traced (the model; with fused backward also its regions' VJPs), once
    assert first[0] == 1 or (variant == "fused_backward" and first[0] > 1)
    assert len(traces) == first[0]  # new weights never retrace
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert want[-1] < want[0]  # it learns
    # Adam divides by sqrt(v): a gradient entry near zero amplifies the kernels' rounding
    for (_, a), (_, b) in zip(nn.utils.tree_flatten(trained.parameters()),
                              nn.utils.tree_flatten(plain.parameters())):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-3, atol=1e-4)


def test_module_gradients_flow_to_the_parameters():
    mx.random.seed(0)
    model = examples.init_eval(TinyLM())
    tokens = mx.random.randint(0, 40, (2, 8), key=mx.random.key(3))
    forward = mlxtriton.optimize(model, chip="m3")
    grads = [nn.value_and_grad(model, lambda t: fn(t).square().mean())(tokens)[1]
             for fn in (forward, model)]
    got, want = (nn.utils.tree_flatten(g) for g in grads)
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, a), (_, b) in zip(got, want):
        assert a.any().item() or not b.any().item()
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)


# Kernels a region's backward becomes (MLXTRITON_FUSED_BACKWARD), for the CUDA target: row
# families one row kernel; norms also a column sum per weight / bias; cross-entropy one kernel,
# the labels' one-hot a compare inside it (no MLX scatter: patterns.cleanups.one_hot_scatter).
BACKWARD_KERNELS = {"softmax": 1, "log_softmax": 1, "logsumexp": 1, "pointwise": 1, "rms_norm": 2,
                    "rms_norm_silu_gate": 2, "layer_norm": 3, "cross_entropy": 1}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_region_backward_kernels(family):
    fn, spec = FAMILIES[family]
    args = _arguments(spec, 64, 4096, mx.float32)
    graph = mlxtriton.optimize(fn, chip="h200").graph(*args)
    region = max((e for e in graph.eqns if e.primitive == "Fused"), key=lambda e: len(body_of(e).eqns))
    body = body_of(region)
    primals = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.inputs]
    cotangents = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.outputs]
    backward = mlxtriton.optimize(vjp_function(body), chip="h200")
    assert len(backward.trace(primals, cotangents).lower("cuda")) == BACKWARD_KERNELS[family]
    assert "ScatterAxis" not in backward.graph(primals, cotangents).primitive_counts()


# ---- rows too long for registers: the forward saves its statistics for the backward ------------

def _row_reductions(graph) -> int:
    return sum(e.primitive in ("Reduce", "LogSumExp", "Softmax") for e in graph.eqns)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_saved_statistics_replace_the_backwards_recomputation(family):
    """The backward with saved statistics reduces the row less often than MLX's VJP of the
    region, which recomputes the forward's reductions; and gives the same cotangents."""
    from mlxtriton.runtime.autodiff import saved_statistics
    from mlxtriton.trace import trace_call

    fn, spec = FAMILIES[family]
    args = _arguments(spec, 4, 300, mx.float32)
    graph = mlxtriton.optimize(fn, chip="h200").graph(*args)
    region = max((e for e in graph.eqns if e.primitive == "Fused"), key=lambda e: len(body_of(e).eqns))
    body = body_of(region)
    plan = saved_statistics(body, 4)
    if family == "pointwise":
        assert plan is None
        return
    assert plan is not None and (plan.count or plan.outputs)
    primals = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.inputs]
    cotangents = [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body.outputs]
    recomputing = trace_call(vjp_function(body), (primals, cotangents), {}).graph
    assert _row_reductions(plan.backward) < _row_reductions(recomputing)
    flat = [a for a in args]
    outs = run(plan.forward, flat, MLX_RULES)
    cots = [mx.random.normal(v.shape, key=mx.random.key(3)) for v in body.outputs]
    given = [outs[i] for i in plan.outputs] + outs[len(body.outputs):]
    got = run(plan.backward, [*flat, *given, *cots], MLX_RULES)
    want = vjp_function(body)(flat, cots)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"pointwise"}))
def test_rows_too_long_for_registers_take_the_saving_route(family, monkeypatch):
    """On the H200 a float32 row of 40000 does not fit the registers of 1024 threads: the
    forward kernel saves its statistics and the generated backward reads them (kernels run in
    the interpreter), matching the JAX oracle."""
    plans = []
    real = compiled_module.saved_statistics
    monkeypatch.setattr(compiled_module, "saved_statistics",
                        lambda *a: plans.append(real(*a)) or plans[-1])
    fn, spec = FAMILIES[family]
    args = _arguments(spec, 2, 40000, mx.float32)
    cotangents = [mx.random.normal(o.shape, key=mx.random.key(7)) for o in _listed(fn(*args))]
    want_outs, want_grads = oracle_vjp(fn, args, cotangents)
    with route("fused_backward"):
        outs, grads = mlx_vjp(mlxtriton.optimize(fn, chip="h200"), args, cotangents)
    assert any(p is not None for p in plans)
    assert_close(outs, want_outs, mx.float32)
    assert_close(grads, want_grads, mx.float32)


def _fused_backward_matches_float32_oracle(fn, args, dtype) -> None:
    """Outputs and cotangents of ``optimize(fn)`` on the H200 with generated backward kernels
    (run in the interpreter) against the JAX oracle in float32 on the same values: JAX's own
    bf16 log-softmax gradient is off by up to 5 where a row's largest elements meet a
    cotangent row sum of ~200."""
    cotangents = [mx.random.normal(o.shape, key=mx.random.key(7)).astype(o.dtype)
                  for o in _listed(fn(*args))]
    wide = lambda xs: [a.astype(mx.float32) if a.dtype == mx.bfloat16 else a for a in xs]  # noqa: E731
    want_outs, want_grads = oracle_vjp(fn, wide(args), wide(cotangents))
    with route("fused_backward"):
        outs, grads = mlx_vjp(mlxtriton.optimize(fn, chip="h200"), args, cotangents)
    assert_close(outs, want_outs, dtype)
    assert_close(grads, want_grads, dtype)


@pytest.mark.parametrize("family", ["cross_entropy", "log_softmax", "logsumexp"])
def test_a_half_logsumexp_is_saved_in_float32(family, monkeypatch):
    """A bfloat16 logsumexp's forward saves it in float32 (the kernel's accumulator, before
    rounding), so the backward rebuilds ``softmax(x)`` as ``exp(x - lse)`` without reducing the
    row again; a bfloat16 one could not (rounded, it moves exp(x - lse) by up to 6%). Through
    the saving route on the H200 (bf16 rows of 40000 miss the registers; interpreter), the
    gradients match the JAX oracle."""
    from mlxtriton.runtime.autodiff import saved_statistics

    fn, spec = FAMILIES[family]
    args = _arguments(spec, 4, 300, mx.bfloat16)
    graph = mlxtriton.optimize(fn, chip="h200").graph(*args)
    region = max((e for e in graph.eqns if e.primitive == "Fused"), key=lambda e: len(body_of(e).eqns))
    plan = saved_statistics(body_of(region), 4)
    assert "float32" in [v.dtype for v in plan.forward.outputs]
    counts = plan.backward.primitive_counts()
    assert counts.get("LogSumExp", 0) == counts.get("Softmax", 0) == 0
    # only log-softmax reduces in its backward: the cotangent's row sum, never x's
    assert counts.get("Reduce", 0) == (family == "log_softmax")

    plans = []
    monkeypatch.setattr(compiled_module, "saved_statistics",
                        lambda *a: plans.append(saved_statistics(*a)) or plans[-1])
    _fused_backward_matches_float32_oracle(fn, _arguments(spec, 2, 40000, mx.bfloat16), mx.bfloat16)
    assert any(p is not None for p in plans)


@pytest.mark.parametrize("family,dtype,saves", [
    ("log_softmax", mx.float32, True), ("log_softmax", mx.bfloat16, True),
    ("cross_entropy", mx.bfloat16, False), ("cross_entropy", mx.float32, False),
    ("softmax", mx.float32, False), ("rms_norm", mx.bfloat16, False)],
    ids=["log_softmax-f32", "log_softmax-bf16", "cross_entropy-bf16", "cross_entropy-f32",
         "softmax-f32", "rms_norm-bf16"])
def test_rows_in_registers_save_a_logsumexp(family, dtype, saves, monkeypatch):
    """Rows that fit the registers save their statistics only where the region computes a
    logsumexp (its backward would recompute the row's exponentials) and its backward would still
    reduce the row (log-softmax: the cotangent's sum), not where it would be pointwise
    (cross-entropy); the gradients match the oracle either way (kernels in the interpreter)."""
    saving = []
    real = compiled_module.differentiable_saving
    monkeypatch.setattr(compiled_module, "differentiable_saving",
                        lambda *a: saving.append(1) or real(*a))
    fn, spec = FAMILIES[family]
    _fused_backward_matches_float32_oracle(fn, _arguments(spec, 4, 300, dtype), dtype)
    assert bool(saving) == saves


def test_the_tuning_data_turns_saving_off_for_rows_in_registers(monkeypatch):
    """With ``resident_saves_statistics`` off in the chip's tuning row, a log-softmax whose rows
    stay in registers recomputes its statistics; its gradients are right either way."""
    from tests.codegen.targets import tuned

    saving = []
    real = compiled_module.differentiable_saving
    monkeypatch.setattr(compiled_module, "differentiable_saving",
                        lambda *a: saving.append(1) or real(*a))
    fn, spec = FAMILIES["log_softmax"]
    with tuned(None, resident_saves_statistics=False):
        _fused_backward_matches_float32_oracle(fn, _arguments(spec, 4, 300, mx.float32), mx.float32)
    assert not saving


def test_an_output_computed_twice_gets_both_cotangents():
    """CSE makes two equal results one var; MLX's vjp of a function returning one array twice
    would use only the last cotangent, so the runtime returns a copy for the second."""
    x = mx.array([1.0, -2.0, 0.5])

    def fn(x):
        return mx.abs(mx.abs(x)), mx.abs(mx.abs(x))

    cotangents = [mx.array([1.0, 1.0, 1.0]), mx.array([2.0, 2.0, 2.0])]
    got = mx.vjp(mlxtriton.optimize(fn, chip="m3"), [x], cotangents)[1][0]
    np.testing.assert_allclose(np.array(got), [3.0, -3.0, 3.0])


def test_saving_route_places_gradients_by_input_position():
    """Labels before logits: the saved-statistics backward gives one cotangent per input in
    order (integer zeros for the labels), not the logits' gradient in the labels' place."""
    fn = lambda labels, x: nn.losses.cross_entropy(x, labels, reduction="mean")  # noqa: E731
    x, labels = _arguments("xl", 2, 20000, mx.float32)
    want = mx.grad(fn, argnums=1)(labels, x)
    with route("fused_backward"):
        got = mx.grad(mlxtriton.optimize(fn, chip="h200"), argnums=1)(labels, x)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-4, atol=1e-7)


def test_a_row_max_no_output_depends_on_is_differentiated_as_a_constant():
    """x - max(x) under logsumexp - gather (cross-entropy) or softmax: MLX's VJP of the max adds
    two row reductions whose result is zero up to rounding; the backward skips them."""
    x = mx.array([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0], [-1.0, 4.0, 0.0, 4.0]])  # tied maxima
    labels = mx.array([1, 0, 3])

    def counts(fn, *args):
        return stop_shift_gradients(mlxtriton.trace(fn)(*args)).primitive_counts().get("StopGradient", 0)

    ce = FAMILIES["cross_entropy"][0]
    assert counts(ce, x, labels) == 1
    assert counts(lambda x: mx.softmax(x - x.max(-1, keepdims=True), -1), x) == 1
    assert counts(lambda x: x - x.max(-1, keepdims=True), x) == 0  # the output keeps the shift
    assert counts(lambda x: mx.exp(x - x.max(-1, keepdims=True)), x) == 0  # exp does not cancel it
    assert counts(lambda x: mx.softmax(x - x.max(0, keepdims=True), -1), x) == 0  # other axis
    with route("fused_backward"):
        f = mlxtriton.optimize(ce, chip="m3")
        cot = mx.array(1.7)
        got = mx.vjp(lambda x: f(x, labels), [x], [cot])[1][0]
    want = mx.vjp(lambda x: ce(x, labels), [x], [cot])[1][0]
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-6)
    region = next(e for e in f.graph(x, labels).eqns if e.primitive == "Fused")
    backward = mlxtriton.trace(vjp_function(body_of(region)))(
        [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body_of(region).inputs],
        [mx.zeros(v.shape, dtypes.to_mx(v.dtype)) for v in body_of(region).outputs])
    reductions = sum(e.primitive == "Reduce" for e in backward.eqns)
    assert reductions == 1  # the softmax's max only: no tie count, no sum of the cotangents


# ---- a forward never depends on a VJP being traceable -------------------------------------------

def _log_softmax_of_integers(x):
    return nn.log_softmax(x.astype(mx.int32))


def _logsumexp_less_the_argmax_logit(x):
    at = mx.argmax(x, axis=-1, keepdims=True)
    return mx.logsumexp(x, axis=-1, keepdims=True) - mx.take_along_axis(x, at, axis=-1)


def _dominant_rows(rows: int, cols: int, seed: int = 0) -> mx.array:
    """Integer-valued logits, one per row 100 above the rest: every softmax value is 1 or below
    float32's smallest normal, so gradients through integer casts (which truncate their
    cotangents) are exact integers on every route."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 3, (rows, cols)).astype(np.float32)
    x[np.arange(rows), rng.integers(0, cols, rows)] += 100
    return mx.array(x)


@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_a_body_mlx_cannot_differentiate_runs_forward(route_name, chip):
    """Plain MLX refuses the gradient through a gather at indices an argmax of the input
    computed. Where regions run as MLX ops the optimized function refuses it the same way; a
    kernel's VJP reads the argmax as a constant (`stop_index_gradients`: its VJP is zero) and
    gives the gradient through the gathered values, as JAX does: a region's VJP is asked for
    every output's cotangent, also of outputs plain MLX's gradient never reaches, and refusing
    there would refuse what plain MLX computes."""
    x = mx.random.normal((6, 40), key=mx.random.key(3))
    fn = _logsumexp_less_the_argmax_logit
    with route(route_name):
        f = mlxtriton.optimize(fn, chip=chip)
        np.testing.assert_allclose(np.array(f(x)), np.array(fn(x)), rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError) as plain:
            mx.grad(lambda x: fn(x).sum())(x)
        if route_name == "cpu":
            with pytest.raises(ValueError) as optimized:
                mx.grad(lambda x: f(x).sum())(x)
            assert str(optimized.value) == str(plain.value)
            return
        got = mx.grad(lambda x: f(x).sum())(x)
    want = mx.grad(lambda x: (mx.logsumexp(x, axis=-1, keepdims=True)
                              - mx.max(x, axis=-1, keepdims=True)).sum())(x)
    assert_close(got, want, mx.float32)


@pytest.mark.parametrize("route_name", ("kernels", "fused_backward"))
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_log_softmax_of_integers_runs_forward_and_backward(route_name, chip):
    """A float -> int32 cast ahead of a log-softmax: the max of integer rows is a shift the
    outputs do not depend on (nn.log_softmax stops its gradient; the trace lost that), so a
    kernel's VJP is MLX's of the function the trace came from. (Regions run as MLX ops, the
    "cpu" route, differentiate the traced body as it is: without the stop-gradient MLX refuses.)"""
    x = _dominant_rows(5, 48)
    fn = _log_softmax_of_integers
    with route("cpu"):
        mlxtriton.optimize(fn, chip=chip)(x)  # the forward runs on every route
    with route(route_name):
        f = mlxtriton.optimize(fn, chip=chip)
        np.testing.assert_allclose(np.array(f(x)), np.array(fn(x)), rtol=1e-5, atol=1e-5)
        got = mx.grad(lambda x: f(x).sum())(x)
    np.testing.assert_array_equal(np.array(got), np.array(mx.grad(lambda x: fn(x).sum())(x)))
