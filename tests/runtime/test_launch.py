"""How kernels are launched: ``MLXTRITON_INTERPRET=metal`` / ``=cuda`` runs every kernel a
program launches through the kernel emulator (on any host), and on an Apple GPU the first use of
each kernel is guarded: a kernel that fails to compile or launch there runs as MLX ops, with one
warning and a line in ``explain`` (simulated here; ``pytest -m metal`` exercises the real thing on
a Mac)."""

from __future__ import annotations

import dataclasses
import warnings

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples, hw
from mlxtriton.codegen.render import lower
from mlxtriton.hw import _target
from mlxtriton.runtime import emulator, launch
from tests.codegen import codegen_oracle as oracle

needs_compiler = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")


def _close(got, want, tol=1e-4):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)),
                                   rtol=tol, atol=tol)


MODELS = {
    "mlp": lambda: examples.init_eval(examples.MLP()),
    "llama": lambda: examples.init_eval(examples.LlamaBlock()),
    "conv": lambda: examples.init_eval(examples.ConvBNReLU()),
    "cross_entropy": lambda: examples.cross_entropy_loss,
    "indexing": lambda: examples.indexing_mix,
}


@needs_compiler
def test_the_example_models_run_their_kernels_as_metal(monkeypatch):
    """Every kernel `optimize` generates for the example models (mlx.nn layers) runs as its
    Metal source in the emulator; the results equal plain MLX's."""
    cases = {name: (make(), examples.example_inputs(name)) for name, make in MODELS.items()}
    lowered = [k for fn, args in cases.values()
               for k in mlxtriton.optimize(fn).trace(*args).lower("metal")]
    assert len(lowered) >= len(cases)
    emulator.prepare(lowered)  # one parallel compile for all of them
    monkeypatch.setenv(launch.INTERPRET_ENV, "metal")
    for name, (fn, args) in cases.items():
        _close(mlxtriton.optimize(fn)(*args), fn(*args))


@needs_compiler
def test_two_level_reductions_run_their_kernels_as_metal(monkeypatch):
    """Reductions over few rows split into two levels of row kernels (fusion/split.py), the tiny
    test arrays split as the chip would split large ones: each level runs as Metal."""
    from tests.codegen.targets import tuned
    from tests.fusion import test_split

    with tuned(None, **test_split.SMALL):
        lowered = {name: mlxtriton.optimize(fn, chip="m3").trace(*args).lower("metal")
                   for name, (fn, args) in test_split.CASES.items()}
        # most split in two levels (two or three kernels each), the others stay one kernel
        assert sum(len(k) > 1 for k in lowered.values()) >= len(lowered) // 2
        emulator.prepare([k for ks in lowered.values() for k in ks])
        monkeypatch.setenv(launch.INTERPRET_ENV, "metal")
        for name, (fn, args) in test_split.CASES.items():
            test_split._close(fn(*args), mlxtriton.optimize(fn, chip="m3")(*args), 1e-4)


@needs_compiler
def test_interpret_metal_runs_the_emulator_not_the_interpreter(monkeypatch):
    x = mx.random.normal((6, 300))
    (kernel,) = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1)).trace(x).lower("metal")
    monkeypatch.setenv(launch.INTERPRET_ENV, "metal")
    calls = []
    real = emulator.emulate
    monkeypatch.setattr(emulator, "emulate", lambda k: calls.append(k.name) or real(k))
    _close(mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1))(x), mx.softmax(x, axis=-1))
    assert calls == [kernel.name]


@needs_compiler
def test_an_emulated_kernel_that_misbehaves_fails_the_call(monkeypatch):
    from mlxtriton.codegen import dialects

    # every output index one past where it should be: the last thread writes out of bounds
    broken = dataclasses.replace(dialects.METAL, thread_in_grid="(thread_position_in_grid.x + 1)")
    monkeypatch.setitem(dialects.DIALECTS, "metal", broken)
    monkeypatch.setenv(launch.INTERPRET_ENV, "metal")
    f = mlxtriton.optimize(lambda x: mx.exp(x) * 2.0 + 1.0)
    with pytest.raises(emulator.MetalEmulatorError, match="out-of-bounds"):
        f(mx.random.normal((4, 256)))


def test_interpret_metal_refuses_cuda_kernels():
    k = lower(oracle.softmax(shape=(4, 64)), "cuda")
    with pytest.raises(ValueError, match="runs Metal kernels; .* is a cuda kernel"):
        launch._emulator(k, (), "metal")


@needs_compiler
def test_the_example_models_run_their_kernels_as_cuda(monkeypatch):
    """Optimised for an H100 on this CPU, every kernel of the example models runs as its CUDA
    source (the translation unit MLX hands NVRTC) in the emulator; the results equal plain MLX's."""
    cases = {name: (make(), examples.example_inputs(name)) for name, make in MODELS.items()}
    lowered = [k for fn, args in cases.values()
               for k in mlxtriton.optimize(fn, chip="h100").trace(*args).lower()]
    assert len(lowered) >= len(cases) and {k.target for k in lowered} == {"cuda"}
    emulator.prepare(lowered)
    monkeypatch.setenv(launch.INTERPRET_ENV, "cuda")
    calls = []
    real = emulator.emulate
    monkeypatch.setattr(emulator, "emulate", lambda k: calls.append(k.target) or real(k))
    for name, (fn, args) in cases.items():
        _close(mlxtriton.optimize(fn, chip="h100")(*args), fn(*args))
    assert calls and set(calls) == {"cuda"}


