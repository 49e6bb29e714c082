"""Stateful programs through `optimize` behave exactly as eager MLX: the random key advances as
MLX's does, module buffers and argument objects are updated call after call, ``train()`` /
``eval()`` take effect, ``stop_gradient`` stops gradients, and nothing of a trace is ever left in
a caller's object."""

from __future__ import annotations

import gc
import warnings

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlx.utils import tree_flatten

import mlxtriton
from mlxtriton import RebuildWarning


def _same(a, b):
    a, b = np.array(a), np.array(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.array(a), np.array(b), rtol=tol, atol=tol)


def _twins(make, seed=0):
    """Two modules with the same weights and buffers."""
    mx.random.seed(seed)
    a, b = make(), make()
    b.update(a.parameters())
    mx.eval(a.parameters(), b.parameters())
    return a, b


def _state_of(module):
    return {k: np.array(v) for k, v in _flat(module.parameters())}


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _flat(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


# ---- randomness ------------------------------------------------------------------------------

def test_random_functions_draw_what_eager_draws_call_after_call():
    def noisy(x):
        return x + mx.random.normal(x.shape) * mx.random.uniform(shape=(1,))

    f = mlxtriton.optimize(noisy)
    x = mx.ones((4, 8))
    mx.random.seed(7)
    want = [noisy(x) for _ in range(4)]
    key_after = np.array(mx.random.state[0])
    mx.random.seed(7)
    got = [f(x) for _ in range(4)]
    for g, w in zip(got, want):
        _same(g, w)
    _same(mx.random.state[0], key_after)  # the key advanced exactly as eager
    assert not np.array_equal(np.array(got[0]), np.array(got[1]))
    assert f.cache_info().builds == 1


def test_the_trace_does_not_drag_earlier_random_calls_in():
    f = mlxtriton.optimize(lambda x: x * mx.random.bernoulli(0.5, x.shape))
    sizes = []
    for n in (3, 4, 5):
        mx.random.normal((2,))  # an unevaluated chain of splits before each new shape
        sizes.append(len(f.graph(mx.ones((n,))).eqns))
    assert len(set(sizes)) == 1


def test_explicit_keys_are_arguments_not_state():
    f = mlxtriton.optimize(lambda x, k: x + mx.random.normal(x.shape, key=k))
    key = mx.random.key(3)
    before = np.array(mx.random.state[0])
    _same(f(mx.zeros((3,)), key), mx.random.normal((3,), key=key))
    _same(mx.random.state[0], before)
    assert f.graph(mx.zeros((3,)), key).state_inputs == ()


@pytest.mark.parametrize("make,shape", [
    (lambda: nn.Dropout(0.5), (4, 16)),
    (lambda: nn.Dropout2d(0.3), (2, 4, 4, 8)),
    (lambda: nn.Dropout3d(0.25), (2, 3, 3, 3, 4)),
])
def test_dropout_layers_in_train_and_eval(make, shape):
    eager, opt = _twins(make)
    f = mlxtriton.optimize(opt)
    x = mx.random.normal(shape)
    for mode in ("train", "eval", "train"):
        getattr(eager, mode)()
        getattr(opt, mode)()
        mx.random.seed(11)
        want = [eager(x) for _ in range(3)]
        mx.random.seed(11)
        got = [f(x) for _ in range(3)]
        for g, w in zip(got, want):
            _same(g, w)
    assert f.cache_info().builds == 2  # one per mode, the second training phase served


# ---- module state ----------------------------------------------------------------------------

@pytest.mark.parametrize("make,shape", [
    (lambda: nn.BatchNorm(8), (5, 8)),
    (lambda: nn.BatchNorm(4), (2, 3, 3, 4)),
    (lambda: nn.BatchNorm(4, affine=False), (3, 2, 2, 4)),
    (lambda: nn.BatchNorm(6, momentum=0.3), (7, 5, 6)),
])
def test_batch_norm_statistics_follow_eager(make, shape):
    eager, opt = _twins(make)
    f = mlxtriton.optimize(opt)
    for step in range(4):
        x = mx.random.normal(shape, key=mx.random.key(step))
        _close(f(x), eager(x))
        assert _state_of(opt).keys() == _state_of(eager).keys()
        for k, v in _state_of(eager).items():
            _close(_state_of(opt)[k], v)
    eager.eval()
    opt.eval()
    x = mx.random.normal(shape)
    _close(f(x), eager(x))
    assert f.cache_info().last_build.endswith("training True -> False")


def test_trace_of_a_training_batch_norm_leaves_it_usable():
    bn = nn.BatchNorm(4)
    before = _state_of(bn)
    graph = mlxtriton.trace(bn)(mx.ones((3, 4)))
    assert "BatchNorm.running_mean" in graph.state_outputs
    after = _state_of(bn)
    assert before.keys() == after.keys()
    for k in before:
        _same(after[k], before[k])
    mx.eval(bn(mx.ones((3, 4))), bn.parameters())


class Counter(nn.Module):
    """A module with a buffer it rebinds on every call."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.calls = mx.array(0)

    def __call__(self, x):
        self.calls = self.calls + 1
        return self.linear(x) * self.calls


def test_a_user_buffer_advances_and_weight_updates_need_no_rebuild():
    eager, opt = _twins(Counter)
    f = mlxtriton.optimize(opt)
    x = mx.ones((2, 4))
    for step in range(3):
        _close(f(x), eager(x))
        new = {"linear": {"weight": mx.full((4, 4), float(step))}}
        eager.update(new)
        opt.update(new)
    assert opt.calls.item() == eager.calls.item() == 3
    assert f.cache_info().builds == 1


def test_a_module_captured_by_a_closure_is_state_too():
    eager, opt = _twins(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm(4), nn.Dropout(0.5)))
    f = mlxtriton.optimize(lambda x: opt(x).sum(axis=-1))
    x = mx.random.normal((6, 4))
    mx.random.seed(5)
    want = [eager(x).sum(axis=-1) for _ in range(2)]
    mx.random.seed(5)
    got = [f(x) for _ in range(2)]
    for g, w in zip(got, want):
        _close(g, w)
    for k, v in _state_of(eager).items():
        _close(_state_of(opt)[k], v)


# ---- hypothesis: random sequences of calls, mode switches and weight updates ------------------

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 6)
        self.bn = nn.BatchNorm(6)
        self.drop = nn.Dropout(0.4)

    def __call__(self, x):
        return self.drop(nn.relu(self.bn(self.linear(x))))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.sampled_from(["call", "call2", "train", "eval", "update", "seed"]),
                min_size=1, max_size=10))
def test_random_sequences_of_calls_modes_and_updates(ops):
    eager, opt = _twins(Net)
    f = mlxtriton.optimize(opt)
    for i, op in enumerate(ops):
        if op in ("call", "call2"):
            x = mx.random.normal((3 if op == "call" else 5, 6), key=mx.random.key(i))
            key = mx.random.state[0]
            want = eager(x)
            key_after = mx.random.state[0]
            mlxtriton.state.set_random_key(key)
            _close(f(x), want)
            _same(mx.random.state[0], key_after)
        elif op in ("train", "eval"):
            getattr(eager, op)()
            getattr(opt, op)()
        elif op == "update":
            new = {"linear": {"bias": mx.full((6,), float(i))}}
            eager.update(new)
            opt.update(new)
        else:
            mx.random.seed(i)
        for k, v in _state_of(eager).items():
            _close(_state_of(opt)[k], v)


# ---- stop_gradient ---------------------------------------------------------------------------

def test_stop_gradient_is_an_equation_and_stops_the_gradient():
    fn = lambda x: (x * mx.stop_gradient(x)).sum()  # noqa: E731
    x = mx.array([1.0, -2.0, 3.0])
    assert "StopGradient" in mlxtriton.trace(fn)(x).primitive_counts()
    _same(mx.grad(mlxtriton.optimize(fn))(x), x)
    _same(mx.grad(mlxtriton.optimize(fn, chip="h200"))(x), x)


def test_a_loss_with_a_detached_target_trains_as_eager():
    def loss(w, x):
        pred = x @ w
        target = mx.stop_gradient(pred * 0.5 + 1.0)
        return ((pred - target) ** 2).mean()

    w, x = mx.random.normal((4, 3)), mx.random.normal((5, 4))
    _close(mx.grad(mlxtriton.optimize(loss))(w, x), mx.grad(loss)(w, x))


def test_a_gradient_taken_inside_the_traced_function_stops_at_stop_gradient():
    """A training step differentiates while it is traced: MLX's autodiff then runs over the
    trace's stop-gradient marker, which must stop the gradient as mx.stop_gradient does."""
    fn = lambda x: mx.grad(lambda y: (y * mx.stop_gradient(y)).sum())(x)  # noqa: E731
    x = mx.array([1.0, -2.0, 3.0])
    _same(mlxtriton.evaluate(mlxtriton.trace(fn)(x), x), x)
    _same(mlxtriton.optimize(fn)(x), x)
    _same(mlxtriton.optimize(fn, chip="h200")(x), x)


def test_a_region_output_that_is_a_stop_gradient_differentiates_inside_a_trace():
    """A region's body may output a stop-gradient (a split row max, kept for a later region); its
    backward, also when traced to be optimised itself, leaves that output out of MLX's VJP."""
    from mlxtriton.runtime.autodiff import vjp_function

    def body(a):
        c = mx.max(a, axis=(1, 2), keepdims=True).reshape(4, 1)
        d = mx.stop_gradient(c)
        return [d, d.reshape(4, 1, 1), c * 2]

    a = mx.random.normal((4, 16, 1), key=mx.random.key(3))
    backward = vjp_function(mlxtriton.trace(body)(a))
    cotangents = [mx.ones((4, 1)), mx.ones((4, 1, 1)), mx.ones((4, 1))]
    # (MLX's own vjp of ``body`` pairs the outputs after a stop-gradient with the wrong cotangents)
    want = mx.vjp(lambda a: body(a)[2:], [a], cotangents[2:])[1]
    _same(backward([a], cotangents)[0], want[0])
    _same(mlxtriton.optimize(backward)([a], cotangents)[0], want[0])


_SG_UNARY = [mx.exp, mx.tanh, mx.sin, lambda v: v * v, lambda v: mx.sqrt(mx.abs(v) + 1.0)]
_SG_BINARY = [mx.add, mx.multiply, mx.subtract, lambda a, b: a / (mx.abs(b) + 1.0)]


@st.composite
def stopped_programs(draw):
    """A random chain of elementwise ops and row reductions with stop_gradient at random places."""
    steps = []
    for _ in range(draw(st.integers(2, 8))):
        kind = draw(st.sampled_from(["unary", "binary", "reduce"]))
        steps.append((kind, draw(st.integers(0, 4)), draw(st.integers(0, 10)),
                      draw(st.booleans())))
    return steps


def _program(steps):
    def fn(x, y):
        values = [x, y]
        for kind, op, arg, stop in steps:
            a = values[arg % len(values)]
            if kind == "unary":
                v = _SG_UNARY[op % len(_SG_UNARY)](a)
            elif kind == "binary":
                v = _SG_BINARY[op % len(_SG_BINARY)](a, values[(arg + 1) % len(values)])
            else:
                v = mx.broadcast_to(mx.mean(a, axis=-1, keepdims=True), a.shape)
            values.append(mx.stop_gradient(v) if stop else v)
        return sum(v.sum() for v in values[2:]) + x.sum() * 0.1

    return fn


@settings(max_examples=20, deadline=None)
@given(stopped_programs())
def test_stop_gradient_in_random_programs_matches_the_jax_oracle(steps):
    jax = pytest.importorskip("jax")
    from mlxtriton.graph.evaluate import run
    from mlxtriton.graph.evaluate_jax import from_jax, jax_rules, to_jax

    fn = _program(steps)
    x = mx.random.normal((3, 5), key=mx.random.key(1)) * 0.5
    y = mx.random.normal((3, 5), key=mx.random.key(2)) * 0.5
    graph = mlxtriton.trace(fn)(x, y)
    rules = jax_rules()
    oracle = jax.grad(lambda a, b: run(graph, [a, b], rules, to_jax)[0], argnums=(0, 1))
    want = [from_jax(g) for g in oracle(to_jax(x), to_jax(y))]
    got = mx.grad(mlxtriton.optimize(fn, chip="m3"), argnums=(0, 1))(x, y)
    for g, w in zip(got, want):
        _close(g, w, 1e-4)
    for g, w in zip(got, mx.grad(fn, argnums=(0, 1))(x, y)):
        _close(g, w, 1e-5)


# ---- objects as arguments --------------------------------------------------------------------

class Accumulator:
    """A user class holding arrays and a Python step count."""

    def __init__(self):
        self.total = mx.zeros((3,))
        self.history = [None, None]
        self.steps = 0


def add_to(acc: Accumulator, x):
    acc.total = acc.total + x
    acc.history[acc.steps % 2] = x * 2
    acc.steps += 1
    return acc.total.sum()


def test_objects_holding_arrays_are_state():
    f = mlxtriton.optimize(add_to)
    eager, opt = Accumulator(), Accumulator()
    for i in range(5):
        x = mx.full((3,), float(i))
        _same(f(opt, x), add_to(eager, x))
        _same(opt.total, eager.total)
        assert opt.steps == eager.steps
        for a, b in zip(opt.history, eager.history):
            assert (a is None) == (b is None)
            if a is not None:
                _same(a, b)
    # the step count is a Python int: part of the key; the two parities need 2 + 2 builds
    assert f.cache_info().builds == 5


class Position:
    def __init__(self, at):
        self.at = at


def advance(positions, n):
    for p in positions:
        p.at = p.at + n
    return positions[0].at * 2


def test_objects_holding_one_array_are_read_as_one_input():
    """Several objects holding one array object (every layer's cache holding one offset): one
    input, the same work done once, and one array written back to them all; objects holding
    arrays of their own are another cache entry, each advanced on its own."""
    f = mlxtriton.optimize(advance)
    shared = mx.array(3)
    positions = [Position(shared) for _ in range(4)]
    for step in range(3):
        _same(f(positions, mx.array(2)), mx.array(2 * (3 + 2 * (step + 1))))
        assert all(p.at is positions[0].at for p in positions)
    assert f.cache_info().builds == 1
    graph = f.graph(positions, mx.array(2))
    (region,) = [e for e in graph.eqns if e.primitive == "Fused"]
    assert region.params["body"].primitive_counts()["Add"] == 1 and len(graph.inputs) == 2
    mine = [Position(mx.array(i)) for i in range(4)]
    _same(f(mine, mx.array(1)), mx.array(2))
    assert [p.at.item() for p in mine] == [1, 2, 3, 4]
    assert "one object" in f.cache_info().last_build
    assert f.cache_info().builds == 2


class Pair:
    def __init__(self):
        self.pair = (mx.ones(2), mx.zeros(2))
        self.nested = {"inner": ((mx.ones(1),), mx.full((1,), 5.0))}


def step_pair(p, x):
    p.pair = tuple(v + x for v in p.pair)
    (a,), b = p.nested["inner"]
    p.nested["inner"] = ((a * 2,), b)
    return p.pair[0] * 2 + a


def test_arrays_in_tuples_are_state_the_trace_rebuilds():
    """A tuple cannot be written into: its placeholders go in a rebuilt tuple, nested ones from
    the innermost out (mlx-lm's quantized caches keep (packed, scales, biases) tuples)."""
    eager, opt = Pair(), Pair()
    f = mlxtriton.optimize(step_pair)
    for i in range(3):
        x = mx.array(float(i + 1))
        _same(f(opt, x), step_pair(eager, x))
        for a, b in zip((*opt.pair, opt.nested["inner"][0][0], opt.nested["inner"][1]),
                        (*eager.pair, eager.nested["inner"][0][0], eager.nested["inner"][1])):
            _same(a, b)
    assert f.cache_info().builds == 1


def step_flat_pair(p, x):
    p.pair = tuple(v + x for v in p.pair)
    return p.pair[0] * 2


def test_a_tuple_of_arrays_a_call_replaces_is_read_again_without_a_walk(monkeypatch):
    """After the build, each call reads the tuple its last call stored (through its parent's
    slot) instead of walking the state again, and sees a tuple the caller replaced: by one of
    new arrays (read as they are), by one of another length (a walk, a build)."""
    from mlxtriton import state as state_lib

    walks = []
    walk = state_lib.snapshot
    monkeypatch.setattr(state_lib, "snapshot", lambda *a, **k: walks.append(1) or walk(*a, **k))
    eager, opt = Pair(), Pair()
    f = mlxtriton.optimize(step_flat_pair)

    def check(x):
        _same(f(opt, mx.array(x)), step_flat_pair(eager, mx.array(x)))
        _same(opt.pair[1], eager.pair[1])

    check(1.0)
    walks.clear()
    for x in (2.0, 3.0):
        check(x)
    assert not walks
    for p in (opt, eager):
        p.pair = (mx.full((2,), 7.0), mx.full((2,), -1.0))
    check(4.0)
    assert not walks and f.cache_info().builds == 1
    for p in (opt, eager):
        p.pair = (*p.pair, mx.ones(2))
    check(5.0)
    assert walks and f.cache_info().builds == 2


class SharedPair:
    def __init__(self, first):
        pair = (mx.full((2,), first), mx.ones(2))
        self.a, self.b = pair, pair


def test_a_tuple_held_in_two_places_is_one_input_read_in_both():
    f = mlxtriton.optimize(lambda o, x: o.b[0] * x + o.a[1])
    for first in (1.0, 5.0):
        o = SharedPair(first)
        _same(f(o, mx.array(2.0)), o.b[0] * 2.0 + o.a[1])
    assert f.cache_info().builds == 1


class Grows:
    """State whose first call creates containers (a dict per name) ahead of ones it only
    updates, with a look-alike slot further on: an optimizer's lazily made states do this."""

    def __init__(self):
        self.slots = {}
        self.tail = {"n": mx.array(0)}
        self.other = {"m": mx.array(100)}
        self.last = {"n": mx.array(1000)}

    def __call__(self, x):
        for name in ("a", "b"):
            if name not in self.slots:
                self.slots[name] = {"sum": mx.zeros_like(x)}
            self.slots[name]["sum"] = self.slots[name]["sum"] + x
        self.tail["n"] = self.tail["n"] + 1
        return x * 2


def test_a_call_that_creates_containers_writes_into_the_ones_it_changed():
    eager, opt = Grows(), Grows()
    f = mlxtriton.optimize(lambda x: opt(x))
    for i in range(3):
        x = mx.full((3,), float(i + 1))
        _same(f(x), eager(x))
        for a, b in ((opt.tail["n"], eager.tail["n"]), (opt.last["n"], eager.last["n"]),
                     (opt.other["m"], eager.other["m"]),
                     (opt.slots["b"]["sum"], eager.slots["b"]["sum"])):
            _same(a, b)
    assert f.cache_info().builds == 2


def _training_step(make_optimizer, clip: bool):
    mx.random.seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    mx.eval(model.parameters())
    optimizer = make_optimizer()
    loss_and_grad = nn.value_and_grad(
        model, lambda m, x, y: nn.losses.cross_entropy(m(x), y, reduction="mean"))

    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        if clip:
            grads, _ = optim.clip_grad_norm(grads, 0.5)
        optimizer.update(model, grads)
        return loss
    return model, optimizer, step


OPTIMIZERS = {
    "SGD": lambda: optim.SGD(1e-2),
    "SGD, Nesterov momentum, weight decay": lambda: optim.SGD(1e-2, momentum=0.9, weight_decay=1e-3,
                                                               nesterov=True),
    "RMSprop": lambda: optim.RMSprop(1e-3),
    "Adagrad": lambda: optim.Adagrad(1e-2),
    "AdaDelta": lambda: optim.AdaDelta(1.0),
    "Adam, bias correction": lambda: optim.Adam(1e-2, bias_correction=True),
    "AdamW, warm-up then cosine schedule": lambda: optim.AdamW(optim.join_schedules(
        [optim.linear_schedule(0, 1e-2, 2), optim.cosine_decay(1e-2, 10)], [2])),
    "Adamax": lambda: optim.Adamax(1e-2),
    "Lion": lambda: optim.Lion(1e-3, weight_decay=0.1),
    "Adafactor": lambda: optim.Adafactor(),
    "Muon": lambda: optim.Muon(1e-2),
    "MultiOptimizer": lambda: optim.MultiOptimizer(
        [optim.Adam(1e-2), optim.SGD(1e-2, momentum=0.9)], [lambda name, w: w.ndim > 1]),
}


def test_every_mlx_optimizer_has_a_case():
    classes = {n for n, c in vars(optim).items() if isinstance(c, type)
               and issubclass(c, optim.Optimizer) and c is not optim.Optimizer}
    assert classes - {case.split(",")[0] for case in OPTIMIZERS} == set()


@pytest.mark.parametrize("clip", (False, True), ids=("unclipped", "clipped"))
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_whole_training_step_with_an_optimizer_it_initialises(name, clip):
    """Every optimizer of mlx.optimizers, its state made by the first call inside the trace (a
    MultiOptimizer's per-optimizer dicts ahead of the ones it updates), gradients clipped by
    their norm or not; SGD's zeros_like states, equal constants the passes merge, stay distinct
    objects: two builds for the whole run."""
    plain_model, plain_optimizer, plain_step = _training_step(OPTIMIZERS[name], clip)
    model, optimizer, step = _training_step(OPTIMIZERS[name], clip)
    fast = mlxtriton.optimize(step)
    x = mx.random.normal((16, 8), key=mx.random.key(1))
    y = mx.random.randint(0, 4, (16,), key=mx.random.key(2))
    for _ in range(4):
        np.testing.assert_allclose(fast(x, y).item(), plain_step(x, y).item(), rtol=1e-5)
    for (_, a), (_, b) in zip(tree_flatten(model.parameters()),
                              tree_flatten(plain_model.parameters())):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    for (_, a), (_, b) in zip(tree_flatten(optimizer.state), tree_flatten(plain_optimizer.state)):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6)
    assert fast.cache_info().builds == 2


