"""Public API layer: the main demo (``python -m mlxtriton demo``, the README's first command).

Traces a Llama-style decoder block written in plain mlx.nn, evaluates the graph with MLX and with
the JAX oracle (optional: skipped, and said so, without JAX), shows what optimize decided for it,
the one kernel RMS norm x SiLU gate becomes and its source, times that function against
mx.compile on this machine, splits a long reduction for the chip, and generates text with an
mlx-lm model built from a config (optional: skipped, and said so, without mlx-lm). May import any
layer.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mlxtriton
from mlxtriton import examples, hw


def _section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)), flush=True)


def rms_norm_gate(x: mx.array, w: mx.array, g: mx.array) -> mx.array:
    """RMS norm times a SiLU gate (Mamba, gated MLPs): two kernels in mx.compile."""
    return mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g)


def _device() -> str:
    """This machine's device, in words."""
    if mx.is_available(mx.gpu):
        return mx.device_info().get("device_name", "GPU")
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _timed_runs(fns: dict, args: tuple, calls: int, runs: int) -> dict[str, float]:
    """Seconds per call for each function: ``runs`` runs of ``calls`` calls queued with
    mx.async_eval and one synchronisation, the functions' runs interleaved so that a drift of
    the machine falls on all alike; the median run."""
    for fn in fns.values():
        for _ in range(3):
            mx.eval(fn(*args))
    mx.synchronize()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                mx.async_eval(fn(*args))
            mx.synchronize()
            times[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def oracle_section(graph, x: mx.array, expected: mx.array) -> bool | None:
    """Evaluate ``graph`` with the JAX oracle and compare; None (and a line saying so) without JAX."""
    try:
        oracle = mlxtriton.evaluate(graph, x, backend="jax")
    except ModuleNotFoundError as e:
        print(f"skipped: {e}")
        return None
    diff = np.abs(np.asarray(oracle, dtype=np.float64) - np.array(expected, dtype=np.float64))
    agrees = bool(np.allclose(oracle, np.array(expected), rtol=1e-5, atol=1e-5))
    print(f"max |jax - mlx| = {diff.max():.2e} over {diff.size} float32 values: "
          f"{'agrees' if agrees else 'DISAGREES'} within rtol 1e-5, atol 1e-5")
    return agrees


def generation_section(chip: str) -> bool | None:
    """Greedy decoding of a small llama (random weights, token ids) by mlx-lm's ``generate_step``,
    plain and through optimize with `mlxtriton.lm`'s caches: same tokens, and the builds it took.
    None (and says so) where mlx-lm is not installed."""
    try:
        from mlx_lm.generate import generate_step
        from mlx_lm.models import llama
    except ImportError:
        print("skipped: mlx-lm is not installed (pip install 'mlxtriton[test]', Python >= 3.11)")
        return None
    from mlx.utils import tree_map

    from mlxtriton import lm

    args = llama.ModelArgs(model_type="llama", hidden_size=256, num_hidden_layers=4,
                           intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                           rms_norm_eps=1e-5, vocab_size=1024)
    mx.random.seed(0)
    model = llama.Model(args)
    # mlx.nn's initial weights make a random model repeat one token; larger ones make it wander
    model.update(tree_map(lambda p: 4 * p, model.parameters()))
    mx.eval(model.parameters())
    prompt = mx.random.randint(0, args.vocab_size, (24,), key=mx.random.key(1))

    def greedy(logprobs: mx.array) -> mx.array:
        return mx.argmax(logprobs, axis=-1)

    def tokens(fn, cache) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        out = [t for t, _ in generate_step(prompt, fn, max_tokens=48, sampler=greedy,
                                           prompt_cache=cache)]
        return out, time.perf_counter() - t0

    from mlx_lm.models.cache import make_prompt_cache

    plain, plain_s = tokens(model, make_prompt_cache(model))
    fast = mlxtriton.optimize(model, chip=chip)
    ours, ours_s = tokens(fast, lm.make_prompt_cache(model))
    again, again_s = tokens(fast, lm.make_prompt_cache(model))
    info = fast.cache_info()
    print(f"llama, {args.num_hidden_layers} layers, hidden {args.hidden_size}, random weights; "
          f"prompt of {prompt.size} token ids, 48 greedy tokens by mlx_lm's generate_step")
    print("   fast = mlxtriton.optimize(model)")
    print("   generate_step(prompt, fast, prompt_cache=mlxtriton.lm.make_prompt_cache(model))")
    print(f"   tokens: {ours[:12]} ...")
    print(f"   same tokens as plain mlx-lm: {ours == plain}; builds: {info.builds} "
          f"(the prompt, its last token, every decode step), calls served from the cache: {info.hits}")
    print(f"   whole generation: plain {1e3 * plain_s:.0f} ms, optimize {1e3 * ours_s:.0f} ms "
          f"(building included), a second generation {1e3 * again_s:.0f} ms")
    return ours == plain == again and info.builds <= 3


def main(argv: list[str] | None = None) -> int:
    gpu = mx.is_available(mx.gpu)
    # Without a GPU the decisions are shown for an Apple M3 (any chip can be named anywhere);
    # the fused regions then run as MLX ops, since MLX's CPU backend runs no custom kernels.
    chip = "auto" if gpu else "m3"
    chip_name = hw.resolve(chip).name
    print(f"mlxtriton {mlxtriton.__version__}, MLX {mx.__version__}, on {_device()}")
    print(f"kernels are shaped for the {chip_name}" + (
        "" if gpu else " (no GPU here: fused regions run as MLX ops; kernels are shown, not launched)"))
    ok: dict[str, bool] = {}
    block = examples.init_eval(examples.LlamaBlock())
    (x,) = examples.example_inputs("llama")

    _section("1. trace: an unmodified mlx.nn Llama block becomes a graph")
    t0 = time.perf_counter()
    graph = mlxtriton.trace(block)(x)
    t1 = time.perf_counter()
    mlxtriton.verify(graph)
    print(f"traced in {1e3 * (t1 - t0):.1f} ms: {len(graph.eqns)} equations, "
          f"{len(graph.constants)} constants (the weights among them)")
    print("primitives:", ", ".join(f"{k} x{n}" for k, n in graph.primitive_counts().items()))
    lines = str(graph).splitlines()
    print("\n".join(lines[:1] + [line for line in lines[1:12]] + ["    ..."] + lines[-2:]))

    _section("2. evaluate the graph with MLX: bit-identical to calling the block")
    expected = block(x)
    ok["evaluate"] = mx.array_equal(mlxtriton.evaluate(graph, x), expected).item()
    print(f"evaluate(graph, x) == block(x) exactly: {ok['evaluate']}")

    _section("3. the JAX oracle (optional: needs jax)")
    agrees = oracle_section(graph, x, expected)
    if agrees is not None:
        ok["oracle"] = agrees

    _section("4. optimize the block: what each stage decided, and why")
    fast = mlxtriton.optimize(block, chip=chip)
    print(fast.explain(x))
    ok["optimize"] = bool(np.allclose(np.array(fast(x)), np.array(expected), rtol=1e-5, atol=1e-5))
    print(f"optimize(block)(x) matches block(x): {ok['optimize']}")

    _section("5. RMS norm x SiLU gate: one generated kernel, and its source")
    rows, cols = (4096, 4096) if gpu else (1024, 4096)
    keys = mx.random.split(mx.random.key(0), 3)
    xs, gs = mx.random.normal((rows, cols), key=keys[0]), mx.random.normal((rows, cols), key=keys[1])
    ws = 1 + 0.1 * mx.random.normal((cols,), key=keys[2])
    mx.eval(xs, gs, ws)
    gate = mlxtriton.optimize(rms_norm_gate, chip=chip)
    print("def rms_norm_gate(x, w, g):\n    return mx.fast.rms_norm(x, w, 1e-5) * nn.silu(g)\n")
    print(f"optimize(rms_norm_gate) on [{rows}, {cols}] float32: "
          f"{gate.graph(xs, ws, gs).primitive_counts()}")
    (kernel,) = gate.lower(xs, ws, gs)
    print(kernel.as_text().rstrip())
    want = rms_norm_gate(xs, ws, gs)
    os.environ["MLXTRITON_INTERPRET"] = "1"
    try:  # the same kernel IR run by the NumPy interpreter: what the kernel computes
        interpreted = mlxtriton.optimize(rms_norm_gate, chip=chip)(xs[:64], ws, gs[:64])
    finally:
        del os.environ["MLXTRITON_INTERPRET"]
    err = mx.max(mx.abs(interpreted - want[:64])).item()
    ok["kernel"] = err < 1e-4 and mx.allclose(gate(xs, ws, gs), want, atol=1e-5).item()
    print(f"the kernel run by the NumPy interpreter: max |error| against MLX {err:.1e}")

    _section(f"6. time it against mx.compile on this machine ({_device()})")
    if not gpu:  # MLX's CPU backend: a smaller problem keeps the demo short
        xs, gs = xs[:256], gs[:256]
        rows = 256
    calls, runs = (50, 7) if gpu else (5, 5)
    compiled = mx.compile(rms_norm_gate)
    t0 = time.perf_counter()
    mx.eval(compiled(xs, ws, gs))
    first_compile = time.perf_counter() - t0
    fresh = mlxtriton.optimize(rms_norm_gate, chip=chip)
    t0 = time.perf_counter()
    mx.eval(fresh(xs, ws, gs))
    first_ours = time.perf_counter() - t0
    per_call = _timed_runs({"mx.compile": compiled, "mlxtriton.optimize": fresh}, (xs, ws, gs), calls, runs)
    moved = 3 * xs.nbytes + ws.nbytes  # x and g read, the output written: what the function must move
    print(f"method: [{rows}, {cols}] float32; {runs} runs of {calls} calls queued with mx.async_eval "
          f"and one synchronisation, interleaved, after 3 warm-up calls; median run")
    for name, seconds in per_call.items():
        print(f"   {name:20s} {1e3 * seconds:8.3f} ms per call  {moved / seconds / 1e9:7.1f} GB/s")
    ratio = per_call["mx.compile"] / per_call["mlxtriton.optimize"]
    print(f"   mlxtriton runs at {ratio:.2f}x mx.compile's speed"
          + ("" if gpu else " (on the CPU both run MLX ops: no generated kernel is launched here)"))
    print(f"   first call (trace, optimize, compile): mlxtriton {1e3 * first_ours:.0f} ms, "
          f"mx.compile {1e3 * first_compile:.0f} ms")

    _section("7. a gradient norm: one long reduction split in two levels for the chip")
    grad_norm = mlxtriton.optimize(lambda g: mx.sqrt(mx.sum(g * g)), chip=chip)
    g = mx.random.normal((1 << 22,), key=mx.random.key(5))
    fuse_stage = next(s for s in grad_norm.explain(g).stages if s.stage == "fuse")
    print("\n".join("   " + line for line in fuse_stage.lines[:3]))
    exact = np.linalg.norm(np.array(g, dtype=np.float64))
    ours, theirs = grad_norm(g).item(), mx.sqrt(mx.sum(g * g)).item()
    ok["split"] = abs(ours - exact) / exact < 1e-4
    print(f"float64 norm {exact:.4f}; optimize(grad_norm)(g) {ours:.4f} (relative error "
          f"{abs(ours - exact) / exact:.1e}); MLX's own sum on this device {theirs:.4f} "
          f"({abs(theirs - exact) / exact:.1e})")

    _section("8. generate text with an mlx-lm model (optional: needs mlx-lm)")
    generates = generation_section(chip)
    if generates is not None:
        ok["generate"] = generates

    failed = [name for name, good in ok.items() if not good]
    skipped = [name for name in ("oracle", "generate") if name not in ok]
    print(f"\n{'all checks passed' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"({', '.join(ok)}{'; skipped: ' + ', '.join(skipped) if skipped else ''})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
