"""The public API with real kernel launches (``pytest -m cuda`` on the H200, ``-m metal`` on a
Mac): every kernel family through `mlxtriton.optimize` against the original MLX function on the
same device, in float32 and bfloat16, plus a whole Llama block."""

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples
from tests.test_api import CASES

pytestmark = [pytest.mark.cuda, pytest.mark.metal]

TOL = {mx.float32: 1e-4, mx.bfloat16: 3e-2, mx.float16: 5e-3}


def _cast(args, dtype):
    return tuple(a.astype(dtype) if mx.issubdtype(a.dtype, mx.floating) else a for a in args)


def _close(got, want, tol):
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_optimize_launches_match_mlx(name, dtype):
    fn, make = CASES[name]
    mx.random.seed(3)
    args = _cast(make(), dtype)
    f = mlxtriton.optimize(fn)
    f.lower(*args)  # every region lowers (on a GPU some families are fast-op primitives instead)
    _close(f(*args), fn(*args), TOL[dtype])


@pytest.mark.parametrize("shape", [(1, 1), (37, 24), (9, 3000), (64, 4096), (4, 20000)])
@pytest.mark.parametrize("on_chip", ["registers", "stream"])
def test_row_families_at_many_lengths(shape, on_chip):
    make = mlxtriton.optimize if on_chip == "registers" else mlxtriton.fuse
    x, w = mx.random.normal(shape), mx.random.normal(shape[-1:])
    for fn in (lambda x: mx.softmax(x, axis=-1), lambda x: mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x),
               lambda x: mx.fast.layer_norm(x, w, w, 1e-5), lambda x: mx.logsumexp(x, axis=-1)):
        _close(make(fn)(x), fn(x), 1e-4)


def test_llama_block():
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")
    f = mlxtriton.optimize(block)
    # on a GPU RMSNorm and RoPE are fast-op primitives; the pattern stage makes the attention
    # mx.fast SDPA and the residual adds AddMM epilogues; the SwiGLU gate fuses
    assert len(f.lower(x)) >= 1
    assert f.graph(x).primitive_counts()["ScaledDotProductAttention"] == 1
    _close(f(x), block(x), 2e-4)


def test_fused_call_allocates_only_its_outputs():
    x = mx.random.normal((4096, 4096))
    f = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1))
    mx.eval(f(x))
    mx.synchronize()
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    y = f(x)
    mx.eval(y)
    assert mx.get_peak_memory() - base <= y.nbytes * 1.01 + (1 << 16)


def test_calls_follow_the_default_device_between_calls():
    """The cached call of one device is never taken for another: the same function and shapes
    launch a kernel on the GPU and run MLX ops on the CPU, whichever came first."""
    x = mx.random.normal((64, 1000))
    f = mlxtriton.optimize(lambda x: mx.exp(x) / mx.exp(x).sum(axis=-1, keepdims=True))
    want = np.array(mx.softmax(x, axis=-1))
    gpu = mx.default_device()
    try:
        for device in (gpu, mx.cpu, gpu, mx.cpu):
            mx.set_default_device(device)
            np.testing.assert_allclose(np.array(f(x)), want, rtol=1e-5, atol=1e-6)
    finally:
        mx.set_default_device(gpu)
    assert len(f._cache) == 2  # one entry per device, each built once


def test_calls_no_transformation_sees_launch_the_kernel_bare():
    """What MLX replays for a plain call is the kernel alone (runtime/compiled._tracing), a
    saving region's too (no statistics written); under grad the kernel sits inside its
    derivative rules and the gradient is right."""
    import io

    for fn in (lambda x: mx.softmax(x, axis=-1), lambda x: x - mx.logsumexp(x, axis=-1, keepdims=True)):
        f = mlxtriton.optimize(fn)
        x = mx.random.normal((512, 40000))  # f32 rows of 40000: the forward saves statistics
        mx.eval(x)  # else the graph drawn holds x's random generation too
        for _ in range(2):
            y = f(x)
            text = io.StringIO()
            mx.export_to_dot(text, y)
            assert text.getvalue().count("shape=rectangle") == 1, text.getvalue()
            _close(y, fn(x), 1e-4)
        _close(mx.grad(lambda x: (f(x) * x).sum())(x), mx.grad(lambda x: (fn(x) * x).sum())(x), 1e-4)


@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", ["sum of squares", "mse", "row max", "variance", "over two axes",
                                  "logsumexp", "softmax", "argmax"])
def test_two_level_reductions_match_mlx(case, dtype):
    """Reductions over too few rows for the chip, split in two levels at their real sizes."""
    mx.random.seed(5)
    a, b = mx.random.normal((1 << 22,)).astype(dtype), mx.random.normal((1 << 22,)).astype(dtype)
    fn, args = {
        "sum of squares": (lambda x: mx.sqrt(mx.sum(x * x)), (a,)),
        "mse": (lambda x, y: mx.mean((x - y) ** 2), (a, b)),
        "row max": (lambda x: mx.max(x.reshape(8, -1) * 2, axis=-1), (a,)),
        "variance": (lambda x: mx.var(x.reshape(16, -1), axis=-1), (a,)),
        "over two axes": (lambda x, y: mx.sum(x.reshape(4, 1024, 1024) * y[:1024], axis=(1, 2)), (a, b)),
        "logsumexp": (lambda x: mx.logsumexp(x.reshape(4, -1) * 3, axis=-1), (a,)),
        "softmax": (lambda x: mx.softmax(x.reshape(4, -1), axis=-1), (a,)),
        "argmax": (lambda x: mx.argmax(mx.round(x * 4).reshape(2, -1), axis=-1), (a,)),
    }[case]
    f = mlxtriton.optimize(fn)
    assert "split:" in str(f.explain(*args))
    assert len(f.lower(*args)) >= 2
    want = fn(*(x.astype(mx.float32) for x in args))  # float32 reference for the bf16 sums
    if case == "argmax":  # exact: the first of the tied maxima (rounding makes many)
        assert mx.array_equal(f(*args), fn(*args)).item()
        return
    _close(f(*args), want.astype(dtype), TOL[dtype])