class Broken:
    def __init__(self):
        self.value = mx.ones((2,))
        self.n = 1


def test_a_failed_call_leaves_the_callers_object_untouched():
    def bad(obj, x):
        obj.value = obj.value + x
        obj.n += 1
        obj.extra = x
        raise RuntimeError("boom")

    obj = Broken()
    value = obj.value
    with pytest.raises(RuntimeError, match="boom"):
        mlxtriton.optimize(bad)(obj, mx.ones((2,)))
    assert obj.value is value and obj.n == 1 and not hasattr(obj, "extra")
    _same(obj.value + 1, mx.full((2,), 2.0))


def test_an_object_the_call_attaches_cannot_be_carried_and_says_so():
    def attach(obj, x):
        obj.child = Broken()
        return x

    obj = Broken()
    with pytest.raises(mlxtriton.StateError, match="Broken at"):
        mlxtriton.optimize(attach)(obj, mx.ones((2,)))
    assert not hasattr(obj, "child")


def test_mlx_lm_kv_caches_through_optimize_stay_usable_by_the_plain_model():
    pytest.importorskip("mlx_lm")
    from mlx_lm.models import llama
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    args = llama.ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=2,
                           intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=64)
    mx.random.seed(0)
    model = llama.Model(args)
    mx.eval(model.parameters())
    f = mlxtriton.optimize(model)
    for make in (KVCache, lambda: RotatingKVCache(max_size=8, keep=2)):
        eager_cache = [make() for _ in range(2)]
        opt_cache = [make() for _ in range(2)]
        tokens = mx.array([[1, 5, 7, 9, 11]])
        _close(f(tokens, cache=opt_cache), model(tokens, cache=eager_cache), 1e-4)
        for step in range(6):
            tok = mx.array([[step + 2]])
            _close(f(tok, cache=opt_cache), model(tok, cache=eager_cache), 1e-4)
        for a, b in zip(opt_cache, eager_cache):
            assert a.offset == b.offset
        # the optimized cache serves the plain model as well as the eager one
        tok = mx.array([[3]])
        _close(model(tok, cache=opt_cache), model(tok, cache=eager_cache), 1e-4)


