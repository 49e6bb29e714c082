"""The public combinators end to end: results equal the original, passes compose in any order,
caching never retraces, `.lower()` / `.explain()` work on any host, `@kernel` is one kernel or a
clear error, and every generated kernel runs correctly through the NumPy interpreter
(MLXTRITON_INTERPRET=1) and type-checks as Metal."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import mlxtriton
from mlxtriton import examples
from mlxtriton.graph import verify
from mlxtriton.runtime import compiled as compiled_module
from tests.codegen import metal_check


def rms_gate(x, w):
    return mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x)


def softmax_t(x):
    return mx.softmax(x.T * 2.0, axis=-1)


def layer_norm_residual(x, r, w, b):
    return mx.fast.layer_norm(x + r, w, b, 1e-5)


def ce(logits, labels):
    return nn.losses.cross_entropy(logits, labels, reduction="mean")


def pointwise(x, y):
    z = mx.exp(x) * y + 1.0
    return z, mx.maximum(z, 0.0).astype(mx.float16)


CASES = {
    "rms_gate": (rms_gate, lambda: (mx.random.normal((6, 300)), mx.random.normal((300,)))),
    "softmax_t": (softmax_t, lambda: (mx.random.normal((70, 12)),)),
    "layer_norm_residual": (layer_norm_residual, lambda: (
        mx.random.normal((5, 64)), mx.random.normal((5, 64)), mx.random.normal((64,)), mx.random.normal((64,)))),
    "cross_entropy": (ce, lambda: (mx.random.normal((8, 50)), mx.random.randint(0, 50, (8,)))),
    "pointwise": (pointwise, lambda: (mx.random.normal((3, 40)), mx.random.normal((40,)))),
    "logsumexp": (lambda x: mx.logsumexp(x, axis=-1), lambda: (mx.random.normal((9, 33)),)),
    "column_sum": (lambda x: mx.sum(x * x, axis=0), lambda: (mx.random.normal((31, 7)),)),
}


def kernels_only(fn, chip="auto"):
    """The kernel pipeline without the pattern stage (fuse -> layout -> cache): what these tests
    check is fusion and code generation, which `optimize`'s rewrites into MLX fast ops (a
    decomposed norm becomes ``mx.fast.layer_norm``, as on a GPU trace) would take away."""
    return mlxtriton.cache(mlxtriton.layout(fn, chip=chip), chip=chip)


def _close(a, b, tol=2e-5):
    for x, y in zip(mlxtriton.graph.pytree.flatten(a)[0], mlxtriton.graph.pytree.flatten(b)[0]):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32)),
                                   rtol=tol, atol=tol)


@pytest.mark.parametrize("name", sorted(CASES))
def test_optimize_matches_the_original(name):
    fn, make = CASES[name]
    mx.random.seed(1)
    args = make()
    f = mlxtriton.optimize(fn)
    _close(f(*args), fn(*args))
    verify(f.graph(*args))
    g = verify(kernels_only(fn).graph(*args))
    assert g.primitive_counts().get("Fused", 0) >= 1


@pytest.mark.parametrize("name", sorted(CASES))
def test_generated_kernels_run_in_the_interpreter(name, monkeypatch):
    """The whole path on any host: trace -> fuse -> layout -> cache -> kernel IR -> NumPy."""
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    fn, make = CASES[name]
    mx.random.seed(2)
    args = make()
    f = mlxtriton.optimize(fn, chip="m3")
    _close(f(*args), fn(*args), tol=1e-4)


@pytest.mark.parametrize("chip", ["m1", "m3", "m5", "h200"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_kernel_type_checks_as_metal(name, chip):
    fn, make = CASES[name]
    lowered = kernels_only(fn, chip=chip).trace(*make()).lower("metal")
    assert lowered.target == "metal" and len(lowered) >= 1
    for k in lowered:
        assert metal_check.check(k) == [], k.as_text()


def test_lowered_kernels_carry_everything_mx_fast_needs():
    x, w = mx.ones((4, 256)), mx.ones((256,))
    for target in ("metal", "cuda"):
        (k,) = kernels_only(rms_gate).trace(x, w).lower(target)
        assert k.target == target
        assert k.input_shapes == ((4, 256), (256,)) and k.input_dtypes == ("float32", "float32")
        assert k.output_shapes == ((4, 256),) and k.output_dtypes == ("float32",)
        assert set(k.kernel_kwargs()) >= {"name", "input_names", "output_names", "source", "header"}
        assert set(k.call_kwargs()) >= {"grid", "threadgroup", "output_shapes", "output_dtypes"}
        assert "on chip" in k.as_text()


def test_combinators_compose_in_any_order():
    x, w = mx.random.normal((8, 128)), mx.random.normal((128,))
    a = mlxtriton.fuse(mlxtriton.layout(mlxtriton.cache(rms_gate)))
    b = mlxtriton.cache(mlxtriton.fuse(mlxtriton.layout(rms_gate)))
    c = mlxtriton.optimize(rms_gate)
    assert a.passes == b.passes and mlxtriton.rewrite(a).passes == c.passes
    assert a.graph(x, w) == b.graph(x, w)
    assert mlxtriton.rewrite(b).graph(x, w) == c.graph(x, w)
    # each alone is a graph -> graph pass: fuse leaves no on-chip decision, cache records one
    assert mlxtriton.fuse(rms_gate).graph(x, w).eqns[0].params["schedule"] is None
    assert mlxtriton.cache(rms_gate).graph(x, w).eqns[0].params["schedule"].registers


def test_repeated_calls_do_not_retrace(monkeypatch):
    calls = []
    real = compiled_module.trace_call
    monkeypatch.setattr(compiled_module, "trace_call", lambda *a, **k: calls.append(1) or real(*a, **k))
    f = mlxtriton.optimize(rms_gate)
    x, w = mx.ones((4, 64)), mx.ones((64,))
    for _ in range(5):
        f(x, w)
    assert len(calls) == 1
    f(mx.ones((8, 64)), w)  # a new shape is a new entry
    assert len(calls) == 2
    f.cache_size = 1
    f(mx.ones((2, 64)), w)
    assert len(f._cache) == 1  # bounded: the oldest entry went


def test_repeated_calls_run_mlx_s_cached_graph_without_python_of_ours():
    # a positional-array call goes through one mx.compile: MLX's cache (shapes, dtypes,
    # device) finds the traced graph; the body that looks up our entry runs only when MLX
    # traces a new signature, or under a transformation, which calls it with tracers
    f = mlxtriton.optimize(rms_gate)
    x, w = mx.random.normal((4, 64)), mx.random.normal((64,))
    _close(f(x, w), rms_gate(x, w))
    calls = _spy_on_dispatch(f)
    for _ in range(3):
        _close(f(x, w), rms_gate(x, w))
    assert calls == []
    _close(mx.grad(lambda x: f(x, w).sum())(x), mx.grad(lambda x: rms_gate(x, w).sum())(x))
    assert calls == ["body"]
    # outputs mx.compile cannot return (a dict) and non-array arguments take the general path
    g = mlxtriton.optimize(lambda x, s: mx.softmax(x * s, axis=-1))
    for s in (2.0, 3.0):
        _close(g(x, s), mx.softmax(x * s, axis=-1))
    assert not g._plain_calls
    d = mlxtriton.optimize(lambda x: {"y": mx.softmax(x, axis=-1)})
    _close(d(x)["y"], mx.softmax(x, axis=-1))
    assert d._dispatch is None
    f.clear_cache()
    assert not f._plain_calls
    _close(f(x, w), rms_gate(x, w))


def _spy_on_dispatch(f) -> list[str]:
    """Which of each dispatch entry's two bodies runs ("body": kernels inside their derivative
    rules, "bare": kernels bare), appended to the list returned."""
    calls: list[str] = []
    for key, (body, bare) in list(f._plain_calls.items()):
        f._plain_calls[key] = (lambda *a, run=body: calls.append("body") or run(*a),
                               lambda *a, run=bare: calls.append("bare") or run(*a))
    return calls


def test_only_calls_no_transformation_sees_trace_the_bare_kernels(monkeypatch):
    # MLX replays a compiled trace only for inputs none of which is a tracer: the trace our own
    # mx.compile makes holds the kernels bare; grad, jvp, vmap, an outer mx.compile's trace and
    # disabled compilation call the body itself, with the kernels inside their derivative rules
    f = mlxtriton.optimize(rms_gate)
    x, w = mx.random.normal((4, 64)), mx.random.normal((64,))
    f(x, w)
    calls = _spy_on_dispatch(f)
    f._dispatch = f._new_dispatch()  # MLX traces the signature again
    for _ in range(3):
        _close(f(x, w), rms_gate(x, w))
    assert calls == ["bare"]  # traced once, then replayed without Python of ours
    _close(mx.grad(lambda x: f(x, w).sum())(x), mx.grad(lambda x: rms_gate(x, w).sum())(x))
    _close(mx.jvp(lambda x: f(x, w), [x], [x])[1], mx.jvp(lambda x: rms_gate(x, w), [x], [x])[1])
    _close(mx.compile(lambda x: f(x, w))(x), rms_gate(x, w))
    assert calls == ["bare", "body", "body", "body"]
    mx.disable_compile()
    try:
        _close(f(x, w), rms_gate(x, w))
    finally:
        mx.enable_compile()
    assert calls[-1] == "body"
    # the general path (a module, keyword arguments) chooses the same way under its mx.compile
    traced, real = [], compiled_module._tracing
    monkeypatch.setattr(compiled_module, "_tracing", lambda p: traced.append(real(p)) or traced[-1])
    g = mlxtriton.optimize(rms_gate)
    _close(g(x, w=w), rms_gate(x, w))
    _close(mx.grad(lambda x: g(x, w=w).sum())(x), mx.grad(lambda x: rms_gate(x, w).sum())(x))
    assert traced == [True, False]


def test_bare_bodies_launch_kernels_bare(monkeypatch):
    # a launching executable's bare body calls each kernel bare; its body goes through the
    # kernel's derivative rules (stand-ins here for the launch and for runtime/autodiff)
    from mlxtriton.codegen.lowering import kernel_target
    from mlxtriton.graph import dtypes

    launched, wrapped = [], []

    def fake_launcher(kernel, constants=()):
        def run(*arrays):
            launched.append(kernel.name)
            return [mx.zeros(s, dtypes.to_mx(d)) for s, d in zip(kernel.output_shapes, kernel.output_dtypes)]
        return run

    def fake_differentiable(forward, *_, **__):
        return lambda *a: wrapped.append(1) or forward(*a)

    monkeypatch.setattr(compiled_module, "launcher", fake_launcher)
    monkeypatch.setattr(compiled_module, "differentiable", fake_differentiable)
    x = mx.random.normal((4, 64))
    graph = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1), chip="h200").graph(x)
    ex = compiled_module._Executable(graph, True, kernel_target("h200", None, "cuda"))
    assert ex.bare_body is not ex.body
    ex.bare_body(x)
    assert len(launched) == 1 and not wrapped
    ex.body(x)
    assert len(launched) == 2 and wrapped == [1]


def test_modules_read_their_current_weights_without_retracing():
    model = examples.init_eval(examples.MLP(dims=16, hidden_dims=32))
    f = mlxtriton.optimize(model)
    x = mx.random.normal((3, 16))
    _close(f(x), model(x))
    model.update(nn.utils.tree_map(lambda p: p * 0.5, model.parameters()))
    _close(f(x), model(x))
    assert len(f._cache) == 1


def test_kernel_decorator_is_one_kernel_or_says_why():
    @mlxtriton.kernel
    def softmax_gate(x):
        return mx.softmax(x, axis=-1) * mx.sigmoid(x)

    x = mx.random.normal((4, 100))
    _close(softmax_gate(x), softmax_gate.__wrapped__(x))
    assert len(softmax_gate.trace(x).lower("cuda")) == 1

    @mlxtriton.kernel
    def with_matmul(x, w):
        return mx.softmax(x @ w, axis=-1)

    with pytest.raises(mlxtriton.SingleKernelError, match="Matmul"):
        with_matmul(x, mx.ones((100, 8)))
    with pytest.raises(mlxtriton.SingleKernelError, match="Matmul"):
        with_matmul.lower(x, mx.ones((100, 8)))


@pytest.mark.parametrize("shape", [(64, 32), (2048, 1024)])
def test_a_kernel_reads_a_transposed_input_in_place(monkeypatch, shape):
    # Where a copy would beat strided reads for optimize, one kernel asked for reads in place.
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    fn = lambda x: mx.softmax(mx.transpose(x), axis=-1)  # noqa: E731
    f, x = mlxtriton.kernel(fn), mx.random.normal(shape)
    assert len(f.trace(x).lower("cuda")) == 1
    assert "one kernel was asked for: read in place" in str(f.trace(x).explain("cuda"))
    _close(f(x), fn(x))


def test_a_kernel_may_return_views_of_its_outputs(monkeypatch):
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    x = mx.random.normal((64, 32))
    for fn in (lambda x: mx.softmax(x, axis=-1).T, lambda x: mx.softmax(x, axis=-1).reshape(32, 64)):
        f = mlxtriton.kernel(fn)
        assert len(f.trace(x).lower("cuda")) == 1
        _close(f(x), fn(x))
    # a reshape of the transposed output is a copy: a second kernel
    with pytest.raises(mlxtriton.SingleKernelError, match="Reshape"):
        mlxtriton.kernel(lambda x: mx.softmax(x, axis=-1).T.reshape(-1))(x)


def test_explain_says_what_did_not_fuse_and_why():
    x, w = mx.random.normal((4, 32)), mx.random.normal((32, 32))
    text = str(mlxtriton.optimize(lambda x, w: mx.softmax(x @ w, axis=-1)).explain(x, w))
    assert "-- fuse" in text and "-- cache" in text and "-- kernels (1)" in text
    assert "not fused: #" in text and "Matmul" in text


def test_explain_says_where_the_kernels_run(monkeypatch):
    x = mx.random.normal((4, 32))
    f = mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1), chip="h100")
    heads = {}
    for mode in ("", "1", "cuda"):
        monkeypatch.setenv("MLXTRITON_INTERPRET", mode)
        heads[mode] = str(f.explain(x)).splitlines()[0]
    if not mx.metal.is_available() and not mx.cuda.is_available():
        assert heads[""].endswith("where fused regions run as MLX ops")
    assert heads["1"].endswith("the kernels run in the NumPy interpreter (MLXTRITON_INTERPRET)")
    assert heads["cuda"].endswith("the kernels run in the CUDA kernel emulator (MLXTRITON_INTERPRET)")


def test_unknown_chip_is_a_clear_error():
    with pytest.raises(ValueError, match="m3"):
        mlxtriton.optimize(rms_gate, chip="m99")


def test_outputs_equal_up_to_size_1_axes_are_one_kernel(monkeypatch):
    # Fusion makes one pointwise region writing f32[8,1,1,1] and f32[8] here: one domain, the
    # size-1 axes at coordinate 0.
    def f(v, w, b, g):
        s = mx.rsqrt(v + 1e-5)
        scale = mx.broadcast_to(s.reshape(8, 1, 1, 1), w.shape) * mx.broadcast_to(g.reshape(8, 1, 1, 1), w.shape)
        return w * scale, (-b * s) * g

    mx.random.seed(4)
    args = (mx.random.uniform(shape=(8,)) + 1, mx.random.normal((8, 3, 3, 3)), mx.random.normal((8,)),
            mx.random.normal((8,)))
    lowered = mlxtriton.optimize(f).trace(*args).lower("cuda")
    assert not lowered.fallbacks and len(lowered) == 2
    assert sorted(lowered[0].output_shapes) == [(8,), (8, 1, 1, 1)]
    for k in mlxtriton.optimize(f).trace(*args).lower("metal"):
        assert metal_check.check(k) == [], k.as_text()
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    _close(mlxtriton.optimize(f)(*args), f(*args))


def test_a_row_result_reshaped_across_size_1_axes_is_one_kernel(monkeypatch):
    # Batch 1: the softmax's (1, 8, 64) rows are read back as (8, 64); the row's max and sum
    # stay at their own row's index through the reshape.
    f = lambda x: mx.softmax(x, axis=-1).reshape(-1, 64)
    x = mx.random.normal((1, 8, 64))
    (kernel,) = mlxtriton.kernel(f).trace(x).lower("cuda")
    assert kernel.output_shapes == ((8, 64),)
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    _close(mlxtriton.kernel(f)(x), f(x))


@pytest.mark.parametrize("chip", ["h100", "m3"])
def test_softmax_over_axis_0_or_of_a_transpose_is_one_kernel(chip, monkeypatch):
    # a column kernel; a row kernel reading the transposed input where it stands
    x = mx.random.normal((64, 96), key=mx.random.key(3))
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    for f in (lambda x: mx.softmax(x, axis=0), lambda x: mx.softmax(mx.transpose(x), axis=-1)):
        k = mlxtriton.kernel(f, chip=chip)
        (kernel,) = k.trace(x).lower("cuda")
        assert kernel.output_shapes == (f(x).shape,)
        _close(k(x), f(x))


@pytest.mark.parametrize("chip", ["h100", "m3"])
def test_optimize_reads_a_softmax_of_a_transpose_coalesced(chip, monkeypatch):
    # the rows are x's columns: one column kernel over x, the transpose after it a view
    x = mx.random.normal((64, 96), key=mx.random.key(3))
    f = lambda x: mx.softmax(mx.transpose(x), axis=-1)
    lowered = mlxtriton.optimize(f, chip=chip).trace(x).lower("cuda")
    (kernel,) = lowered.kernels
    assert kernel.output_shapes == ((64, 96),)
    assert lowered.graph.primitive_counts() == {"Fused": 1, "Transpose": 1}
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    _close(mlxtriton.optimize(f, chip=chip)(x), f(x))
    g = lambda x: mx.exp(f(x))  # a pointwise reader would read the view strided: no rewrite
    assert mlxtriton.optimize(g, chip=chip).trace(x).lower("cuda").graph.primitive_counts() == {"Fused": 1}


def test_a_region_codegen_cannot_write_runs_as_mlx_ops(monkeypatch):
    # Every region the fusion pass makes today is one kernel; a future gap must still run, as
    # MLX ops, and say so. Inject one: codegen refuses the row region.
    from mlxtriton.codegen import lowering
    from mlxtriton.codegen.builder import RegionError

    build = lowering.build

    def refuse(region, *a, **k):
        if any(o.primitive == "Softmax" for o in region.ops):
            raise RegionError("injected: codegen cannot write this region")
        return build(region, *a, **k)

    monkeypatch.setattr(lowering, "build", refuse)
    f = lambda x: mx.softmax(x * 2, axis=-1) + 1
    x = mx.random.normal((4, 32))
    lowered = mlxtriton.optimize(f).trace(x).lower("cuda")
    assert lowered.fallbacks and "runs as MLX ops: injected" in lowered.as_text()
    assert "cannot be generated: injected" in str(mlxtriton.optimize(f).trace(x).explain("cuda"))
    monkeypatch.setenv("MLXTRITON_INTERPRET", "1")
    _close(mlxtriton.optimize(f)(x), f(x))
    with pytest.raises(mlxtriton.SingleKernelError, match="injected"):
        mlxtriton.kernel(f)(x)


def test_kernel_decomposes_fast_norm_primitives_into_its_one_kernel():
    # On a GPU stream mx.fast.rms_norm traces as one RMSNorm primitive; build that graph by hand
    # here (the CPU stream decomposes it) and check @kernel's decomposition.
    from mlxtriton.graph import GraphBuilder
    from mlxtriton.runtime.compiled import decompose_fast_ops

    b = GraphBuilder()
    x, w = b.input((4, 256), "float32"), b.input((256,), "float32")
    (n,) = b.add("RMSNorm", [x, w], eps=1e-5)
    (s,) = b.add("Sigmoid", [x])
    (y,) = b.add("Multiply", [n, s])
    g = verify(b.build([y]))
    d = verify(decompose_fast_ops(g))
    assert "RMSNorm" not in d.primitive_counts() and d.primitive_counts()["Reduce"] == 1
    xs, ws = mx.random.normal((4, 256)), mx.random.normal((256,))
    assert mx.allclose(mlxtriton.evaluate(d, xs, ws), mlxtriton.evaluate(g, xs, ws)).item()
    fused = mlxtriton.fusion.fuse(d)
    assert fused.primitive_counts() == {"Fused": 1}


def test_kernel_decomposes_fast_norms_as_mlx_gpu_kernels_compute():
    # A GPU trace's norm primitive is MLX's GPU kernel, which divides its sums by the row length:
    # with eps = 0 a layer norm of a constant row of 41 is NaN there (41 / 41 is exactly 1); MLX's
    # CPU fallback, which multiplies by fl(1/41), gives +-1. @kernel's decomposition is the kernel's.
    from mlxtriton.graph import GraphBuilder
    from mlxtriton.runtime.compiled import decompose_fast_ops

    b = GraphBuilder()
    x, w, bias = b.input((3, 41), "float32"), b.input((41,), "float32"), b.input((), "float32")
    (ln,) = b.add("LayerNorm", [x, w, bias], eps=0.0)  # a 0-d bias is MLX's "no bias"
    (rms,) = b.add("RMSNorm", [x, w], eps=0.0)
    d = verify(decompose_fast_ops(b.build([ln, rms])))
    assert not {"LayerNorm", "RMSNorm"} & set(d.primitive_counts())
    assert d.primitive_counts()["Divide"] == 3  # two means, one mean square
    xs = mx.stack([mx.ones((41,)), mx.full((41,), 3.0), mx.arange(41, dtype=mx.float32)])
    got_ln, got_rms = mlxtriton.evaluate(d, xs, mx.full((41,), 2.0), mx.array(5.0))
    assert mx.isnan(got_ln[:2]).all().item() and not mx.isnan(got_ln[2]).any().item()
    want = mx.fast.layer_norm(xs[2:], mx.full((41,), 2.0), None, 0.0)
    assert mx.allclose(got_ln[2:], want, atol=1e-5).item()
    want = mx.fast.rms_norm(xs, mx.full((41,), 2.0), 0.0)
    assert mx.allclose(got_rms, want, atol=1e-5).item()


def test_trace_stages_a_call_whose_function_takes_a_target_keyword(monkeypatch):
    from mlxtriton.runtime import compiled as compiled_module

    def loss(logits, target):
        return nn.losses.cross_entropy(logits, target)

    f = mlxtriton.optimize(loss, chip="m3")
    logits, labels = mx.random.normal((4, 16)), mx.array([1, 2, 3, 4])
    traces = []
    original = compiled_module.trace_call
    monkeypatch.setattr(compiled_module, "trace_call",
                        lambda *a, **k: traces.append(1) or original(*a, **k))
    staged = f.trace(logits, target=labels)  # every argument is the function's
    assert "-- fuse:" in str(staged.explain())
    assert len(staged.lower()) == len(staged.lower("cuda")) == 1
    assert staged.lower("cuda").target == "cuda" and staged.lower().target == "metal"
    assert staged.graph.primitive_counts() == {"Fused": 1}
    assert len(traces) == 1  # explain, lower and graph reuse the one trace


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_float16_with_quantized_weights_runs_as_traced_on_a_cuda_gpu(dtype):
    # a float16 4-bit model's logits came out wrong through the optimised path on an H100; until
    # the fault is found such programs run as MLX ops there, and explain says so
    from mlxtriton import hw

    wq, scales, biases = mx.quantize(mx.random.normal((64, 64)).astype(dtype), 64, 4)

    def f(x):
        return mx.softmax(mx.quantized_matmul(x, wq, scales, biases, True, 64, 4), axis=-1)

    source = mlxtriton.optimize(f, chip="h100").trace(mx.ones((2, 64), dtype)).source
    on_cuda = hw.Target(hw.profile("h100"), hw.profile("h100"))
    graph, stages = compiled_module.run_passes(source, frozenset(compiled_module.PIPELINE), on_cuda)
    if dtype == mx.float16:
        assert graph is source and [s.stage for s in stages] == ["fallback"]
        assert "float16 activations with quantized weights (QuantizedMatmul)" in stages[0].lines[0]
    else:
        assert [s.stage for s in stages] == list(compiled_module.PIPELINE)
    # traced on this CPU for the H100, the program is optimised as usual
    here, _ = compiled_module.run_passes(source, frozenset(compiled_module.PIPELINE), "h100")
    assert here is not source
