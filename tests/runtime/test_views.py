"""Views folded into the kernels around them in a bare replay (`mlxtriton.runtime.views`): a kernel
launched in its views' shape, a chain of views read by an MLX op made one reshape, views nothing
reads dropped; the replay computes what the graph does (kernels in the Metal emulator), and the
differentiable body keeps every view."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlxtriton
from mlxtriton.codegen.lowering import kernel_target
from mlxtriton.graph.core import Eqn, Var
from mlxtriton.runtime import compiled as compiled_module
from mlxtriton.runtime import emulator
from mlxtriton.runtime.views import keeps_order
from tests import lm_zoo
from tests.fusion.test_projections import (decode_model, greedy_against_mlx_lm,  # noqa: F401
                                           projections_on_apple)

pytestmark = pytest.mark.skipif(not emulator.has_compiler(), reason="no C++ compiler")


def _eqn(primitive, in_shape, out_shape, **params):
    return Eqn(primitive, (Var(in_shape, "float32"),), (Var(out_shape, "float32"),), params)


def test_views_that_keep_row_major_order():
    assert keeps_order(_eqn("Reshape", (8, 64), (8, 2, 32), shape=(8, 2, 32)))
    assert keeps_order(_eqn("Flatten", (8, 2, 32), (8, 64), start_axis=1, end_axis=2))
    # a transpose moving only axes of size 1 keeps the order; one exchanging longer axes does not
    assert keeps_order(_eqn("Transpose", (1, 4, 1, 32), (1, 1, 4, 32), axes=(0, 2, 1, 3)))
    assert not keeps_order(_eqn("Transpose", (2, 4, 1, 32), (4, 2, 1, 32), axes=(1, 0, 2, 3)))
    assert not keeps_order(_eqn("Broadcast", (1, 32), (4, 32), shape=(4, 32)))


def _executable(fn, *args):
    graph = mlxtriton.optimize(fn, chip="m3").graph(*args)
    return graph, compiled_module._Executable(graph, True, kernel_target("m3", None, "metal"))


def _same(got, want):
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=1e-5, atol=1e-6)


def test_a_kernel_writes_its_views_shape_and_a_chain_becomes_one_reshape(monkeypatch):
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")

    def f(x, w):
        y = mx.softmax(x, axis=-1)  # a kernel whose output only views read, then a matmul
        z = mx.transpose(y.reshape(8, 2, 32)[:, None], (0, 2, 1, 3))
        s = mx.exp(x).reshape(8, 1, 64)  # returned: the kernel keeps its shape
        m = mx.transpose((x @ mx.ones((64, 32))).reshape(8, 1, 8, 4), (1, 0, 2, 3))  # views between two matmuls
        return z @ w, s, s.reshape(64, 8), m @ w[:4]

    x, w = mx.random.normal((8, 64)), mx.random.normal((32, 16))
    graph, ex = _executable(f, x, w)
    # one region writes softmax and exp: softmax's three views (reshape, transpose, the matmul's
    # flatten) go, and the (64, 8) view of exp, which the region writes as well; the views
    # between the two matmuls (reshape, transpose, flatten) become one reshape
    assert ex.views_folded == 6, graph.eqns
    want = f(x, w)
    _same(ex.bare_body(x, w), want)
    _same(ex.body(x, w), want)


def test_an_output_read_by_anything_else_keeps_its_shape(monkeypatch):
    monkeypatch.setenv("MLXTRITON_INTERPRET", "metal")

    def f(x, w):
        y = mx.softmax(x, axis=-1)
        return y.reshape(16, 32) @ w, y @ mx.ones((64, 4))

    x, w = mx.random.normal((8, 64)), mx.random.normal((32, 16))
    _, ex = _executable(f, x, w)
    assert ex.views_folded == 0
    _same(ex.bare_body(x, w), f(x, w))


@pytest.fixture
def bare_replays(monkeypatch, projections_on_apple):
    """Every executable runs its bare body (what mx.compile replays on a GPU) even where the
    emulator runs the kernels outside mx.compile."""
    original = compiled_module._Executable.__init__
    folded = []

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.run = self.bare_body
        folded.append(self.views_folded)

    monkeypatch.setattr(compiled_module._Executable, "__init__", init)
    return folded


@pytest.mark.parametrize("quantized", [False, True])
def test_decoding_with_bare_replays_matches_mlx_lm(bare_replays, quantized):
    model = decode_model(quantized, head_dim=32, group_size=32)
    f = mlxtriton.optimize(model, chip="m3")
    greedy_against_mlx_lm(f, model, lm_zoo.prompt(9)[None], 3, 0.15 if quantized else 1e-4)
    assert max(bare_replays) > 0, bare_replays


def test_explain_counts_the_views_a_bare_replay_folds():
    def f(x, w):
        return mx.transpose(mx.softmax(x, axis=-1).reshape(8, 2, 32)[:, None], (0, 2, 1, 3)) @ w

    text = str(mlxtriton.optimize(f, chip="h100").explain(mx.ones((8, 64)), mx.ones((32, 16))))
    assert "3 view(s) around the kernels fold into them" in text, text
