"""Benchmark: fused row kernels and pointwise chains on a GPU, side by side in one run.

For each family (softmax, log-softmax, layer norm, RMS norm, RMS norm x SiLU gate, cross-entropy)
and dtype, over 32768 x 4096 and row lengths 512..16384, it times: MLX eager, ``mx.compile`` of the
same composed function, MLX's own op where one exists (mx.softmax, mx.fast.rms_norm,
mx.fast.layer_norm), ``mlxtriton.optimize``, and, for softmax, the Triton tutorial kernel through
PyTorch when Triton is installed; plus MLX's ``x + 0`` copy as the bandwidth ceiling MLX reaches.

Method: pipelined timing (shared/device/README.md): after 3 warm-ups, queue ``reps`` calls with
``mx.async_eval`` keeping the last two outputs alive, ``mx.synchronize()`` once, divide by
``reps``; the median of 5 such runs. Effective bandwidth = bytes the function must move (each
input read once, each output written once) / time.

Run: python benchmarks/row_kernels.py --out results.json [--quick] [--families softmax,...]
[--dtypes bfloat16,...] [--shapes 32768x4096,...]
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time

import mlx.core as mx
import mlx.nn as nn

import mlxtriton


def time_queued(fn, args, reps: int) -> float:
    """Seconds per call of ``reps`` calls queued with ``mx.async_eval``, synchronised once."""
    live = []
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn(*args)
        live = live[-2:] + [out]
        mx.async_eval(out)
    mx.synchronize()
    return (time.perf_counter() - t0) / reps


def time_mlx(fn, args, reps: int = 50, runs: int = 5) -> float:
    for _ in range(3):
        mx.eval(fn(*args))
    mx.synchronize()
    return statistics.median(time_queued(fn, args, reps) for _ in range(runs))


def families(dtype):
    def softmax(x):
        return mx.softmax(x, axis=-1)

    def softmax_composed(x):  # how model code often writes it; mx.compile cannot fuse it
        m = mx.max(x, axis=-1, keepdims=True)
        e = mx.exp(x - m)
        return e / mx.sum(e, axis=-1, keepdims=True)

    def log_softmax(x):
        return x - mx.logsumexp(x, axis=-1, keepdims=True)

    def layer_norm(x, w, b):
        mean = mx.mean(x, axis=-1, keepdims=True)
        var = mx.var(x, axis=-1, keepdims=True)
        return (x - mean) * mx.rsqrt(var + 1e-5) * w + b

    def rms_norm(x, w):
        return x * mx.rsqrt(mx.mean(mx.square(x), axis=-1, keepdims=True) + 1e-5) * w

    def rms_norm_gate(x, w, g):
        return rms_norm(x, w) * nn.silu(g)

    def cross_entropy(logits, labels):
        return nn.losses.cross_entropy(logits, labels, reduction="none")

    return {
        "softmax": (softmax_composed, lambda x: mx.softmax(x, axis=-1), ("x",)),
        "log_softmax": (log_softmax, None, ("x",)),
        "layer_norm": (layer_norm, lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), ("x", "w", "w")),
        "rms_norm": (rms_norm, lambda x, w: mx.fast.rms_norm(x, w, 1e-5), ("x", "w")),
        "rms_norm_gate": (rms_norm_gate, None, ("x", "w", "x")),
        "cross_entropy": (cross_entropy, None, ("x", "labels")),
    }


def results_file(benchmark: str, doc: str, path: str | None = None):
    """``(result, save)``: the JSON record of one run (date, device, MLX version and the method
    paragraph of the benchmark's docstring; rows appended to ``result["rows"]``) and a function
    writing it to ``path`` (None: the command line's ``--out``, default ``<benchmark>.json``),
    called after every row so a run cut short still leaves its figures."""
    if path is None:
        ap = argparse.ArgumentParser(description=doc.splitlines()[0])
        ap.add_argument("--out", default=f"{benchmark}.json")
        path = ap.parse_args().out
    result = {
        "benchmark": benchmark, "date": datetime.date.today().isoformat(),
        "device": mx.device_info().get("device_name", str(mx.default_device())),
        "mlx_version": mx.__version__, "python": sys.version.split()[0],
        "method": doc.split("Method:")[1].split("Run:")[0].strip(), "rows": [],
    }

    def save():
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)

    return result, save


def make_args(spec, rows, cols, dtype):
    x = mx.random.normal((rows, cols)).astype(dtype)
    arrays = {"x": x, "w": mx.random.normal((cols,)).astype(dtype),
              "labels": mx.random.randint(0, cols, (rows,))}
    args = tuple(arrays[s] if s != "x" else (x if i == 0 else mx.random.normal((rows, cols)).astype(dtype))
                 for i, s in enumerate(spec))
    mx.eval(args)
    return args


def nbytes(args, out) -> int:
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return sum(a.nbytes for a in args) + sum(o.nbytes for o in outs)


def triton_softmax_gbs(rows, cols, dtype_name, timer=None):
    """The Triton tutorial's fused softmax (02-fused-softmax.py) on the same GPU, if available.
    Timed with ``triton.testing.do_bench`` unless ``timer`` (``launch -> seconds``) is given."""
    try:
        import torch
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit
    def softmax_kernel(out_ptr, in_ptr, in_stride, out_stride, n_rows, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < n_cols
        x = tl.load(in_ptr + row * in_stride + offs, mask=mask, other=-float("inf")).to(tl.float32)
        x = x - tl.max(x, axis=0)
        num = tl.exp(x)
        y = num / tl.sum(num, axis=0)
        tl.store(out_ptr + row * out_stride + offs, y.to(out_ptr.dtype.element_ty), mask=mask)

    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype_name]
    x = torch.randn(rows, cols, device="cuda", dtype=tdtype)
    y = torch.empty_like(x)
    block = triton.next_power_of_2(cols)
    warps = 4 if block < 2048 else (8 if block < 4096 else 16)

    def run():
        softmax_kernel[(rows,)](y, x, x.stride(0), y.stride(0), rows, cols, BLOCK=block, num_warps=warps)

    seconds = timer(run) if timer else triton.testing.do_bench(run, warmup=25, rep=100) * 1e-3
    return 2 * x.numel() * x.element_size() / seconds / 1e9


def family_arguments(ap: argparse.ArgumentParser, families: str = "", shapes: str = "") -> None:
    """The options `family_cases` reads: --families, --dtypes, --shapes (with these defaults)."""
    ap.add_argument("--families", default=families, help="comma-separated subset of families")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--shapes", default=shapes, help="comma-separated ROWSxCOLS, e.g. 4096x16384")


def family_cases(opts, default_shapes):
    """Every selected case of a family benchmark: ``(dtype name, family, composed function, MLX's
    own op or None, rows, cols, arguments)`` for ``opts.dtypes`` x ``opts.families`` (empty: all)
    x ``opts.shapes`` ("ROWSxCOLS,...", empty: ``default_shapes``)."""
    chosen = set(filter(None, opts.families.split(",")))
    shapes = ([tuple(int(n) for n in s.split("x")) for s in opts.shapes.split(",")]
              if opts.shapes else default_shapes)
    for dtype_name in opts.dtypes.split(","):
        dtype = getattr(mx, dtype_name)
        for name, (composed, native, spec) in families(dtype).items():
            if chosen and name not in chosen:
                continue
            for rows, cols in shapes:
                yield dtype_name, name, composed, native, rows, cols, make_args(spec, rows, cols, dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="row_kernels.json")
    ap.add_argument("--quick", action="store_true", help="fewer sizes (smoke run)")
    family_arguments(ap)
    ap.add_argument("--flags", default="", help="comma-separated module switches, each a variant "
                    "mlxtriton/flag:module.ATTR=V (+ joins several) built under it, as "
                    "benchmarks/backward_rows.py takes them")
    opts = ap.parse_args()
    chosen = set(filter(None, opts.families.split(",")))
    shapes = [(32768, 4096)] + ([] if opts.quick else [(65536, 512), (32768, 1024), (16384, 2048),
                                                       (8192, 8192), (4096, 16384)])
    result, save = results_file("row_kernels", __doc__, opts.out)
    rows_out = result["rows"]

    for dtype_name, name, composed, native, rows, cols, args in family_cases(opts, shapes):
        opt = mlxtriton.optimize(composed)
        compiled = mx.compile(composed)
        out = opt(*args)
        moved = nbytes(args, out)
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved}
        variants = {"eager": composed, "mx.compile": compiled, "mlxtriton": opt}
        if native is not None:
            variants["mlx_native"] = native
        for flag in filter(None, opts.flags.split(",")):
            from block_sums import variant  # block_sums imports this module
            with variant(f"flag:{flag}"):  # kernels are built on the first call
                variants[f"mlxtriton/flag:{flag}"] = flagged = mlxtriton.optimize(composed)
                mx.eval(flagged(*args))
        for vname, fn in variants.items():
            t = time_mlx(fn, args)
            row[vname + "_us"] = 1e6 * t
            row[vname + "_gbs"] = moved / t / 1e9
        if name == "softmax":
            row["triton_gbs"] = triton_softmax_gbs(rows, cols, dtype_name)
        x = args[0]
        t = time_mlx(lambda a: a + 0, (x,))
        row["copy_gbs"] = 2 * x.nbytes / t / 1e9
        row["speedup_vs_compile"] = row["mx.compile_us"] / row["mlxtriton_us"]
        rows_out.append(row)
        save()
        print(f"{name:14s} {dtype_name:8s} {rows:6d}x{cols:<6d} mlxtriton {row['mlxtriton_gbs']:7.0f} GB/s "
              f"compile {row['mx.compile_gbs']:7.0f} eager {row['eager_gbs']:7.0f} "
              + (f"native {row['mlx_native_gbs']:7.0f} " if native else "")
              + (f"triton {row['triton_gbs']:7.0f} " if row.get("triton_gbs") else "")
              + f"copy {row['copy_gbs']:7.0f}  x{row['speedup_vs_compile']:.2f} vs compile"
              + "".join(f"  {v[len('mlxtriton/'):-4]} {row[v]:.0f}" for v in row
                        if v.startswith("mlxtriton/") and v.endswith("_gbs")), flush=True)
        del args, out
    # pointwise chains: at least mx.compile's bandwidth
    for dtype_name in opts.dtypes.split(","):
        if chosen and "pointwise_chain" not in chosen:
            break
        dtype = getattr(mx, dtype_name)
        chain = lambda x, y: mx.maximum(mx.exp(x * 0.5) * y + 1.0, 0.0)  # noqa: E731
        x = mx.random.normal((8192, 8192)).astype(dtype)
        y = mx.random.normal((8192,)).astype(dtype)
        mx.eval(x, y)
        row = {"family": "pointwise_chain", "dtype": dtype_name, "rows": 8192, "cols": 8192}
        moved = x.nbytes * 2 + y.nbytes
        for vname, fn in {"eager": chain, "mx.compile": mx.compile(chain), "mlxtriton": mlxtriton.optimize(chain)}.items():
            t = time_mlx(fn, (x, y))
            row[vname + "_us"], row[vname + "_gbs"] = 1e6 * t, moved / t / 1e9
        rows_out.append(row)
        save()
        print(f"pointwise {dtype_name}: mlxtriton {row['mlxtriton_gbs']:.0f} GB/s, compile {row['mx.compile_gbs']:.0f}, eager {row['eager_gbs']:.0f}", flush=True)
    # small inputs: per-call cost against a native op
    small = mx.random.normal((8, 64))
    mx.eval(small)
    per_call = {}
    for vname, fn in {"mx.softmax": lambda x: mx.softmax(x, axis=-1),
                      "x*2": lambda x: x * 2,
                      "mlxtriton softmax": mlxtriton.optimize(lambda x: mx.softmax(x, axis=-1))}.items():
        per_call[vname] = 1e6 * time_mlx(fn, (small,), reps=500)
    print("per-call us:", {k: round(v, 1) for k, v in per_call.items()}, flush=True)
    result["small_input_per_call_us"] = per_call
    save()
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
