"""The shared benchmark harness: one timing method, one results-file format, the row families.

Every benchmark under benchmarks/ imports what it shares from here and from nowhere else.

Timing (shared/device/README.md): after warm-ups, ``reps`` calls queued with ``mx.async_eval``
keeping the last two outputs alive, ``mx.synchronize()`` once, divided by ``reps``; the median of
``runs`` such runs (`time_mlx`; `queued` for several calls per evaluation, `timeline` for a
CUPTI trace of them). Kernels alone, as Triton times its own: mlxtriton's generated CUDA source
compiled with NVRTC and launched through the CUDA driver API on PyTorch tensors (`Driver`,
`generated_kernel`, `pipelined_torch`). Results: one JSON file per run with its date, device,
MLX version and method (`results_file`).
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import datetime
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mlxtriton
from mlxtriton.runtime.tuner import time_queued  # the tuner's timing, shared


def time_mlx(fn, args, reps: int = 50, runs: int = 5) -> float:
    """Median seconds per call over ``runs`` runs of `time_queued`, after 3 warm-up calls."""
    for _ in range(3):
        mx.eval(fn(*args))
    mx.synchronize()
    return statistics.median(time_queued(fn, args, reps) for _ in range(runs))


# The row-kernel suite's shapes (rows x row length): 32768 x 4096 and row lengths 512..16384.
SUITE_SHAPES = [(32768, 4096), (65536, 512), (32768, 1024), (16384, 2048), (8192, 8192), (4096, 16384)]


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

    def residual_rms_norm(x, r, w):  # a decoder layer's residual add and the next norm
        h = x + r
        return h, rms_norm(h, w)

    def cross_entropy(logits, labels):
        return nn.losses.cross_entropy(logits, labels, reduction="none")

    return {
        "softmax": (softmax_composed, lambda x: mx.softmax(x, axis=-1), ("x",)),
        "log_softmax": (log_softmax, None, ("x",)),
        "layer_norm": (layer_norm, lambda x, w, b: mx.fast.layer_norm(x, w, b, 1e-5), ("x", "w", "w")),
        "rms_norm": (rms_norm, lambda x, w: mx.fast.rms_norm(x, w, 1e-5), ("x", "w")),
        "rms_norm_gate": (rms_norm_gate, None, ("x", "w", "x")),
        "cross_entropy": (cross_entropy, None, ("x", "labels")),
        "residual_rms_norm": (residual_rms_norm, None, ("x", "x", "w")),
    }


def batch_norm_statistics(x):
    return mx.mean(x, axis=(0, 1, 2)), mx.var(x, axis=(0, 1, 2))


def softmax_axis_0(x):
    return mx.softmax(x, axis=0)


def softmax_transposed(x):
    return mx.softmax(mx.transpose(x), axis=-1)


# Reductions not over the last axis: name -> (function, shape, dtype, a small shape of the same kind)
COLUMN_CASES = {
    "batch-norm statistics, NHWC 32x64x64x256": (batch_norm_statistics, (32, 64, 64, 256), mx.bfloat16,
                                                 (2, 4, 4, 64)),
    "softmax over axis 0, 4096x16384": (softmax_axis_0, (4096, 16384), mx.float32, (64, 512)),
    "softmax of a transposed input, 4096x16384": (softmax_transposed, (4096, 16384), mx.float32, (64, 512)),
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


# -- several calls per evaluation, and what the GPU did ------------------------------------------


def queued(fn, arg_sets, per_eval: int, reps: int = 50, runs: int = 5) -> tuple[float, float]:
    """(seconds per call, host seconds per call): ``reps`` evaluations queued, each of
    ``per_eval`` calls taking the argument sets in turn; median of ``runs``."""
    n = len(arg_sets)

    def evaluation(i):
        outs = [fn(*arg_sets[(i * per_eval + j) % n]) for j in range(per_eval)]
        mx.async_eval(outs)
        return outs

    for i in range(3):
        mx.eval(evaluation(i))
    mx.synchronize()
    total, host = [], []
    for _ in range(runs):
        live = []
        t0 = time.perf_counter()
        for i in range(reps):
            live = live[-2:] + [evaluation(i)]
        t1 = time.perf_counter()
        mx.synchronize()
        t2 = time.perf_counter()
        total.append((t2 - t0) / (reps * per_eval))
        host.append((t1 - t0) / (reps * per_eval))
    return statistics.median(total), statistics.median(host)


def timeline(variants: dict, args: tuple, evaluations: int = 40) -> dict:
    """Per variant: its kernels' median GPU time, the median idle gap between consecutive
    kernels, and driver/runtime calls per evaluation, from a CUPTI trace (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.init()
    out = {}
    for name, fn in variants.items():
        for _ in range(3):
            mx.eval(fn(*args))
        mx.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            live = []
            for _ in range(evaluations):
                o = fn(*args)
                live = live[-2:] + [o]
                mx.async_eval(o)
            mx.synchronize()
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            path = fh.name
        prof.export_chrome_trace(path)
        with open(path) as fh:
            events = json.load(fh).get("traceEvents", [])
        os.unlink(path)
        kernels = sorted((e for e in events if e.get("cat") == "kernel"), key=lambda e: e["ts"])
        gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(kernels, kernels[1:])]
        names = collections.Counter(e["name"][:60] for e in kernels)
        calls = collections.defaultdict(list)
        for e in events:
            if e.get("cat") in ("cuda_driver", "cuda_runtime"):
                calls[e["name"]].append(e.get("dur", 0.0))
        out[name] = {
            "kernels": len(kernels),
            "kernel_names": dict(names.most_common(4)),
            "kernel_us_median": statistics.median(e["dur"] for e in kernels) if kernels else None,
            "gap_us_median": statistics.median(gaps) if gaps else None,
            "gap_us_p90": sorted(gaps)[int(0.9 * len(gaps))] if gaps else None,
            "calls_per_evaluation": {k: round(len(v) / evaluations, 2) for k, v in
                                     sorted(calls.items(), key=lambda kv: -len(kv[1]))[:12]},
            "call_us_median": {k: statistics.median(v) for k, v in
                               sorted(calls.items(), key=lambda kv: -len(kv[1]))[:12]},
        }
        print(f"  timeline {name:36s} {out[name]['kernels']} kernels  kernel "
              f"{out[name]['kernel_us_median']} us  gap {out[name]['gap_us_median']} us  "
              f"calls/eval {out[name]['calls_per_evaluation']}", flush=True)
    return out


