"""Public API layer: the main demo (``python -m mlxtriton demo``, README's first command).

Traces a Llama-style decoder block written in plain mlx.nn, prints its graph, evaluates it with MLX
and with the JAX oracle, and prints how closely they agree. Grows as features land.
"""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton import examples


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)))


def main(argv: list[str] | None = None) -> int:
    print(f"mlxtriton {mlxtriton.__version__} on MLX {mx.__version__}, device {mx.default_device()}")
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")

    _section("1. trace: an unmodified mlx.nn Llama block -> graph IR")
    t0 = time.perf_counter()
    graph = mlxtriton.trace(block)(x)
    t1 = time.perf_counter()
    mlxtriton.verify(graph)
    print(f"traced in {1e3 * (t1 - t0):.1f} ms: {len(graph.eqns)} equations, "
          f"{len(graph.constants)} constants (the weights), hash {graph.structural_hash[:16]}")
    print("primitives:", ", ".join(f"{k} x{n}" for k, n in graph.primitive_counts().items()))
    lines = str(graph).splitlines()
    shown = lines[:18] + ["    ..."] + lines[-3:] if len(lines) > 24 else lines
    print("\n".join(shown))

    _section("2. evaluate the graph with MLX: bit-identical to calling the block")
    expected = block(x)
    got = mlxtriton.evaluate(graph, x)
    same = mx.array_equal(got, expected).item()
    print(f"evaluate(graph, x) == block(x) exactly: {same}")

    _section("3. evaluate the same graph with the JAX oracle")
    try:
        oracle = mlxtriton.evaluate(graph, x, backend="jax")
    except ImportError:
        print("jax is not installed (pip install 'mlxtriton[test]'); skipping the oracle")
        return 0 if same else 1
    diff = np.abs(np.asarray(oracle, dtype=np.float64) - np.array(expected, dtype=np.float64))
    print(f"max |jax - mlx| = {diff.max():.3e}, mean = {diff.mean():.3e} "
          f"over {diff.size} float32 values (rtol 1e-5 / atol 1e-5 expected)")
    agree = bool(np.allclose(oracle, np.array(expected), rtol=1e-5, atol=1e-5))
    print(f"agreement: {'yes' if agree else 'NO'}")

    _section("4. make the weights graph inputs (for training): functionalize")
    apply, params = mlxtriton.functionalize(block)
    g2 = mlxtriton.trace(apply)(params, x)
    print(f"{len(g2.inputs)} inputs ({len(g2.inputs) - 1} parameters + x), {len(g2.constants)} constants")

    _section("5. optimize: fused regions become generated kernels")
    fast = mlxtriton.optimize(block)
    explanation = fast.explain(x)
    text = str(explanation).splitlines()
    print("\n".join(line if len(line) < 160 else line[:157] + "..." for line in text[:14]))
    if len(text) > 14:
        print(f"   ... ({len(text) - 14} more lines: print(f.explain(x)))")
    y = fast(x)
    close = bool(np.allclose(np.array(y), np.array(expected), rtol=1e-5, atol=1e-5))
    print(f"optimize(block)(x) matches block(x): {close} (on {mx.default_device()}: "
          f"{'generated kernels' if mx.is_available(mx.gpu) else 'fused regions as MLX ops'})")

    _section("6. one kernel, as Metal and as CUDA source (any host can render both)")
    rms_gate = mlxtriton.kernel(lambda x, w: mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x))
    xs, ws = mx.random.normal((64, 4096)), mx.ones((4096,))
    for target in ("metal", "cuda"):
        (k,) = rms_gate.lower(xs, ws, target=target)
        body = k.source.splitlines()
        print(f"-- {target}: {k.name}, grid {k.grid}, threadgroup {k.threadgroup}, {len(body)} lines")
        print("\n".join("   " + line for line in body[:8]) + "\n   ...")
    import os

    os.environ["MLXTRITON_INTERPRET"] = "1"
    try:
        interpreted = mlxtriton.kernel(lambda x, w: mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x))(xs, ws)
    finally:
        del os.environ["MLXTRITON_INTERPRET"]
    want = mx.fast.rms_norm(xs, ws, 1e-5) * mx.sigmoid(xs)
    err = float(mx.max(mx.abs(interpreted - want)).item())
    print(f"the kernel IR run by the NumPy interpreter: max |error| = {err:.2e}")

    _section("7. a gradient norm: one long reduction split in two levels for the chip")
    grad_norm = mlxtriton.optimize(lambda g: mx.sqrt(mx.sum(g * g)), chip="h200")
    g = mx.random.normal((1 << 22,))
    fuse_stage = next(s for s in grad_norm.explain(g, target="cuda").stages if s.stage == "fuse")
    print("\n".join("   " + line for line in fuse_stage.lines[:3]))
    norm_ok = abs(grad_norm(g).item() - np.linalg.norm(np.array(g, dtype=np.float64))) < 1e-3
    print(f"optimize(grad_norm)(g) matches the float64 norm: {norm_ok}")
    return 0 if (same and agree and close and err < 1e-4 and norm_ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
