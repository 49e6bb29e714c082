"""Benchmark: the kernels of a row family's backward (by default the norms', whose weight
gradients are block column sums: fusion/partials.py), each compiled with NVRTC and timed alone,
with what NVRTC made of it: registers per thread, bytes spilled to local memory, threadgroups
resident per SM (the CUDA occupancy calculator).

benchmarks/backward_rows.py times whole MLX calls; this one explains them. For each family
(default rms_norm, layer_norm, rms_norm_gate; any of benchmarks/row_kernels.py), dtype and shape, the backward
``mx.vjp(fn, primals, [cotangent])[1]`` is optimised for the H200 under each variant and every
kernel of ``.trace(...).lower("cuda")`` is compiled as ``mx.fast.cuda_kernel`` wraps it
(benchmarks/kernel_only.py), launched on random data of its inputs' shapes and timed with
``triton.testing.do_bench`` (CUDA events, L2 flushed between launches). Bandwidth: bytes the
backward must move (primals and cotangent read once, gradients written once) over the sum of its
kernels' times. Variants (comma-separated ``--variants``):
  default       what mlxtriton builds;
  no-partials   fusion/partials.py off: the weight gradient a column kernel of its own;
  blocksN       block sums aiming at N threadgroups per core (default 4);
  regsN         hw.params.BLOCK_SUM_REGISTERS = N;
  flag:NAME=V   a module-level switch NAME (``module.ATTR``, under mlxtriton) set to V, several
                joined by "+": flag:codegen.render.HOIST_BLOCK_LOADS=0.
Recorded runs (benchmarks/results/block_sums_h200*.json, 2026-11-21) also measured switches
that were then removed with the code they switched (see docs/design.md): BLOCK_REUSE and
BLOCK_SUMS_HELD (codegen.builder), PREFETCH_NEXT_ROW and PREFETCH_LINES (codegen.render),
BLOCK_MIN_THREADS (codegen.render; now hw block_threads_per_core), BODY_RANGES
(fusion.cluster, with --families cross_entropy: block_sums_h200_ce_iota.json), ROW_MIN_THREADS
(codegen.render: forward_min_threads_h200.json, backward_min_threads_h200.json),
RESIDENT_SUMEXP_ONLINE (codegen.builder: forward_online_h200_session9.json). The backward
is taken in the inexact arguments (a cross-entropy's labels are held fixed).

With ``--forward`` it measures the families' forward kernels instead (bytes: inputs read and
outputs written once).

Run on the H200: python benchmarks/block_sums.py --out results.json [--forward] [--families ...]
[--dtypes ...] [--shapes 32768x4096,...] [--variants default,no-partials,regs32,...]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import importlib
import json
import os
import sys

import mlx.core as mx

import mlxtriton
from mlxtriton.fusion import partials as partials_module
from mlxtriton.hw import params as hw_params

sys.path.insert(0, os.path.dirname(__file__))
from kernel_only import Driver  # noqa: E402
from row_kernels import family_arguments, family_cases  # noqa: E402

FAMILIES = "rms_norm,layer_norm,rms_norm_gate"

# CUDA driver API attribute numbers (cuda.h, CUfunction_attribute)
_LOCAL_SIZE_BYTES = 3
_NUM_REGS = 4


@contextlib.contextmanager
def variant(name: str):
    """Module switches set for one variant while its kernels are built."""
    saved = []

    def put(module, attr, value):
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)

    if name == "no-partials":
        put(partials_module, "block_rows", lambda rows, cores: 1)
    elif name.startswith("blocks"):
        put(partials_module, "GROUPS_PER_CORE", int(name[len("blocks"):]))
    elif name.startswith("regs"):
        put(hw_params, "BLOCK_SUM_REGISTERS", int(name[len("regs"):]))
    elif name.startswith("flag:"):
        for item in name[len("flag:"):].split("+"):
            path, value = item.split("=")
            module_name, attr = path.rsplit(".", 1)
            module = importlib.import_module(f"mlxtriton.{module_name}")
            current = getattr(module, attr)
            if isinstance(current, tuple):  # a range or pair: "A:B"
                put(module, attr, tuple(type(c)(v) for c, v in zip(current, value.split(":"), strict=True)))
                continue
            # a switch that is None (a rule decides) or a bool takes 0 / 1 as False / True
            kind = bool if current is None or isinstance(current, bool) else type(current)
            put(module, attr, kind(int(value)))
    elif name != "default":
        raise ValueError(f"unknown variant {name!r}")
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def backward_of(fn, args):
    """The gradients of ``fn`` in its inexact arguments (integer ones, labels, held fixed)."""
    inexact = [i for i, a in enumerate(args) if mx.issubdtype(a.dtype, mx.inexact)]

    def backward(*primals_and_cotangent):
        *primals, c = primals_and_cotangent

        def of_inexact(*values):
            full = list(primals)
            for i, v in zip(inexact, values):
                full[i] = v
            return fn(*full)

        return mx.vjp(of_inexact, [primals[i] for i in inexact], [c])[1]
    return backward


def kernel_facts(drv: Driver, fn, threads: int, shared: int) -> dict:
    value = ctypes.c_int()
    facts = {}
    for key, attr in (("registers", _NUM_REGS), ("spill_bytes", _LOCAL_SIZE_BYTES)):
        drv._check(drv.cuda.cuFuncGetAttribute(ctypes.byref(value), attr, fn), "cuFuncGetAttribute")
        facts[key] = value.value
    blocks = ctypes.c_int()
    drv._check(drv.cuda.cuOccupancyMaxActiveBlocksPerMultiprocessor(
        ctypes.byref(blocks), fn, threads, ctypes.c_size_t(shared)), "cuOccupancy")
    facts["groups_per_sm"] = blocks.value
    return facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="block_sums.json")
    family_arguments(ap, FAMILIES, "32768x4096,4096x16384")
    ap.add_argument("--variants", default="default,no-partials,regs8,regs32,blocks8,blocks16")
    ap.add_argument("--forward", action="store_true",
                    help="the families' forward kernels instead of their backward's")
    opts = ap.parse_args()
    import torch
    import triton

    drv = Driver()
    rows_out: list[dict] = []
    result = {"benchmark": "block_sums", "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "mlx_version": mx.__version__,
              "torch": torch.__version__, "triton": triton.__version__,
              "method": "each kernel of the backward compiled with NVRTC (-arch=sm_90) as "
                        "mx.fast.cuda_kernel wraps it, timed alone with triton.testing.do_bench "
                        "on random inputs; registers and spills from cuFuncGetAttribute, "
                        "threadgroups per SM from cuOccupancyMaxActiveBlocksPerMultiprocessor",
              "argv": sys.argv[1:], "rows": rows_out}

    def save():
        with open(opts.out, "w") as fh:
            json.dump(result, fh, indent=1)

    for dtype_name, name, composed, _native, rows, cols, args in family_cases(opts, []):
        out = composed(*args)
        cot = mx.random.normal(out.shape).astype(out.dtype)
        inexact = [a for a in args if mx.issubdtype(a.dtype, mx.inexact)]
        if opts.forward:  # the function itself: its inputs read and outputs written once
            measured, call = composed, list(args)
            moved = sum(a.nbytes for a in args) + out.nbytes
        else:
            measured, call = backward_of(composed, args), [*args, cot]
            moved = sum(a.nbytes for a in args) + cot.nbytes + sum(a.nbytes for a in inexact)
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved,
               "variants": {}}
        for vname in filter(None, opts.variants.split(",")):
            entry: dict = {"kernels": []}
            row["variants"][vname] = entry
            try:
                with variant(vname):
                    lowered = mlxtriton.optimize(measured, chip="h200").trace(*call).lower("cuda")
                total_ms = 0.0
                for k in lowered.kernels:
                    ins = [torch.randn(s, device="cuda").to(getattr(torch, d)) if d.startswith(("float", "bfloat"))
                           else torch.zeros(s, device="cuda", dtype=getattr(torch, d))
                           for s, d in zip(k.input_shapes, k.input_dtypes)]
                    launch, _, fn, shared = drv.bind(k, ins)
                    threads = k.threadgroup[0]
                    ms = triton.testing.do_bench(launch, warmup=25, rep=100)
                    total_ms += ms
                    entry["kernels"].append({"name": k.name, "us": 1e3 * ms, "threads": threads,
                                             "groups": -(-k.grid[0] // threads), "shared_bytes": shared,
                                             "schedule": k.kernel.arg.describe(),
                                             **kernel_facts(drv, fn, threads, shared)})
                entry["us"] = 1e3 * total_ms
                entry["gbs"] = moved / (total_ms * 1e-3) / 1e9
            except Exception as e:  # noqa: BLE001
                entry["error"] = f"{type(e).__name__}: {e}"[:500]
            save()
        rows_out.append(row)
        save()
        print(f"{name:18s} {dtype_name:8s} {rows}x{cols}", flush=True)
        for vname, entry in row["variants"].items():
            if "error" in entry:
                print(f"  {vname:28s} ERROR {entry['error'][:200]}", flush=True)
                continue
            ks = "; ".join(f"{k['us']:.0f}us T{k['threads']} x{k['groups']} r{k['registers']} "
                           f"s{k['spill_bytes']} occ{k['groups_per_sm']}" for k in entry["kernels"])
            print(f"  {vname:28s} {entry['gbs']:6.0f} GB/s  [{ks}]", flush=True)
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
