"""Benchmark: the projection kernel (mlxtriton/codegen/projection.py) against MLX's own products
at decode shapes, on the local GPU: a Llama-3.2-1B- and a Llama-3-8B-shaped layer's q/k/v (one
launch against MLX's three), output, gate/up (one against two) and down projections, gate/up with
its SwiGLU (``swiglu``: the kernel's epilogue against MLX's two products and mlx-lm's compiled
``swiglu``), and the 1B output head, for x of 1 and 8 rows, bfloat16 and 4-bit weights (group 64), over a grid of the
kernel's schedules (columns per SIMD group R, SIMD groups per threadgroup W, vectors in flight U).

Method: pipelined timing (benchmarks/harness.py `time_mlx`): 100 queued calls per run, one
synchronise, median of 5 runs; each call is every product of the case (MLX: one matmul or
quantized_matmul per weight). A call of a few microseconds of GPU work is paced by MLX's host
work per launch, so small cases compare launches as much as kernels. GB/s = bytes of the weights
(with scales and biases) / time. ``rel_err``: the largest difference from MLX's result over its
largest magnitude. ``copy_gbs``: MLX's ``x + 0`` over 1 GiB (read + write).
Run: python benchmarks/projections.py --out benchmarks/results/projections_<device>.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import mlx.core as mx
from mlx_lm.models.activations import swiglu

sys.path.insert(0, os.path.dirname(__file__))
from harness import results_file, time_mlx  # noqa: E402

from mlxtriton.codegen.projection import render_projection  # noqa: E402
from mlxtriton.graph.projection import Projection, Result  # noqa: E402
from mlxtriton.runtime.launch import launcher  # noqa: E402

# (model, name, depth, widths): the products reading one x in a decoder layer, and the head
SHAPES = [
    ("1b", "q/k/v", 2048, (2048, 512, 512)), ("1b", "o", 2048, (2048,)),
    ("1b", "gate/up", 2048, (8192, 8192)), ("1b", "swiglu", 2048, (8192, 8192)),
    ("1b", "down", 8192, (2048,)),
    ("1b", "head", 2048, (128256,)),
    ("8b", "q/k/v", 4096, (4096, 1024, 1024)), ("8b", "o", 4096, (4096,)),
    ("8b", "gate/up", 4096, (14336, 14336)), ("8b", "swiglu", 4096, (14336, 14336)),
    ("8b", "down", 14336, (4096,)),
]
SCHEDULES = [(1, 4, 1), (1, 4, 2), (2, 4, 1), (2, 4, 2), (4, 4, 1), (2, 8, 2), (1, 4, 4), (2, 4, 4)]
GROUP = 64


def _weights(depth, widths, bits):
    out = []
    for n in widths:
        w = (mx.random.normal((n, depth)) * 0.02).astype(mx.bfloat16)
        out.append(tuple(mx.quantize(w, group_size=GROUP, bits=bits)) if bits else (w,))
    mx.eval(out)
    return out


def _mlx(bits, gated):
    def run(x, *flat):
        if bits:
            out = [mx.quantized_matmul(x, *flat[i:i + 3], transpose=True, group_size=GROUP, bits=bits)
                   for i in range(0, len(flat), 3)]
        else:
            out = [x @ w.T for w in flat]
        return [swiglu(*out)] if gated else out
    return run


def case(model, name, depth, widths, rows, bits, schedules):
    weights = _weights(depth, widths, bits)
    flat = [a for w in weights for a in w]
    x = mx.random.normal((rows, depth)).astype(mx.bfloat16)
    mx.eval(x)
    args = [x, *flat]
    gated = name == "swiglu"
    ref = _mlx(bits, gated)(*args)
    mx.eval(ref)
    nbytes = sum(a.nbytes for a in flat)
    t_mlx = time_mlx(_mlx(bits, gated), args, reps=100)
    row = {"model": model, "product": name, "depth": depth, "widths": list(widths), "rows": rows,
           "weights": f"{bits}-bit" if bits else "bfloat16", "weight_bytes": nbytes,
           "mlx_us": t_mlx * 1e6, "mlx_gbs": nbytes / t_mlx / 1e9, "schedules": []}
    spec = Projection((rows,), depth, tuple(widths), "bfloat16", bits, GROUP if bits else 0,
                      results=(Result((0, 1)),) if gated else ())
    for r, w, u in schedules:
        run = launcher(render_projection(spec, "cuda", r, w, u))
        out = run(*args)
        err = max(float(mx.max(mx.abs(o.astype(mx.float32) - e.astype(mx.float32))))
                  / max(float(mx.max(mx.abs(e.astype(mx.float32)))), 1e-30) for o, e in zip(out, ref))
        t = time_mlx(run, args, reps=100)
        row["schedules"].append({"R": r, "W": w, "U": u, "us": t * 1e6, "gbs": nbytes / t / 1e9,
                                 "rel_err": err})
    best = min(row["schedules"], key=lambda s: s["us"])
    print(f"{model} {name} {row['weights']} rows {rows}: MLX {t_mlx * 1e6:.1f} us, best R{best['R']} "
          f"W{best['W']} U{best['U']} {best['us']:.1f} us ({t_mlx * 1e6 / best['us']:.2f}x), "
          f"err {best['rel_err']:.1e}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default="0,4", help="bits: 0 for bfloat16, 4 or 8")
    ap.add_argument("--rows", default="1,8")
    ap.add_argument("--models", default="1b,8b")
    ap.add_argument("--products", default=",".join(dict.fromkeys(s[1] for s in SHAPES)))
    ap.add_argument("--schedules", default=";".join(",".join(map(str, s)) for s in SCHEDULES))
    ap.add_argument("--minutes", type=float, default=60.0, help="stop starting cases after this")
    ap.add_argument("--out", default="projections.json")
    opts = ap.parse_args()
    result, save = results_file("projections", __doc__, opts.out)
    a = mx.random.normal((1 << 28,))
    mx.eval(a)
    result["copy_gbs"] = 2 * a.nbytes / time_mlx(lambda a: a + 0, [a], reps=20) / 1e9
    del a
    schedules = [tuple(int(v) for v in s.split(",")) for s in opts.schedules.split(";")]
    deadline = time.time() + 60 * opts.minutes
    for bits in (int(b) for b in opts.weights.split(",")):
        for rows in (int(r) for r in opts.rows.split(",")):
            for model, name, depth, widths in SHAPES:
                if (model in opts.models.split(",") and name in opts.products.split(",")
                        and time.time() < deadline):
                    result["rows"].append(case(model, name, depth, widths, rows, bits, schedules))
                    save()
    save()


if __name__ == "__main__":
    main()
