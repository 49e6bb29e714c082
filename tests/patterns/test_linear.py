"""Rules 3 and 4: matmul + addend becomes AddMM (bias, residual, scaled product); activations
after a matmul and SwiGLU / GeGLU gates are recognised and left for fusion, which makes one
region of each gate; near misses; the JAX oracle."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from hypothesis import given, settings, strategies as st

import mlxtriton
from mlxtriton import examples
from mlxtriton.fusion import fuse
from mlxtriton.graph import verify
from mlxtriton.patterns import optimize_patterns
from tests.patterns._check import check, fired, misses


def rand(*shape, seed=0, dtype=mx.float32):
    return mx.random.normal(shape, key=mx.random.key(seed)).astype(dtype)


def test_bias_residual_and_scaled_products_become_addmm():
    x, w, b, r = rand(6, 8), rand(5, 8, seed=1), rand(5, seed=2), rand(6, 5, seed=3)
    for fn, args, alpha in ((lambda x, w, b: x @ w.T + b, (x, w, b), 1.0),
                            (lambda x, w, b: b + x @ w.T, (x, w, b), 1.0),
                            (lambda x, w, r: r + x @ w.T, (x, w, r), 1.0),
                            (lambda x, w, b: 0.5 * (x @ w.T) + b, (x, w, b), 0.5)):
        g2, report = check(fn, *args, tol=1e-5)
        assert fired(report) == ["matmul_add"]
        (e,) = [e for e in g2.eqns if e.primitive == "AddMM"]
        assert e.params["alpha"] == alpha and "Matmul" not in g2.primitive_counts()


def test_a_linear_layer_on_three_d_input_plus_bias():
    lin = nn.Linear(8, 5, bias=False)
    b = rand(5, seed=4)
    g2, report = check(lambda x: lin(x) + b, rand(2, 3, 8))
    assert fired(report) == ["matmul_add"] and g2.primitive_counts()["AddMM"] == 1


def test_what_stays_a_matmul():
    x, y = rand(2, 3, 4), rand(2, 4, 5, seed=1)
    g2, report = check(lambda x, y: x @ y + 1.5, x, y)  # batched products stay Matmul
    assert g2.primitive_counts()["Matmul"] == 1 and not fired(report)
    a, w = rand(4, 4), rand(4, 4, seed=2)
    g2, report = check(lambda a, w: (lambda p: p + mx.sin(p))(a @ w), a, w)  # addend reads the product
    assert "AddMM" not in g2.primitive_counts()


@pytest.mark.parametrize("chip", ["m3", "h100"])
def test_a_decode_steps_residual_add_leaves_the_gemv_alone_on_cuda(chip):
    """One row times a transposed weight is MLX's matrix-vector kernel on every backend; only
    Metal's AddMM runs it with the addend, so on CUDA the residual add joins the next norm."""
    def residual_block(h, w, nw):
        h = h + h @ w.T
        return mx.fast.rms_norm(h, nw, 1e-5), h

    w, nw = rand(64, 64, seed=1), rand(64, seed=2)
    for rows, addmm in ((1, chip == "m3"), (4, True)):
        g = mlxtriton.trace(residual_block)(rand(rows, 64), w, nw)
        g2, report = optimize_patterns(g, chip, fusing=True, on_rewrite=verify)
        assert ("AddMM" in g2.primitive_counts()) == addmm, (chip, rows)
        if not addmm:
            assert any("matrix-vector product" in m for m in misses(report))
            assert fuse(g2, chip).primitive_counts() == {"Fused": 1, "Matmul": 1, "Transpose": 1}
    g = mlxtriton.trace(residual_block)(rand(1, 64), w, nw)  # no fuse stage: AddMM
    assert "AddMM" in optimize_patterns(g, chip, fusing=False)[0].primitive_counts()
    x = rand(1, 64)
    got, want = mlxtriton.optimize(residual_block, chip=chip)(x, w, nw), residual_block(x, w, nw)
    for a, b in zip(got, want):
        assert mx.allclose(a, b, atol=1e-5).item()


def test_activations_after_a_matmul_are_recognised_and_left_for_fusion():
    lin = nn.Linear(8, 16)
    x = rand(4, 8)
    for act, name in ((nn.relu, "ReLU"), (nn.silu, "SiLU"), (nn.gelu, "GELU (erf form)"),
                      (nn.gelu_approx, "GELU (tanh form)"), (nn.gelu_fast_approx, "GELU (sigmoid form)")):
        g2, report = check(lambda x: act(lin(x)), x)
        (note,) = report.recognised
        assert note.text.startswith(f"{name} after AddMM"), note
    _, report = check(nn.gelu, x)  # not after a matmul: nothing to say
    assert not report.recognised


def test_gates_are_recognised_and_fuse_into_one_region():
    mlp = examples.init_eval(examples.SwiGLU(16, 32))
    x = rand(2, 3, 16)
    _, report = check(mlp, x, tol=1e-4)
    assert [r.rule for r in report.recognised if r.rule.endswith("_gate")] == ["swiglu_gate"]
    w1, w3 = rand(32, 16, seed=5), rand(32, 16, seed=6)
    _, report = check(lambda x: nn.gelu(x @ w1.T) * (x @ w3.T), x, tol=1e-4)
    assert "geglu_gate" in [r.rule for r in report.recognised]
    _, report = check(lambda x, y: nn.silu(x @ w1.T) * (y @ w3.T), x, x)  # two inputs: no gate
    assert "swiglu_gate" not in [r.rule for r in report.recognised]
    g = mlxtriton.optimize(mlp).graph(x)
    (region,) = [e for e in g.eqns if e.primitive == "Fused"]
    assert {"Sigmoid", "Multiply"} <= set(region.params["body"].primitive_counts())


@settings(max_examples=6)
@given(m=st.sampled_from([1, 5]), k=st.sampled_from([3, 8]), n=st.sampled_from([1, 6]),
       dtype=st.sampled_from([mx.float32, mx.float16, mx.bfloat16]), addend=st.sampled_from(["bias", "full"]))
def test_addmm_matches_the_oracle(m, k, n, dtype, addend):
    x, w = rand(m, k, dtype=dtype), rand(n, k, seed=1, dtype=dtype)
    c = rand(n, seed=2, dtype=dtype) if addend == "bias" else rand(m, n, seed=2, dtype=dtype)
    g2, report = check(lambda x, w, c: x @ w.T + c, x, w, c)
    if dtype == mx.float16:  # the product overflows past 65504 before the add
        assert "AddMM" not in g2.primitive_counts() and any("65504" in m for m in misses(report))
        return
    assert g2.primitive_counts().get("AddMM") == 1
