"""Benchmark (experiment): how many registers of a long row one thread may hold, on the row
families, against the Triton tutorial softmax, in one run.

Rows of 16K-64K elements missed the registers of a 512-thread row kernel holding 32 registers
of row data each, so they were staged in threadgroup memory or streamed; rows were capped at 512
threads because MLX's wrapper declares no __launch_bounds__ and a 1024-thread kernel could fail to
launch. The Triton tutorial softmax holds a 32768-long float32 row as 64 elements in each of 512
threads. Variants, each a fresh ``mlxtriton.optimize`` under patched schedule numbers (the kernel
name hashes the source):

- ``default``: the shipped numbers;
- ``t512``: rows capped at 512 threads (the former rule);
- ``regs64``: 512 threads holding 64 registers of row data, nothing kept beyond it;
- ``t1024_r16``: 1024 threads holding at most 16 registers of row data each (longer rows are
  staged or streamed instead of filling the registers);
- ``t1024``: 1024 threads, 32 registers of row data each (the first run, before our header
  declared the launch bound: the launch error is recorded).
- ``v8``: 16-byte vectors of 2-byte types (8 lanes of our CUDA ``mt_vec``; CUDA's and
  Metal's vector types stop at 4) instead of 8-byte ones in row kernels (the shipped rule gives
  them to pointwise kernels only: hw.params.derive).

A launch that fails poisons later launches in the same process, so ``ROW_REGISTER_VARIANTS``
picks variants per run.

Method: pipelined timing (benchmarks/row_kernels.py `time_mlx`); effective bandwidth = input +
output bytes / time; Triton timed by ``triton.testing.do_bench``.
Run: python benchmarks/row_registers.py --out benchmarks/results/row_registers_<device>.json
[ROW_REGISTER_SHAPES=float32:2048x32768,...] [ROW_REGISTER_FAMILIES=softmax,...]
[ROW_REGISTER_VARIANTS=default,t512,...]
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
from types import SimpleNamespace

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import family_cases, nbytes, results_file, time_mlx, triton_softmax_gbs  # noqa: E402

import mlxtriton  # noqa: E402

builder = importlib.import_module("mlxtriton.codegen.builder")

VARIANTS = {
    "default": ({}, None),
    "t512": ({"max_row_threads": 512}, None),
    "regs64": ({"max_row_threads": 512, "max_resident_registers": 64}, 64),
    "t1024_r16": ({"max_row_threads": 1024, "max_resident_registers": 16}, None),
    "t1024": ({"max_row_threads": 1024, "max_resident_registers": 32}, None),
    "v8": ({"max_vector_lanes": 8, "vector_bytes": 16}, None),
}


def patched(changes: dict, kept_cap: int | None):
    """Patch ``ScheduleParams.from_hw`` (and the kept-value budget) for one variant; returns undo."""
    from_hw, keep = builder.ScheduleParams.from_hw, builder._keep_computed

    def new_from_hw(cls, p):
        return dataclasses.replace(from_hw.__func__(cls, p), **changes)

    def new_keep(stores, resident, regs, budget):
        return keep(stores, resident, regs, budget if kept_cap is None else min(budget, kept_cap))

    builder.ScheduleParams.from_hw = classmethod(new_from_hw)
    builder._keep_computed = new_keep

    def undo():
        builder.ScheduleParams.from_hw, builder._keep_computed = from_hw, keep
    return undo


def main() -> None:
    result, save = results_file("row_registers", __doc__)
    plan = os.environ.get("ROW_REGISTER_SHAPES",
                          "float32:4096x16384,float32:2048x24576,float32:2048x32768,"
                          "float32:1536x40960,bfloat16:2048x32768,bfloat16:1024x65536")
    families = os.environ.get("ROW_REGISTER_FAMILIES", "softmax,log_softmax,layer_norm,rms_norm,cross_entropy")
    for item in plan.split(","):
        dtype_name, shape = item.split(":")
        opts = SimpleNamespace(dtypes=dtype_name, families=families, shapes=shape)
        for dtype_name, name, composed, native, rows, cols, args in family_cases(opts, []):
            row = {"family": name, "dtype": dtype_name, "shape": [rows, cols]}
            moved = nbytes(args, mx.compile(composed)(*args))
            for vname in os.environ.get("ROW_REGISTER_VARIANTS", "default,t512,t1024_r16").split(","):
                changes, kept_cap = VARIANTS[vname]
                undo = patched(changes, kept_cap)
                try:
                    f = mlxtriton.optimize(composed)
                    k = f.lower(*args)[-1]
                    row[vname + "_schedule"] = {"threadgroup": list(k.threadgroup),
                                                "on_chip": k.kernel.arg.on_chip}
                    row[vname + "_gbs"] = round(moved / time_mlx(f, args) / 1e9, 1)
                except Exception as e:  # a launch the register file cannot hold is a result here
                    row[vname + "_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                finally:
                    undo()
            row["mx.compile_gbs"] = round(moved / time_mlx(mx.compile(composed), args) / 1e9, 1)
            if native is not None:
                row["mlx_native_gbs"] = round(moved / time_mlx(native, args) / 1e9, 1)
            if name == "softmax":
                t = triton_softmax_gbs(rows, cols, dtype_name)
                row["triton_gbs"] = None if t is None else round(t, 1)
            print(json.dumps(row), flush=True)
            result["rows"].append(row)
            save()
            del args


if __name__ == "__main__":
    main()
