"""The README's demo command runs every section on this machine and exits 0: the trace, MLX and
oracle evaluation, the full fusion decisions, one kernel's source, a timing against mx.compile
measured here, a split reduction and a generation with mlx-lm. Without JAX the oracle section,
without mlx-lm the generation, says it was skipped."""

import sys

import mlx.core as mx

import mlxtriton
from mlxtriton import demo, examples


def test_demo_runs_every_section(capsys):
    assert demo.main() == 0
    out = capsys.readouterr().out
    for section in range(1, 9):
        assert f"\n== {section}. " in out
    assert "evaluate(graph, x) == block(x) exactly: True" in out and "agrees within" in out
    assert "-- patterns:" in out and "-- fuse:" in out and "-- cache:" in out and "not fused:" in out
    assert "optimize(rms_norm_gate) on [" in out and "{'Fused': 1}" in out
    assert "--- source ---" in out and "pass 2: write rows" in out  # the whole kernel source
    assert "method: [" in out and "ms per call" in out and "mx.compile's speed" in out
    assert "relative error" in out and "all checks passed" in out
    assert "same tokens as plain mlx-lm: True; builds: 3" in out


def test_the_generation_section_without_mlx_lm_says_it_is_skipped(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlx_lm.generate", None)  # the import fails as if absent
    assert demo.generation_section("m3") is None
    assert capsys.readouterr().out.startswith("skipped: mlx-lm is not installed")


def test_the_oracle_section_without_jax_says_it_is_skipped(monkeypatch, capsys):
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")
    graph = mlxtriton.trace(block)(x)
    monkeypatch.setitem(sys.modules, "jax", None)  # `import jax` fails as if not installed
    from mlxtriton.graph import evaluate_jax

    monkeypatch.setattr(evaluate_jax, "jax_rules", lambda: __import__("jax"))
    assert demo.oracle_section(graph, x, block(x)) is None
    out = capsys.readouterr().out
    assert out.startswith("skipped: backend='jax' (the oracle) needs JAX") and "mlxtriton[oracle]" in out
    assert mx.array_equal(mlxtriton.evaluate(graph, x), block(x)).item()
