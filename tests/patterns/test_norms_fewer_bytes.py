"""The norm rules every GPU chip follows without a measurement (`norms.FUSED_WHEN_FEWER_BYTES`,
`norms.FUSED_WITH_ITS_INPUT`): a norm read only by pointwise work (RMS norm x SiLU gate), or whose
input pointwise work computes (a residual add), goes to the fuse stage decomposed and shares one
generated kernel with that work, from a CPU trace (decomposed) and a GPU trace (the fast-op
primitive) alike; a norm of a matmul read by a matmul, or by nothing but the caller, keeps MLX's
fast op."""

import mlx.core as mx
import mlx.nn as nn
import pytest

import mlxtriton
from mlxtriton import examples
from mlxtriton.fusion import fuse
from mlxtriton.graph import GraphBuilder, evaluate, verify
from mlxtriton.patterns import optimize_patterns

APPLE = ("m1", "m3", "m4-max", "m5")


def rms_norm_gate(x, w, g):
    return mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g)


@pytest.mark.parametrize("chip", APPLE + ("h200",))
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_rms_norm_times_a_gate_is_one_kernel_on_every_gpu_chip(chip, dtype):
    x = mx.random.normal((8, 256), key=mx.random.key(1)).astype(dtype)
    w = mx.random.normal((256,), key=mx.random.key(2)).astype(dtype)
    f = mlxtriton.optimize(rms_norm_gate, chip=chip)
    assert f.graph(x, w, x).primitive_counts() == {"Fused": 1}
    assert mx.allclose(f(x, w, x), rms_norm_gate(x, w, x), atol=1e-2 if dtype == mx.bfloat16 else 1e-5).item()
    if chip in APPLE:
        assert "only pointwise work reads it" in str(f.explain(x, w, x))


def _gpu_trace(norm: str, gated: bool):
    """What a trace on a GPU stream holds: the fast-op primitive, not its decomposition."""
    gb = GraphBuilder()
    x, w, b, g = (gb.input((8, 256), "float32"), gb.input((256,), "float32"),
                  gb.input((256,), "float32"), gb.input((8, 256), "float32"))
    inputs = [x, w, b] if norm == "LayerNorm" else [x, w]
    (y,) = gb.add(norm, inputs, eps=1e-5)
    if gated:
        (s,) = gb.add("Sigmoid", [g])
        (y,) = gb.add("Multiply", [y, s])
    return gb.build([y]), [x, w, b, g] if gated else [x, w, b]


@pytest.mark.parametrize("norm", ["RMSNorm", "LayerNorm"])
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_a_gated_fast_op_from_a_gpu_trace_is_decomposed_and_fuses_into_one_kernel(norm, chip):
    graph, _ = _gpu_trace(norm, gated=True)
    flat = [mx.random.normal(v.shape, key=mx.random.key(i)) for i, v in enumerate(graph.inputs)]
    rewritten, report = optimize_patterns(graph, chip, fusing=True, on_rewrite=verify)
    assert norm not in rewritten.primitive_counts()
    assert fuse(rewritten, chip).primitive_counts() == {"Fused": 1}
    assert mx.allclose(evaluate(rewritten, *flat), evaluate(graph, *flat), atol=1e-5).item()
    kept, _ = optimize_patterns(graph, chip, fusing=False)  # no fuse stage to hand it to
    assert kept.primitive_counts()[norm] == 1


@pytest.mark.parametrize("chip", APPLE)
def test_a_norm_alone_or_read_by_a_matmul_keeps_the_fast_op_on_apple_chips(chip):
    graph, _ = _gpu_trace("RMSNorm", gated=False)
    assert optimize_patterns(graph, chip, fusing=True)[0].primitive_counts() == {"RMSNorm": 1}
    x = mx.random.normal((4, 64))
    alone = mlxtriton.optimize(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), chip=chip)
    assert alone.graph(x, mx.ones((64,))).primitive_counts() == {"RMSNorm": 1}
    block = examples.init_eval(examples.LlamaBlock())
    (h,) = examples.example_inputs("llama")
    assert mlxtriton.optimize(block, chip=chip).graph(h).primitive_counts()["RMSNorm"] == 2


@pytest.mark.cuda
@pytest.mark.metal
def test_on_a_gpu_the_traced_fast_op_times_a_gate_launches_one_kernel():
    x = mx.random.normal((64, 4096), key=mx.random.key(3))
    w = mx.random.normal((4096,), key=mx.random.key(4))
    f = mlxtriton.optimize(rms_norm_gate)
    assert mlxtriton.trace(rms_norm_gate)(x, w, x).primitive_counts().get("RMSNorm") == 1  # a GPU trace
    assert f.graph(x, w, x).primitive_counts() == {"Fused": 1} and len(f.lower(x, w, x)) == 1
    assert mx.allclose(f(x, w, x), rms_norm_gate(x, w, x), atol=1e-4).item()


def _residual_then_norm(norm: str, producer: str):
    """A GPU trace's layer boundary: h = x + r (the residual stream, read on by the caller), the
    norm of h (a fast op) read by a matmul; or h computed by a matmul."""
    gb = GraphBuilder()
    x = gb.input((8, 256), "float32")
    r = gb.input((8, 256) if producer == "add" else (256, 256), "float32")
    w, b, m = gb.input((256,), "float32"), gb.input((256,), "float32"), gb.input((256, 64), "float32")
    (h,) = gb.add("Add" if producer == "add" else "Matmul", [x, r])
    (y,) = gb.add(norm, [h, w, b] if norm == "LayerNorm" else [h, w], eps=1e-5)
    (z,) = gb.add("Matmul", [y, m])
    return gb.build([z, h])


@pytest.mark.parametrize("norm", ["RMSNorm", "LayerNorm"])
@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_a_norm_of_a_residual_add_shares_its_kernel(norm, chip):
    graph = _residual_then_norm(norm, "add")
    flat = [mx.random.normal(v.shape, key=mx.random.key(i)) for i, v in enumerate(graph.inputs)]
    rewritten, report = optimize_patterns(graph, chip, fusing=True, on_rewrite=verify)
    assert norm not in rewritten.primitive_counts()
    # one generated kernel writes the sum and the norm; the matmul reads the norm
    assert fuse(rewritten, chip).primitive_counts() == {"Fused": 1, "Matmul": 1}
    for got, want in zip(evaluate(rewritten, *flat), evaluate(graph, *flat)):
        assert mx.allclose(got, want, atol=1e-4).item()
    if norm == "RMSNorm" or chip == "m3":  # (on CUDA a LayerNorm is decomposed anyway: measured)
        assert "its input is computed by pointwise work" in "\n".join(report.lines())


@pytest.mark.parametrize("chip", ["m3", "h200"])
def test_a_norm_of_a_matmul_keeps_the_fast_op(chip):
    graph = _residual_then_norm("RMSNorm", "matmul")  # the add a GEMM's epilogue took: AddMM
    assert optimize_patterns(graph, chip, fusing=True)[0].primitive_counts()["RMSNorm"] == 1
    assert optimize_patterns(_residual_then_norm("RMSNorm", "add"), chip, fusing=False)[0] \
        .primitive_counts()["RMSNorm"] == 1  # no fuse stage to hand it to
