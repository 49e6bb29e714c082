"""The projection kernel (`mlxtriton.codegen.projection`) launched on the GPU: against MLX's
matmul and quantized_matmul (in float32 on the CPU) for every dtype, dense and 4- and 8-bit
weights, with bias vectors or not, SwiGLU and RoPE epilogues, 1 and 8 rows and several schedules;
and greedy generation through ``optimize``, where the decode step's projections run as the kernel
(q's and k's RoPE and the SwiGLU gate in their epilogues), against plain mlx-lm. The Metal
emulator runs the same kernels in CI (tests/codegen/test_projection.py). Runs on the lent GPU
(``-m cuda``)."""

import dataclasses
import itertools

import mlx.core as mx
import pytest

import mlxtriton
from mlxtriton import hw, lm
from mlxtriton.codegen.projection import render_projection
from mlxtriton.graph.projection import Projection, Result, Rope
from mlxtriton.runtime.launch import launcher
from tests import lm_zoo
from tests.codegen.test_projection import SPECS, assert_close, operands, reference
from tests.fusion.test_projections import (decode_model, dequantized, greedy_against_float32,
                                          greedy_against_mlx_lm)

pytestmark = [pytest.mark.cuda]

WIDE = [Projection((8,), 2048, (512, 256, 256), "bfloat16"),
        Projection((1,), 4096, (1024,), "bfloat16", 4, 64),
        Projection((8,), 2048, (256, 256), "float16", 4, 64),
        Projection((1,), 1024, (128,), "float32"),
        Projection((1,), 1536, (1536, 256, 256), "bfloat16", biased=(True, True, True)),
        Projection((1,), 2048, (2048, 2048), "bfloat16", results=(Result((0, 1)),)),
        Projection((8,), 2048, (1024, 1024), "bfloat16", 4, 64, results=(Result((0, 1)),)),
        Projection((1, 1), 2048, (2048, 512, 512), "bfloat16",
                   results=(Result((2,)), Result((0,), Rope(32, 1, False, 1.0, None, ())),
                            Result((1,), Rope(8, 1, False, 1.0, None, ())))),
        Projection((8, 1), 2048, (2048, 512), "bfloat16",
                   results=(Result((0,), Rope(16, 1, False, 1.0, 500000.0, (8,))), Result((1,))))]


# (quantized, batch, model, activations, tolerance of the logits against plain mlx-lm's: half
# precision rounds differently at every op of the two graphs, quantization group size). Quantized
# models are checked against the same model in float32 instead (`greedy_against_float32`): in
# bfloat16 the two graphs' logits differ by up to 0.7 from rounding alone (the kernels emulated,
# tests/fusion/test_projections.py). With float16 activations quantized models run as MLX ops on
# CUDA (below); a float16 dense model checks float16 through the kernels. The model's hidden size
# (64) is a product's K: groups of 64 make it equal to the group size, where MLX takes another
# quantized kernel than real models do; groups of 32 do not.
GREEDY = [(False, 1, "llama", mx.float32, 2e-3, 64), (False, 3, "llama", mx.float32, 2e-3, 64),
          (True, 1, "llama", mx.bfloat16, None, 64), (True, 1, "llama", mx.bfloat16, None, 32),
          (False, 1, "qwen2", mx.float32, 2e-3, 64), (False, 1, "llama", mx.float16, 0.1, 64)]


@pytest.mark.parametrize("quantized,batch,name,dtype,tol,group", GREEDY, ids=str)
def test_greedy_generation_through_the_kernel_matches_mlx_lm(monkeypatch, quantized, batch, name,
                                                             dtype, tol, group):
    original = hw.tuning.tuning  # quantized products and epilogues even where a chip's rule is off
    monkeypatch.setattr(hw.tuning, "tuning", lambda p: dataclasses.replace(
        original(p), projection_quantized=True, projection_epilogues=True))
    model = decode_model(quantized, head_dim=64, group_size=group, name=name, dtype=dtype)
    f = mlxtriton.optimize(model)
    y = mx.stack([lm_zoo.prompt(40, seed=s) for s in range(batch)])
    if quantized:
        dense = dequantized(model, decode_model(False, head_dim=64, group_size=group, name=name))
        y, fast = greedy_against_float32(f, model, dense, y, 16)
    else:
        y, fast = greedy_against_mlx_lm(f, model, y, 16, tol)
    kernels = [k.name for k in f.lower(y, cache=fast)]
    assert any(n.startswith("mlxt_projection_") for n in kernels), kernels
    # a GPU trace holds q's and k's RoPE and the SwiGLU gate: the projections' epilogues take them
    counts = f.explain(y, cache=fast).graph.primitive_counts()
    assert "RoPE" not in counts and "Sigmoid" not in counts, counts


# The greedy test's two sides differ in their caches too (a bucket under a mask against mlx-lm's
# exact keys): each half of that difference on its own. The plain model on either cache runs the
# same ops but attention; optimize against plain rounds differently at every op (quantized models:
# the greedy test against float32).
HALVES = [(False, mx.bfloat16, 0.25), (False, mx.float16, 0.1), (True, mx.bfloat16, 0.25),
          (True, mx.float16, 0.15)]


@pytest.mark.parametrize("quantized,dtype,tol", HALVES, ids=str)
def test_the_plain_model_on_mlxtriton_caches_matches_it_on_mlx_lm_caches(quantized, dtype, tol):
    model = decode_model(quantized, head_dim=64, group_size=64, dtype=dtype)
    greedy_against_mlx_lm(model, model, lm_zoo.prompt(40)[None], 8, tol)


@pytest.mark.parametrize("quantized,dtype,tol", [h for h in HALVES if not h[0]], ids=str)
def test_optimize_matches_the_plain_model_on_the_same_caches(quantized, dtype, tol):
    model = decode_model(quantized, head_dim=64, group_size=64, dtype=dtype)
    greedy_against_mlx_lm(mlxtriton.optimize(model), model, lm_zoo.prompt(40)[None], 8, tol,
                          reference_caches=lm.make_prompt_cache)


def test_float16_with_quantized_weights_runs_as_mlx_ops_and_matches_mlx_lm():
    # through the optimised path this model's prefill gave zero logits on an H100 (and MLX's own
    # float16 quantized_matmul at its shapes gave zeros there): on CUDA it runs as traced, MLX's
    # ops, and says so
    model = decode_model(True, head_dim=64, group_size=64)
    f = mlxtriton.optimize(model)
    y, fast = greedy_against_mlx_lm(f, model, lm_zoo.prompt(40)[None], 4, 0.15)
    assert not list(f.lower(y, cache=fast))
    assert "float16 activations with quantized weights" in str(f.explain(y, cache=fast))


@pytest.mark.parametrize("schedule", [(1, 4, 2), (2, 4, 2), (4, 8, 1)], ids=str)
@pytest.mark.parametrize("spec", SPECS + WIDE, ids=str)
def test_the_kernel_matches_mlx(spec, schedule):
    if any(w % schedule[0] for w in spec.columns):
        pytest.skip("columns a SIMD group do not divide the widths")
    x, weights = operands(spec)
    kernel = launcher(render_projection(spec, "cuda", *schedule))
    got = kernel(x, *itertools.chain.from_iterable(weights))
    assert_close(got, reference(spec, x, weights), spec.dtype, spec.depth)
