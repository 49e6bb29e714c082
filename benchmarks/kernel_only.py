"""Benchmark: mlxtriton's generated CUDA kernels timed alone, the way Triton times its own, next to
the Triton tutorial softmax and a PyTorch copy, on the same GPU in one run.

benchmarks/row_kernels.py times whole MLX calls pipelined; its Triton figure comes from
``triton.testing.do_bench`` (CUDA events around each launch, the L2 flushed between launches),
and MLX's own copy (`x + 0`) reaches ~9% less bandwidth than PyTorch's clone on the H200
(shared/device/README.md). This benchmark separates the kernel from the framework: it compiles
the exact source mlxtriton renders (``optimize(fn).trace(...).lower("cuda")``, wrapped the way
``mx.fast.cuda_kernel`` wraps it, minus MLX's utility include, which generated code never uses)
with NVRTC, launches it through the CUDA driver API on PyTorch tensors, checks its outputs
against ``mlxtriton.optimize(fn)`` run by MLX on the same data, and times it with the same
``do_bench`` as Triton. Variants rebuild the kernel with other schedule numbers through the
real code generator (``resident_registers``: how many 32-bit registers of row data a thread
holds, which sets threads per row; a variant gives every row that share, a row reading a weight
vector too) to measure what the schedule chooser should pick.
The Triton kernel is also timed pipelined in PyTorch (launches queued back to back, one
synchronize), the method row_kernels.py uses for MLX.

Run on the H200: python benchmarks/kernel_only.py --out results.json [--families softmax,...]
[--dtypes float32,...] [--shapes 32768x4096,...] [--registers 8x1024,32x512,...]
[--flags codegen.builder.SWITCH=0,...] (a variant built under a module switch)
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import glob
import json
import os
import sys
import time

import mlx.core as mx
import numpy as np

import mlxtriton
from mlxtriton import hw
from mlxtriton.codegen.builder import ScheduleParams, build
from mlxtriton.codegen.from_graph import region_from_graph
from mlxtriton.codegen.render import render
from mlxtriton.graph.fused import is_fused

sys.path.insert(0, os.path.dirname(__file__))
from row_kernels import family_arguments, family_cases, triton_softmax_gbs  # noqa: E402

CTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16", "int32": "int32_t",
          "uint32": "uint32_t", "int64": "int64_t", "bool": "bool", "uint8": "uint8_t", "int8": "int8_t"}


def _to_torch(a: mx.array):
    """An MLX array as a CUDA tensor of the same dtype and values (bfloat16 through float32,
    which NumPy lacks; exact). MLX and PyTorch name their dtypes alike."""
    import torch

    host = np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)
    return torch.from_numpy(host).to("cuda").to(getattr(torch, str(a.dtype).split(".")[-1]))


def _library(patterns: list[str]):
    for pattern in patterns:
        for path in sorted(glob.glob(pattern, recursive=True), reverse=True):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    raise OSError(f"none of {patterns} could be loaded")


def _site_dirs() -> list[str]:
    import site
    return [*site.getsitepackages(), site.getusersitepackages(), "/tmp/mlx"]


class Driver:
    """NVRTC and the CUDA driver API through ctypes: compile a source, launch a kernel."""

    def __init__(self):
        import torch

        torch.zeros(1, device="cuda")  # the primary context, current on this thread
        sites = _site_dirs()
        self.nvrtc = _library([f"{s}/nvidia/**/libnvrtc.so*" for s in sites]
                              + [f"{s}/torch/lib/libnvrtc*.so*" for s in sites]
                              + ["/usr/local/cuda*/lib64/libnvrtc.so*", "/usr/lib/x86_64-linux-gnu/libnvrtc.so*"])
        self.cuda = ctypes.CDLL("libcuda.so.1")
        headers = [os.path.dirname(p) for s in [*sites, "/usr/local"] for p in
                   glob.glob(f"{s}/**/cuda_bf16.h", recursive=True)]
        self.includes = sorted(set(headers))
        self.torch = torch

    def _check(self, rc, what):
        if rc != 0:
            raise RuntimeError(f"{what} failed with {rc}")

    def compile(self, source: str, name: str) -> ctypes.c_void_p:
        prog = ctypes.c_void_p()
        self._check(self.nvrtc.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"k.cu", 0, None, None),
                    "nvrtcCreateProgram")
        opts = [b"-arch=sm_90", b"--std=c++17", *[f"-I{d}".encode() for d in self.includes]]
        arr = (ctypes.c_char_p * len(opts))(*opts)
        rc = self.nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
        if rc != 0:
            size = ctypes.c_size_t()
            self.nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            self.nvrtc.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(f"NVRTC: {log.value.decode()[:2000]}")
        size = ctypes.c_size_t()
        self._check(self.nvrtc.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        self._check(self.nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        module, fn = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self.cuda.cuModuleLoadData(ctypes.byref(module), cubin), "cuModuleLoadData")
        self._check(self.cuda.cuModuleGetFunction(ctypes.byref(fn), module, name.encode()), "cuModuleGetFunction")
        return fn

    def launcher(self, fn, tensors, blocks, threads, shared: int = 0):
        if shared > 48000:
            self._check(self.cuda.cuFuncSetAttribute(fn, 8, shared), "cuFuncSetAttribute")  # MAX_DYNAMIC_SHARED
        ptrs = [ctypes.c_uint64(t.data_ptr()) for t in tensors]
        params = (ctypes.c_void_p * len(ptrs))(*[ctypes.addressof(p) for p in ptrs])
        stream = ctypes.c_void_p(self.torch.cuda.current_stream().cuda_stream)
        cuda = self.cuda

        def launch():
            rc = cuda.cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, shared, stream, params, None)
            if rc != 0:
                raise RuntimeError(f"cuLaunchKernel failed with {rc}")

        # The tensors must outlive the launches, not only their pointers: a tensor freed here
        # returns its memory to PyTorch's cache, the next allocation (do_bench's L2 flush
        # buffer, a result) reuses it, and a cross-entropy's labels read from it point anywhere
        # (the illegal memory access seen in sessions 10 and 11 at bf16 32768x1024).
        launch._keep = (tensors, ptrs, params)
        return launch

    def bind(self, k, inputs: list) -> tuple:
        """``k`` (a LoweredKernel) compiled as mx.fast.cuda_kernel wraps it and bound to the
        ``inputs`` tensors and fresh outputs, launched once: ``(launch, outputs, function,
        shared memory bytes)``."""
        outs = [self.torch.empty(s, dtype=getattr(self.torch, d), device="cuda")
                for s, d in zip(k.output_shapes, k.output_dtypes)]
        fn = self.compile(wrapped_source(k), k.name)
        shared = dict(k.options).get("shared_memory", 0)
        threads = k.threadgroup[0]
        launch = self.launcher(fn, inputs + outs, -(-k.grid[0] // threads), threads, shared)
        launch()
        self.torch.cuda.synchronize()
        return launch, outs, fn, shared


# MLX's wrapper includes its utils.cuh, which brings the fixed-width integer types; NVRTC alone
# has no <cstdint>.
_PRELUDE = ("typedef signed char int8_t; typedef unsigned char uint8_t; typedef int int32_t;\n"
            "typedef unsigned int uint32_t; typedef long long int64_t; typedef unsigned long long uint64_t;\n")


def wrapped_source(k) -> str:
    """``k`` (a LoweredKernel) as mx.fast.cuda_kernel wraps it: the header, then one global
    function taking the inputs as ``const T*`` and the outputs as ``T*``, template arguments as
    constants at the top of the body."""
    args = [f"const {CTYPES[d]}* {n}" for n, d in zip(k.input_names, k.input_dtypes)]
    args += [f"{CTYPES[d]}* {n}" for n, d in zip(k.output_names, k.output_dtypes)]
    consts = "".join(f"using {n} = {CTYPES[str(v).split('.')[-1]]};\n" if not isinstance(v, (int, bool))
                     else f"constexpr int {n} = {int(v)};\n" for n, v in k.template)
    return f'{_PRELUDE}{k.header}\nextern "C" __global__ void {k.name}({", ".join(args)}) {{\n{consts}{k.source}\n}}\n'


def kernel_variants(fn, args, registers: list[tuple[int, int]]):
    """(label, LoweredKernel, constants) for the one fused region of ``optimize(fn)``: the kernel
    as mlxtriton builds it, and rebuilt with each ``(resident_registers, max threads per
    threadgroup)`` in ``registers``."""
    graph = mlxtriton.optimize(fn, chip="h200").graph(*args)
    fused = [e for e in graph.eqns if is_fused(e)]
    if len(fused) != 1 or len(graph.eqns) != 1:
        raise ValueError(f"expected one fused region, got {[e.primitive for e in graph.eqns]}")
    region, extra = region_from_graph(fused[0].params["body"], fused[0].params["name"])
    target = hw.target("h200")
    on_chip = dict(fused[0].params["schedule"] or ()).get("on_chip") == "registers"
    out = []
    for label, regs in [("mlxtriton", None)] + [(f"r{r}t{t}", (r, t)) for r, t in registers]:
        def params(itemsize, row_length, regs=regs):
            p = ScheduleParams.from_hw(target.derive(itemsize, row_length))
            p = p if on_chip else dataclasses.replace(p, keep_resident=False)
            if regs is not None:
                p = dataclasses.replace(p, resident_registers=regs[0], vector_row_share=1,
                                        max_threads_per_group=regs[1],
                                        kept_registers=max(p.kept_registers, 2 * regs[0]))
            return p
        out.append((label, render(build(region, params), "cuda"), extra))
    return out


def pipelined_torch(launch, reps=50, runs=5) -> float:
    import statistics

    import torch

    for _ in range(3):
        launch()
    torch.cuda.synchronize()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        for _ in range(reps):
            launch()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) / reps)
    return statistics.median(samples)


def summary(label: str, row: dict) -> str:
    """One line of a result row: every ``*_gbs`` figure, then every ``*_error``."""
    return f"{label}: " + "  ".join(
        f"{k.replace('_gbs', '')} {v:.0f}" for k, v in row.items() if k.endswith("_gbs")) + "".join(
        f"  [{k}: {v}]" for k, v in row.items() if k.endswith("_error"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="kernel_only.json")
    family_arguments(ap, shapes="32768x4096,4096x16384")
    ap.add_argument("--registers", default="8x1024,32x1024,16x512,32x512,64x512",
                    help="schedule variants: RESIDENT_REGISTERSxMAX_THREADS,...")
    ap.add_argument("--flags", default="", help="comma-separated module switches, each a variant "
                    "flag:module.ATTR=V built under it, as benchmarks/row_kernels.py takes them")
    opts = ap.parse_args()
    import torch
    import triton

    drv = Driver()
    registers = [tuple(int(n) for n in r.split("x")) for r in opts.registers.split(",") if r]
    rows_out = []
    result = {"benchmark": "kernel_only", "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "mlx_version": mx.__version__,
              "torch": torch.__version__, "triton": triton.__version__,
              "method": "triton.testing.do_bench (CUDA events, L2 flushed between launches) for every "
                        "kernel; triton_pipelined: launches queued back to back in PyTorch, one synchronize",
              "rows": rows_out}

    def save():
        with open(opts.out, "w") as fh:
            json.dump(result, fh, indent=1)

    for dtype_name, name, composed, _native, rows, cols, args in family_cases(opts, []):
        want = mlxtriton.optimize(composed)(*args)
        want = [want] if isinstance(want, mx.array) else list(want)
        mx.eval(want)
        torch.cuda.synchronize()  # a fault in MLX's own launch surfaces here, not in a variant
        row = {"family": name, "dtype": dtype_name, "rows": rows, "cols": cols}
        try:
            variants = kernel_variants(composed, args, registers)
            for flag in filter(None, opts.flags.split(",")):
                from block_sums import variant  # block_sums imports row_kernels

                with variant(f"flag:{flag}"):
                    (_, k, extra), = kernel_variants(composed, args, [])
                variants.append((f"flag:{flag}", k, extra))
        except Exception as err:  # noqa: BLE001
            row["error"] = f"{type(err).__name__}: {err}"[:300]
            rows_out.append(row)
            save()
            continue
        moved = sum(a.nbytes for a in args) + sum(w.nbytes for w in want)
        row["bytes"] = moved
        for label, k, extra in variants:
            try:
                launch, outs, _, _ = drv.bind(k, [_to_torch(a) for a in (*args, *extra)])
                err = max(float(np.max(np.abs(o.float().cpu().numpy().reshape(w.shape)
                                              - np.array(w.astype(mx.float32)))))
                          for o, w in zip(outs, want))
                ms = triton.testing.do_bench(launch, warmup=25, rep=100)
                row[f"{label}_gbs"] = moved / (ms * 1e-3) / 1e9
                row[f"{label}_maxerr"] = err
                row[f"{label}_threads"] = k.threadgroup[0]
                row[f"{label}_schedule"] = k.kernel.arg.describe()
            except Exception as e:  # noqa: BLE001
                row[f"{label}_error"] = f"{type(e).__name__}: {e}"[:500]
                if "CUDA error" in str(e) or "illegal" in str(e):
                    # a fault poisons the CUDA context: every later call fails. Keep the record of
                    # which kernel faulted (its schedule and source) and stop.
                    row[f"{label}_schedule"] = k.kernel.arg.describe()
                    row[f"{label}_source"] = k.source
                    rows_out.append(row)
                    save()
                    sys.exit(f"{name} {dtype_name} {rows}x{cols} {label}: {row[f'{label}_error']}")
        x = torch.randn(rows, cols, device="cuda", dtype=getattr(torch, dtype_name))
        row["torch_clone_gbs"] = 2 * x.numel() * x.element_size() / (
            triton.testing.do_bench(lambda: x.clone(), warmup=25, rep=100) * 1e-3) / 1e9
        if name == "softmax":
            row["triton_gbs"] = triton_softmax_gbs(rows, cols, dtype_name)
            row["triton_pipelined_gbs"] = triton_softmax_gbs(rows, cols, dtype_name, timer=pipelined_torch)
        rows_out.append(row)
        save()
        print(summary(f"{name:14s} {dtype_name:8s} {rows}x{cols}", row), flush=True)
    print("wrote", opts.out)


if __name__ == "__main__":
    main()