@needs_compiler
def test_an_emulated_cuda_kernel_that_misbehaves_fails_the_call(monkeypatch):
    from mlxtriton.codegen import dialects

    # every block one further than it should be: the last block reads past the rows
    broken = dataclasses.replace(dialects.CUDA, group_in_grid="(blockIdx.x + 1)")
    monkeypatch.setitem(dialects.DIALECTS, "cuda", broken)
    monkeypatch.setenv(launch.INTERPRET_ENV, "cuda")
    f = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1), chip="h100")
    with pytest.raises(emulator.CudaEmulatorError, match="out-of-bounds"):
        f(mx.random.normal((4, 256)))


def test_interpret_cuda_refuses_metal_kernels(monkeypatch):
    k = lower(oracle.softmax(shape=(4, 64)), "metal")
    with pytest.raises(ValueError, match="MLXTRITON_INTERPRET=cuda runs CUDA kernels; .* is a metal kernel"):
        launch._emulator(k, (), "cuda")
    # a program optimised for an Apple chip renders Metal: it cannot run as CUDA
    monkeypatch.setenv(launch.INTERPRET_ENV, "cuda")
    with pytest.raises(ValueError, match="is a metal kernel"):
        mlxtriton.optimize(lambda x: mx.softmax(x * 2.0, axis=-1), chip="m3")(mx.ones((4, 64)))


# -- the first-use guard on Apple GPUs -----------------------------------------------------------

@pytest.fixture
def apple_gpu(monkeypatch):
    """This host as an Apple GPU whose pipelines allow fewer threads per threadgroup than the
    kernels ask for: MLX's check in CustomKernel::eval_gpu raises, as it would on the device."""
    m3 = hw.profile("m3")
    monkeypatch.setattr(_target, "running_device", lambda device=None: m3)
    monkeypatch.setattr(launch, "_on_apple_gpu", lambda: True)
    monkeypatch.setattr(launch, "_FIRST_USE", {})
    monkeypatch.setattr(launch, "_KERNELS", launch.OrderedDict())
    monkeypatch.delenv(launch.INTERPRET_ENV, raising=False)

    def metal_kernel(**kwargs):
        def call(inputs, grid, threadgroup, **rest):
            size = threadgroup[0] * threadgroup[1] * threadgroup[2]
            raise ValueError(f"Thread group size ({size}) is greater than  the maximum allowed "
                             f"threads per threadgroup (64).")
        return call

    monkeypatch.setattr(mx.fast, "metal_kernel", metal_kernel)


def test_a_kernel_the_gpu_rejects_runs_as_mlx_ops_with_one_warning(apple_gpu):
    f = lambda x: mx.softmax(x * 2.0, axis=-1) + 1.0  # noqa: E731
    x = mx.random.normal((4, 1000))
    g = mlxtriton.optimize(f)
    (kernel,) = g.trace(x).lower("metal")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _close(g(x), f(x), 1e-6)
        _close(g(x * 3), f(x * 3), 1e-6)
        _close(mlxtriton.optimize(f)(x), f(x), 1e-6)  # another function, the same kernel
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1, messages
    assert kernel.name in messages[0] and "maximum allowed threads per threadgroup (64)" in messages[0]
    assert launch.unavailable(kernel.name).startswith("Thread group size (")
    assert f"runs as MLX ops: kernel {kernel.name} cannot run on this GPU: Thread group size" in str(g.explain(x))


def test_a_kernel_the_gpu_accepts_launches(apple_gpu, monkeypatch):
    launched = []

    def metal_kernel(**kwargs):
        def call(inputs, output_shapes, output_dtypes, **rest):
            launched.append(kwargs["name"])
            return [mx.zeros(s, d) for s, d in zip(output_shapes, output_dtypes)]
        return call

    monkeypatch.setattr(mx.fast, "metal_kernel", metal_kernel)
    x = mx.random.normal((4, 1000))
    g = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = g(x)
    (kernel,) = g.trace(x).lower("metal")
    assert launched[0] == kernel.name and launch.unavailable(kernel.name) is None
    assert np.array(out).sum() == 0  # the (stand-in) kernel's result, not MLX's


# -- on a Mac: pytest -m metal ---------------------------------------------------------------------

@pytest.mark.metal
def test_a_kernel_that_fails_to_compile_on_the_gpu_falls_back(monkeypatch):
    """Real Metal: a generated kernel whose source the Metal compiler rejects."""
    from mlxtriton.codegen import dialects

    monkeypatch.setattr(launch, "_FIRST_USE", {})
    broken = dataclasses.replace(dialects.METAL, barrier="metal::no_such_barrier();")
    monkeypatch.setitem(dialects.DIALECTS, "metal", broken)
    f = lambda x: mx.softmax(x, axis=-1)  # noqa: E731
    x = mx.random.normal((4, 4096))
    with pytest.warns(RuntimeWarning, match="cannot run on this GPU"):
        _close(mlxtriton.optimize(f)(x), f(x), 1e-5)