# ---- tracing through what the exporter cannot see --------------------------------------------

def test_compiled_mlx_nn_helpers_trace_after_a_plain_call():
    x = mx.random.normal((4, 8))
    for helper in (nn.log_softmax, nn.gelu, nn.silu, nn.relu6):
        helper(x)  # warms mlx.nn's mx.compile cache with these input types
        f = mlxtriton.optimize(lambda v, h=helper: h(v) * 2.0)
        _close(f(x), helper(x) * 2.0)


def test_a_compiled_helper_with_constant_inputs_and_contiguous():
    up = nn.Upsample(scale_factor=2, mode="cubic")
    x = mx.random.normal((1, 4, 4, 2))
    _close(mlxtriton.optimize(up)(x), up(x))
    g = mlxtriton.optimize(lambda v: mx.contiguous(v.T) * 2)
    _close(g(x[0, :, :, 0]), x[0, :, :, 0].T * 2)


# ---- the cache says when and why it builds ----------------------------------------------------

def test_cache_info_names_what_changed():
    f = mlxtriton.optimize(lambda x, s: x * s, static_argnums=1)
    x = mx.ones((2, 3))
    f(x, 2)
    f(x, 2)
    assert f.cache_info()[:4] == (1, 1, 0, 1)
    f(x, 2.0)
    assert f.cache_info().last_build == "argument 1: static value 2 -> 2.0 (int -> float)"
    f(mx.ones((4, 3)), 2.0)
    assert f.cache_info().last_build == "argument 0: f32[2,3] -> f32[4,3]"


