"""Benchmark: what limits cross-entropy's forward kernel over short rows (a read-only row kernel).

Timed alone (``kernel_only_h200_short.json``), mlxtriton's bfloat16 cross-entropy over rows of
512-2048 moves ~2600 GB/s, where its softmax over the same rows moves 3550+ and PyTorch's clone
3650. This benchmark times, on the same GPU in one run, each kernel alone (NVRTC + the CUDA
driver, like kernel_only.py, ``triton.testing.do_bench``):

- ``mlxtriton``: the kernel mlxtriton generates;
- ``select``: the same source with the label's logit taken from the row already in registers
  (each lane compares its columns with the label; one more warp sum) instead of a load at
  ``row * cols + label``, which must wait for the label's own load;
- ``nogather``: the same source with that load made independent of the label (reads a fixed
  element: wrong results, timing only; shows what the dependent load costs);
- ``logsumexp``: mlxtriton's kernel for ``mx.logsumexp(x, -1)`` (no label at all);
- ``triton_ce`` / ``triton_ce_select``: a Triton cross-entropy forward, one row per program
  (the tutorial softmax's shape), the label's logit loaded, or selected from the row;
- ``torch_ce``, ``torch_logsumexp``, ``torch_sum``: PyTorch's own kernels; ``torch_clone``.

``*_pipelined_gbs``: the same kernel's launches queued back to back (harness.py
`pipelined_torch`), no L2 flush between them. Effective bandwidth counts the logits and labels read once and the losses written once (the same
bytes for every variant; ``torch_sum`` / ``*logsumexp`` count the logits and their output).
Run on the H200: python benchmarks/ce_rows.py --out results.json [--dtypes ...] [--shapes ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import sys

import mlx.core as mx
import numpy as np

import mlxtriton

sys.path.insert(0, os.path.dirname(__file__))
from harness import Driver, families, generated_kernel, make_args, pipelined_torch, summary, to_torch  # noqa: E402


def _one(pattern: str, source: str) -> re.Match:
    found = list(re.finditer(pattern, source, re.M))
    if len(found) != 1:
        raise ValueError(f"expected one match of {pattern!r}, got {len(found)}")
    return found[0]


def select_source(source: str, threads_per_row: int) -> str:
    """The cross-entropy source with the gathered logit replaced by a select over the resident
    row and a warp sum (rows of one SIMD-group only)."""
    if threads_per_row != 32:
        raise ValueError("select: rows of one warp only")
    g = _one(r"^const (\S+) (mt_t\d+) = in0\[(mt_t\d+)\];\n", source)
    _, gathered, index = g.groups()
    off = _one(r"const int32_t (mt_t\d+) = \(mt_t\d+ \+ mt_col0\);", source).group(1)
    keep = _one(r"^ *mt_r1\[mt_c \* \d+ \+ mt_l\] = (mt_v\d+\.v\[mt_l\]);\n", source)
    value = f"__bfloat162float({keep.group(1)})" if "__nv_bfloat16 mt_r1" in source else keep.group(1)
    out = source.replace(keep.group(0), keep.group(0)
                         + f"    mt_sel = ({off} + mt_l == {index}) ? {value} : mt_sel;\n", 1)
    out = out[:g.start()] + out[g.end():]
    out = out.replace("// pass 1:", "float mt_sel = 0.0f;\n// pass 1:", 1)
    out = out.replace("// pass 2:", "#pragma unroll\nfor (int mt_o = 16; mt_o > 0; mt_o >>= 1) "
                      "mt_sel += __shfl_xor_sync(0xffffffffu, mt_sel, mt_o);\n// pass 2:", 1)
    out = re.sub(rf"__bfloat162float\({gathered}\)|\b{gathered}\b", "mt_sel", out)
    return out


def nogather_source(source: str) -> str:
    g = _one(r"^const \S+ mt_t\d+ = in0\[(mt_t\d+)\];\n", source)
    return source[:g.start(1)] + "mt_row" + source[g.end(1):]


_CE_KERNEL = []


def _ce_kernel():
    """The Triton cross-entropy forward (built once: a JIT function made per call would be
    hashed again at every launch)."""
    if _CE_KERNEL:
        return _CE_KERNEL[0]
    import triton
    import triton.language as tl

    @triton.jit
    def ce_kernel(out_ptr, x_ptr, lab_ptr, stride, n_cols, BLOCK: tl.constexpr, SELECT: tl.constexpr):
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        mask = offs < n_cols
        x = tl.load(x_ptr + row * stride + offs, mask=mask, other=-float("inf")).to(tl.float32)
        lab = tl.load(lab_ptr + row)
        m = tl.max(x, axis=0)
        s = tl.sum(tl.exp(x - m), axis=0)
        if SELECT:
            picked = tl.sum(tl.where(offs == lab, x, 0.0), axis=0)
        else:
            picked = tl.load(x_ptr + row * stride + lab).to(tl.float32)
        tl.store(out_ptr + row, (m + tl.log(s) - picked).to(out_ptr.dtype.element_ty))

    _CE_KERNEL.append(ce_kernel)
    return ce_kernel


def triton_ce(rows, cols, x, labels, select: bool):
    """The Triton cross-entropy at its best of 1-16 warps: ``(ms, warps, launch, losses)``."""
    import torch
    import triton

    kernel = _ce_kernel()
    y = torch.empty(rows, device="cuda", dtype=x.dtype)
    block = triton.next_power_of_2(cols)
    best = None
    for warps in (1, 2, 4, 8, 16):
        if block // (32 * warps) < 1:
            continue

        def run(warps=warps):
            kernel[(rows,)](y, x, labels, x.stride(0), cols, BLOCK=block, SELECT=select, num_warps=warps)
        run()
        ms = triton.testing.do_bench(run, warmup=25, rep=100)
        if best is None or ms < best[0]:
            best = (ms, warps, run)
    return (*best, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="ce_rows.json")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--shapes", default="65536x512,32768x1024,16384x2048,8192x8192")
    opts = ap.parse_args()
    import torch
    import torch.nn.functional as F
    import triton

    drv = Driver()
    rows_out: list[dict] = []
    result = {"benchmark": "ce_rows", "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "mlx_version": mx.__version__,
              "torch": torch.__version__, "triton": triton.__version__,
              "method": "triton.testing.do_bench (CUDA events, L2 flushed) of each kernel alone",
              "rows": rows_out}

    def save():
        with open(opts.out, "w") as fh:
            json.dump(result, fh, indent=1)

    def bench(row, label, fn, moved, pipelined=False):
        try:
            ms = triton.testing.do_bench(fn, warmup=25, rep=100)
            row[f"{label}_gbs"] = moved / (ms * 1e-3) / 1e9
            if pipelined:
                row[f"{label}_pipelined_gbs"] = moved / pipelined_torch(fn) / 1e9
        except Exception as e:  # noqa: BLE001
            row[f"{label}_error"] = f"{type(e).__name__}: {e}"[:300]

    for dtype_name in opts.dtypes.split(","):
        dtype = getattr(mx, dtype_name)
        ce = families(dtype)["cross_entropy"][0]
        for shape in opts.shapes.split(","):
            rows, cols = (int(n) for n in shape.split("x"))
            args = make_args(("x", "labels"), rows, cols, dtype)
            want = mlxtriton.optimize(ce)(*args)
            mx.eval(want)
            moved = sum(a.nbytes for a in args) + want.nbytes
            row = {"dtype": dtype_name, "rows": rows, "cols": cols, "bytes": moved}
            tx, tl_ = (to_torch(a) for a in args)
            ref = np.array(want.astype(mx.float32))

            def check(label, out):
                row[f"{label}_maxerr"] = float(np.max(np.abs(out.float().cpu().numpy().reshape(ref.shape) - ref)))

            for label, (k, extra) in [("mlxtriton", generated_kernel(ce, args))]:
                edits = [(label, k.source)]
                try:
                    edits.append((f"{label}_select", select_source(k.source, k.kernel.arg.threads_per_row)))
                except ValueError as e:
                    row[f"{label}_select_error"] = str(e)
                edits.append((f"{label}_nogather", nogather_source(k.source)))
                row[f"{label}_schedule"] = k.kernel.arg.describe()
                for name, source in edits:
                    try:
                        launch, outs, _, _ = drv.bind(dataclasses.replace(k, source=source), [tx, tl_, *[to_torch(a) for a in extra]])
                        check(name, outs[0])
                        bench(row, name, launch, moved, pipelined=name == "mlxtriton")
                    except Exception as e:  # noqa: BLE001
                        row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:500]
                        if "illegal" in str(e) or "CUDA error" in str(e):
                            rows_out.append(row)
                            save()
                            sys.exit(f"{name}: {e}")
            lse_moved = args[0].nbytes + want.nbytes
            k, extra = generated_kernel(lambda x: mx.logsumexp(x, axis=-1), args[:1])
            launch, outs, _, _ = drv.bind(k, [tx, *[to_torch(a) for a in extra]])
            bench(row, "logsumexp", launch, lse_moved, pipelined=True)
            row["logsumexp_schedule"] = k.kernel.arg.describe()
            tl64 = tl_.long()
            for select in (False, True):
                name = "triton_ce_select" if select else "triton_ce"
                ms, warps, run, y = triton_ce(rows, cols, tx, tl_, select)
                row[f"{name}_gbs"] = moved / (ms * 1e-3) / 1e9
                row[f"{name}_warps"] = warps
                check(name, y)
                if not select:
                    row[f"{name}_pipelined_gbs"] = moved / pipelined_torch(run) / 1e9
            bench(row, "torch_ce", lambda: F.cross_entropy(tx, tl64, reduction="none"), moved)
            bench(row, "torch_logsumexp", lambda: torch.logsumexp(tx, -1), lse_moved)
            bench(row, "torch_sum", lambda: tx.sum(-1), lse_moved, pipelined=True)
            bench(row, "torch_clone", lambda: tx.clone(), 2 * args[0].nbytes, pipelined=True)
            rows_out.append(row)
            save()
            print(summary(f"{dtype_name:8s} {rows}x{cols}", row), flush=True)
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