# -- kernels alone: NVRTC and the CUDA driver ---------------------------------------------------


CTYPES = {"float32": "float", "float16": "__half", "bfloat16": "__nv_bfloat16", "int32": "int32_t",
          "uint32": "uint32_t", "int64": "int64_t", "bool": "bool", "uint8": "uint8_t", "int8": "int8_t"}


def to_torch(a: mx.array):
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
        # (the illegal memory access of kernel_only_h200_ce_fault.json, bf16 32768x1024).
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


def generated_kernel(fn, args, chip: str = "h200", dialect: str = "cuda"):
    """``(LoweredKernel, constants)`` of the one fused region of ``mlxtriton.optimize(fn)``: the
    kernel the default schedule gives for ``chip``, written for ``dialect``."""
    from mlxtriton.codegen.lowering import lower_fused
    from mlxtriton.codegen.schedule import kernel_target
    from mlxtriton.graph.fused import is_fused

    graph = mlxtriton.optimize(fn, chip=chip).graph(*args)
    fused = [e for e in graph.eqns if is_fused(e)]
    if len(fused) != 1 or len(graph.eqns) != 1:
        raise ValueError(f"expected one fused region, got {[e.primitive for e in graph.eqns]}")
    return lower_fused(fused[0], kernel_target(chip, None, dialect))


def pipelined_torch(launch, reps=50, runs=5) -> float:
    """Seconds per launch of ``launch`` (a PyTorch-side launch): ``reps`` launches queued back
    to back, one synchronise; the median of ``runs``."""
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
