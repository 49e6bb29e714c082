"""Benchmark: the RMS norm x gate's gate loaded in pass 1 against after the reduction (a probe).

The experiment that led to codegen/builder.PREFETCH_STORE_LOADS, kept so that its figures
(`results/prefetch_probe_h200_session14.json`) can be reproduced, notably the one the rule rests
on that the generator cannot build itself: bf16 rows of 16384, whose 1024-thread threadgroups
the rule leaves alone.

Method: the kernel generated with the rule off is edited by pattern: the gate's vector load moves
from the write pass into pass 1, into a register array the write pass reads. Both kernels are
compiled with NVRTC and timed as benchmarks/kernel_only.py times kernels
(``triton.testing.do_bench``, and launches queued back to back in PyTorch); the outputs must be
equal bit for bit.
Run (on the H200): python benchmarks/prefetch_probe.py --out results.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import mlx.core as mx

sys.path.insert(0, os.path.dirname(__file__))
from block_sums import variant  # noqa: E402
from kernel_only import Driver, _to_torch, kernel_variants, pipelined_torch  # noqa: E402
from row_kernels import families, make_args, results_file  # noqa: E402

SHAPES = ("65536x512", "16384x2048", "32768x4096", "8192x8192", "4096x16384")
_VECTOR_LOAD = (r"^(\s*)const (mt_vec<[^>]+>) (\w+) = "
                r"\*reinterpret_cast<const mt_vec<[^>]+>\*>\({} \+ (\w+)\);")


def prefetch(source: str, name: str) -> str:
    """``source`` with input ``name``'s one vector load in the write pass moved into pass 1,
    indexed as pass 1 indexes ``in0`` (the row)."""
    lines = source.split("\n")
    first = next(i for i, line in enumerate(lines) if line.startswith("// pass 1"))
    write = next(i for i, line in enumerate(lines) if line.startswith("// pass 2"))
    late = [(i, m) for i, line in enumerate(lines) if i > write
            and (m := re.match(_VECTOR_LOAD.format(name), line))]
    row = [(i, m) for i, line in enumerate(lines) if first < i < write
           and (m := re.match(_VECTOR_LOAD.format("in0"), line))]
    if len(late) != 1 or len(row) != 1:
        raise ValueError(f"expected one load of {name} in the write pass and one of in0 in pass 1")
    (i_late, m_late), (i_row, m_row) = late[0], row[0]
    vector = m_late.group(2)
    slot = "mt_pf[mt_c]" if "mt_c" in source else "mt_pf[0]"
    chunks = int(re.search(r"(\d+) vectors/thread", source).group(1))
    lines[i_late] = f"{m_late.group(1)}const {vector} {m_late.group(3)} = {slot};"
    lines.insert(i_row + 1, f"{m_row.group(1)}{slot} = *reinterpret_cast<const {vector}*>"
                            f"({name} + {m_row.group(4)});")
    lines.insert(first, f"{vector} mt_pf[{chunks}];  // prefetched {name}")
    return "\n".join(lines)


def main() -> None:
    import triton

    result, save = results_file("prefetch_probe", __doc__)
    drv = Driver()
    for dtype_name in ("bfloat16", "float32"):
        dtype = getattr(mx, dtype_name)
        composed, _native, spec = families(dtype)["rms_norm_gate"]
        for shape in SHAPES:
            rows, cols = (int(n) for n in shape.split("x"))
            args = make_args(spec, rows, cols, dtype)
            with variant("flag:codegen.builder.PREFETCH_STORE_LOADS=0"):
                ((_, k, extra),) = kernel_variants(composed, args, [])
            edited = dataclasses.replace(k, source=prefetch(k.source, "in2"), name=k.name + "_pf")
            inputs = [_to_torch(a) for a in (*args, *extra)]
            moved = sum(a.nbytes for a in args) + args[0].nbytes
            row, outs = {"dtype": dtype_name, "shape": shape, "schedule": k.kernel.arg.describe()}, {}
            for label, kernel in (("base", k), ("prefetch", edited)):
                launch, o, _, _ = drv.bind(kernel, inputs)
                outs[label] = o[0]
                row[f"{label}_do_bench_gbs"] = moved / (
                    triton.testing.do_bench(launch, warmup=25, rep=200) * 1e-3) / 1e9
                row[f"{label}_queued_gbs"] = moved / pipelined_torch(launch, reps=100) / 1e9
            row["equal"] = bool((outs["base"] == outs["prefetch"]).all().item())
            result["rows"].append(row)
            save()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