def test_static_values_of_another_type_are_another_trace():
    g = mlxtriton.optimize(lambda x, s: x * s, static_argnums=1)
    x = mx.array([1, 2, 3])
    assert g(x, 2).dtype == mx.int32
    assert g(x, 2.0).dtype == mx.float32
    h = mlxtriton.optimize(lambda x, s: (x * s) // 4, static_argnums=1)
    _same(h(x, 1.0), (x * 1.0) // 4)
    _same(h(x, 1), (x * 1) // 4)


def test_many_rebuilds_in_a_row_warn_naming_the_cause():
    f = mlxtriton.optimize(lambda x, n: x + n, static_argnums=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(10):
            f(mx.ones((2,)), n)
    rebuilt = [w for w in caught if issubclass(w.category, RebuildWarning)]
    assert len(rebuilt) == 1 and "argument 1: static value 6 -> 7" in str(rebuilt[0].message)


def test_lru_eviction_keeps_the_hot_signature():
    f = mlxtriton.optimize(lambda x: x * 2, chip="m3")
    f.cache_size = 2
    hot = mx.ones((1,))
    for n in range(2, 8):
        f(hot)
        f(mx.ones((n,)))
    info = f.cache_info()
    assert info.entries == 2 and info.evictions == 5 and info.builds == 7


# ---- arguments checked where they are given ---------------------------------------------------

def test_static_arguments_are_checked_against_the_signature():
    with pytest.raises(ValueError, match="static_argnums has 2, but .* takes 2 positional"):
        mlxtriton.optimize(lambda x, n: x * n, static_argnums=2)
    with pytest.raises(ValueError, match="static_argnames has 'm'"):
        mlxtriton.optimize(lambda x, n: x * n, static_argnames="m")
    mlxtriton.optimize(lambda *xs: xs[0], static_argnums=3)  # *args takes any position
    with pytest.raises(TypeError, match="function or an mlx.nn.Module"):
        mlxtriton.optimize(42)


def test_an_unhashable_static_value_is_named_in_one_line():
    f = mlxtriton.optimize(lambda x, s: x, static_argnums=1)
    with pytest.raises(mlxtriton.PyTreeError) as err:
        f(mx.ones(2), np.ones((300, 300)))
    message = str(err.value)
    assert "\n" not in message and "numpy.ndarray of shape (300, 300)" in message


def test_numpy_arrays_are_accepted_as_mlx_accepts_them():
    f = mlxtriton.optimize(lambda x, y: x * y)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    _same(f(x, mx.ones((2, 3))), mx.array(x))


# ---- the per-call refresh of a settled state ---------------------------------------------------

def test_refresh_reads_the_same_leaves_and_notices_every_change_of_structure():
    from mlxtriton import state

    model = Net()
    acc = Accumulator()
    roots, names = [model, acc, state.RANDOM], ["model", "acc", "key"]
    snap = state.snapshot(roots, names)
    again = snap.refresh(roots)
    assert again is not None and again.layout == snap.layout
    assert all(a is b for a, b in zip(again.leaves[:-1], snap.leaves[:-1]))
    model.linear.weight = mx.zeros_like(model.linear.weight)  # a new array: read, not a change
    assert snap.refresh(roots).leaves[0] is model.linear.weight
    changes = [
        lambda: model.eval(),
        lambda: setattr(acc, "steps", 1),
        lambda: setattr(acc, "steps", 0.0),
        lambda: acc.history.__setitem__(0, mx.ones(2)),
        lambda: acc.history.append(None),
        lambda: setattr(acc, "new", 3),
        lambda: setattr(model, "drop", nn.Dropout(0.2)),
        lambda: setattr(acc, "total", None),
    ]
    for change in changes:
        model, acc = Net(), Accumulator()
        roots = [model, acc, state.RANDOM]
        snap = state.snapshot(roots, names)
        change()
        assert snap.refresh(roots) is None
    assert snap.refresh([Net(), acc, state.RANDOM]) is None


def test_refresh_reads_slots_keyed_by_any_hashable():
    """The refresh reads a slot by its key whatever the key is (a tuple, a float, a bool)."""
    from mlxtriton import state

    class Holder:
        def __init__(self):
            self.d = {"a": mx.ones(2), (1, "x"): mx.zeros(3), 2.5: mx.ones(1), True: 5, 'q"uote': 1}

    h = Holder()
    snap = state.snapshot([h], ["h"])
    h.d[(1, "x")] = mx.full((3,), 2.0)
    again = snap.refresh([h])
    assert again is not None and any(a is h.d[(1, "x")] for a in again.leaves)
    h.d[True] = 6
    assert snap.refresh([h]) is None


def _squares_step(model: nn.Module, opt):
    """A training step on the mean square of ``model``'s output: loss, gradient, update."""
    loss_and_grad = nn.value_and_grad(model, lambda m, x: (m(x) ** 2).mean())

    def step(x):
        loss, grads = loss_and_grad(model, x)
        opt.update(model, grads)
        return loss

    return step


def _held_bytes(run) -> int:
    """Bytes of arrays still allocated after ``run()`` returned (its objects alive or not)."""
    gc.collect()
    base = mx.get_active_memory()
    keep = run()  # noqa: F841 - what the caller holds afterwards
    gc.collect()
    return mx.get_active_memory() - base


def test_an_optimized_training_step_holds_no_state_it_replaced():
    """Between calls an optimized step holds the arrays the state holds and no others: not the
    parameters and Adam moments of an earlier step."""
    def train(optimize):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512))
        opt = optim.Adam(1e-3)
        mx.eval(model.parameters())
        step = _squares_step(model, opt)
        fn = mlxtriton.optimize(step) if optimize else step
        x = mx.ones((4, 512))
        for _ in range(4):
            mx.eval(fn(x), model.parameters(), opt.state)
        return model, opt, fn

    eager = _held_bytes(lambda: train(False))
    assert eager >= 3 * 2 * 512 * 512 * 4  # weights and two moments
    assert _held_bytes(lambda: train(True)) <= eager + 64 * 1024


def test_freezing_between_calls_is_part_of_the_key():
    """``freeze()`` / ``unfreeze()`` between calls change what ``nn.value_and_grad``
    differentiates: each is a new build, as a mode change is; freezing inside the call is an
    error."""
    def run(optimize):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
        mx.eval(model.parameters())
        opt = optim.SGD(0.1)
        step = _squares_step(model, opt)
        fn = mlxtriton.optimize(step) if optimize else step
        x = mx.ones((3, 8))
        fn(x)
        model.layers[0].freeze()
        fn(x)
        model.layers[0].unfreeze()
        model.layers[2].freeze()
        fn(x)
        return dict(tree_flatten(model.parameters())), fn

    want, _ = run(False)
    got, fast = run(True)
    for k in want:
        _same(got[k], want[k])
    assert fast.cache_info().builds == 3
    assert "frozen" in fast.cache_info().last_build

    model = nn.Linear(4, 4)

    def freezes(x):
        model.freeze()
        return model(x)

    with pytest.raises(mlxtriton.StateError, match="froze or unfroze parameters of"):
        mlxtriton.optimize(freezes)(mx.ones((2, 4)))


def _classify(m, x, y):
    return nn.losses.cross_entropy(m(x), y, reduction="mean")


def test_a_module_passed_as_an_argument_is_a_state_object():
    """``loss_fn(model, x, y)``, the loss mlx's examples hand to ``nn.value_and_grad``: the model
    is an argument object (its arrays are state), called as the module it is, not rebuilt as a
    plain dict. Optimized alone and under
    ``nn.value_and_grad`` through a few SGD steps: plain MLX's losses and parameters, one build."""
    def run(optimize):
        mx.random.seed(0)
        model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.LayerNorm(32), nn.Linear(32, 10))
        mx.eval(model.parameters())
        loss = mlxtriton.optimize(_classify) if optimize else _classify
        loss_and_grad, opt = nn.value_and_grad(model, loss), optim.SGD(0.1)
        x, y = mx.random.normal((8, 16), key=mx.random.key(1)), mx.arange(8)
        losses = [loss(model, x, y)]
        for _ in range(3):
            value, grads = loss_and_grad(model, x, y)
            opt.update(model, grads)
            losses.append(value)
        return losses, dict(tree_flatten(model.parameters())), loss

    want, want_params, _ = run(False)
    got, got_params, fast = run(True)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5)
    for k in want_params:
        np.testing.assert_allclose(np.array(got_params[k]), np.array(want_params[k]), rtol=1e-5,
                                   atol=1e-6)
    assert fast.cache_info().builds == 1


EMA = {"w": mx.zeros((4,))}


def test_a_captured_dict_of_arrays_the_function_updates_is_state():
    """An EMA kept in a dict the step captures (a global here, a closure alike): each call reads
    and updates it as eager MLX does, and no trace leaves its placeholders in it."""
    def step(x):
        EMA["w"] = 0.9 * EMA["w"] + 0.1 * x
        return EMA["w"].sum()

    fast = mlxtriton.optimize(step)
    want = []
    for i in range(3):
        want.append(step(mx.full((4,), float(i))))
    eager = EMA["w"]
    EMA["w"] = mx.zeros((4,))
    got = [fast(mx.full((4,), float(i))) for i in range(3)]
    for a, b in zip(got, want):
        _same(a, b)
    _same(EMA["w"], eager)
    assert fast.cache_info().builds == 1
