"""Benchmark: dense GEMM (C = A @ B, square M = N = K) with MLX on each local device, against the
chip's peak from `mlxtriton.hw`, and which operand layout was faster where.

Sweeps sizes (256..4096 on a GPU, 256..1024 on the CPU by default) and their unaligned neighbours
(4095, 4097 next to 4096), dtypes float32 / float16 / bfloat16, and layouts:
  nn        A @ B, both row-major;
  nt        A @ Bt.T with B stored transposed (Bt is N x K, contiguous): the transpose is a view;
  pad       unaligned sizes only: A and B stored zero-padded to a multiple of ``--tile``, the
            product sliced back (a view): the layout a compiler could choose once at load time;
  pad_call  unaligned sizes only: the same, padding inside every call.
References where the machine has them: NumPy's BLAS on the CPU (float32), PyTorch (cuBLAS) on CUDA.

Method: operands drawn from N(0, 1) (never zeros: zeros run faster than real data). GPU:
pipelined timing (shared/device/README.md): two warm-ups, then ``reps`` calls queued with
``mx.async_eval`` keeping the last two outputs alive, one ``mx.synchronize()``, divided by
``reps``; ``reps`` fills ~25 ms; the median of 5 such runs. CPU: one warm-up, then one
``mx.eval`` per call, the median of ``reps`` calls (~0.5 s, at least 3). ``nn`` is timed again
after the other layouts; a layout counts as faster or slower only beyond 5%, the scatter of its
samples, and that repeat's difference. GFLOPS = 2*M*N*K / time for the requested size, so
padding's extra work counts against it. Efficiency = GFLOPS / the profile's ``fp32_tflops`` only
where that is the ceiling of the arithmetic used: FP32 without tensor cores (on Apple M1-M4 FP16
has the FP32 rate and bfloat16 runs in FP32 ALUs, shared/reference/apple-gpu.md). Tensor-core
math on NVIDIA (fp16, bf16, and float32 as TF32, MLX's CUDA default unless MLX_ENABLE_TF32=0) has
no peak in the profile, so no efficiency is given; ``vs_fp32_peak`` still shows the ratio. The CPU
profile has no peak at all: none is invented. Error: ||C - ref|| / ||ref|| against float64 NumPy
up to ``--check-max``, above it against the same dtype's ``nn`` result (layouts agree).

Run: python benchmarks/gemm.py --out results.json   (or: python -m mlxtriton bench gemm)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

import mlx.core as mx
import numpy as np

from mlxtriton import hw

DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("nn", "nt", "pad", "pad_call")
DEFAULT_SIZES = {"gpu": (256, 512, 1024, 2048, 4096), "cpu": (256, 512, 1024)}
# A layout is "faster" only by more than this or the measured spread, whichever is larger: the
# GPU figures repeat within ~2% run to run; the shared 2-core CPU less well.
MIN_DIFFERENCE = 0.05
# Below this a GPU call is dominated by per-call cost (13-22 us a call for any MLX op on the H200,
# benchmarks/results/row_kernels_h200_softmax.json) and scheduling, not by the GEMM: layout
# differences there are not about the layout.
LAUNCH_BOUND_US = 100.0


def _now() -> float:
    return time.perf_counter()


def spread(samples: list[float]) -> float:
    """Interquartile range over the median: how far repeated samples scatter (outliers from other
    work on a shared machine do not count, as they would with max - min)."""
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return (q3 - q1) / statistics.median(samples)


def time_mlx(fn: Callable, args, pipelined: bool, target_s: float) -> tuple[float, float, int]:
    """(median seconds per call, `spread` of the samples, calls per sample)."""
    for _ in range(2 if pipelined else 1):  # the CPU compiles nothing: one warm-up allocates
        mx.eval(fn(*args))
    t0 = _now()
    mx.eval(fn(*args))
    estimate = max(_now() - t0, 1e-6)
    if not pipelined:
        reps = max(3, min(50, int(target_s / estimate)))
        samples = []
        for _ in range(reps):
            t0 = _now()
            mx.eval(fn(*args))
            samples.append(_now() - t0)
        return statistics.median(samples), spread(samples), 1
    reps = max(3, min(200, int(target_s / estimate)))
    samples = []
    for _ in range(5):
        live = []
        t0 = _now()
        for _ in range(reps):
            out = fn(*args)
            live = live[-2:] + [out]
            mx.async_eval(out)
        mx.synchronize()
        samples.append((_now() - t0) / reps)
    return statistics.median(samples), spread(samples), reps


def time_numpy(a: np.ndarray, b: np.ndarray, target_s: float) -> tuple[float, float, int]:
    a @ b
    t0 = _now()
    a @ b
    reps = max(3, min(50, int(target_s / max(_now() - t0, 1e-6))))
    samples = []
    for _ in range(reps):
        t0 = _now()
        a @ b
        samples.append(_now() - t0)
    return statistics.median(samples), spread(samples), 1


def time_torch(n: int, dtype: str, tf32: bool, seed: int) -> tuple[float, float, int] | None:
    """PyTorch's matmul (cuBLAS) at the same size and math, timed with CUDA events; None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = tf32
    g = torch.Generator(device="cuda").manual_seed(seed)
    tdtype = getattr(torch, dtype)
    a = torch.randn(n, n, device="cuda", generator=g).to(tdtype)
    b = torch.randn(n, n, device="cuda", generator=g).to(tdtype)
    for _ in range(3):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.matmul(a, b)
    end.record()
    end.synchronize()
    reps = max(3, min(200, int(25.0 / max(start.elapsed_time(end), 1e-3))))
    samples = []
    for _ in range(5):
        start.record()
        for _ in range(reps):
            torch.matmul(a, b)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / reps)
    return statistics.median(samples), spread(samples), reps


def numpy_blas() -> str:
    try:
        return np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except (AttributeError, KeyError, TypeError):
        return "unknown BLAS"


def tf32_enabled() -> bool:
    """MLX's CUDA backend computes float32 GEMMs as TF32 unless MLX_ENABLE_TF32=0 (mlx/utils.h)."""
    return os.environ.get("MLX_ENABLE_TF32", "1") not in ("0", "")


def math_of(profile: hw.Profile, dtype: str) -> str:
    """The arithmetic a GEMM of ``dtype`` runs on this device: fp32, tf32, fp16 or bf16."""
    if dtype == "float32":
        return "tf32" if profile.backend == "cuda" and tf32_enabled() else "fp32"
    return {"float16": "fp16", "bfloat16": "bf16"}[dtype]


def ceiling(profile: hw.Profile, math: str) -> tuple[float | None, str]:
    """(peak GFLOPS that bounds this math on this chip, or None; where it comes from or why none)."""
    if profile.fp32_tflops is None:
        if not profile.is_gpu:
            return None, "the CPU profile records no peak (mlxtriton.hw lists none): no efficiency given"
        return None, f"the {profile.name} profile records no FP32 peak: no efficiency given"
    estimate = " (an estimate)" if profile.fp32_tflops_estimated else ""
    if profile.vendor == "nvidia" and math != "fp32":
        return None, (f"{math} runs on tensor cores; the {profile.name} profile records only the "
                      f"FP32 non-tensor peak ({profile.fp32_tflops} TFLOPS): no efficiency given")
    note = f"{profile.name} fp32_tflops {profile.fp32_tflops}{estimate}"
    if profile.vendor == "apple" and math != "fp32":
        note += "; FP16 has the FP32 rate on M1-M4 and bfloat16 runs in FP32 ALUs"
    return profile.fp32_tflops * 1e3, note


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def unaligned_neighbours(sizes, tile: int, smallest: int = 1024) -> list[int]:
    """n - 1 and n + 1 next to each tile-aligned size from ``smallest`` on."""
    return sorted({m for n in sizes if n >= smallest and n % tile == 0 for m in (n - 1, n + 1)})


def layouts_for(n: int, tile: int, wanted) -> list[str]:
    aligned = n % tile == 0
    return [lay for lay in wanted if lay in ("nn", "nt") or not aligned]


def make_call(layout: str, n: int, tile: int, a: mx.array, b: mx.array) -> tuple[Callable, tuple]:
    """The function and stored operands of one layout (the operands are evaluated: not timed)."""
    if layout == "nn":
        return (lambda x, y: x @ y), (a, b)
    if layout == "nt":
        bt = mx.contiguous(b.T)
        mx.eval(bt)
        return (lambda x, yt: x @ yt.T), (a, bt)
    p = round_up(n, tile) - n
    if layout == "pad":
        ap, bp = mx.pad(a, [(0, p), (0, p)]), mx.pad(b, [(0, p), (0, p)])
        mx.eval(ap, bp)
        return (lambda x, y: (x @ y)[:n, :n]), (ap, bp)
    if layout == "pad_call":
        return (lambda x, y: (mx.pad(x, [(0, p), (0, p)]) @ mx.pad(y, [(0, p), (0, p)]))[:n, :n]), (a, b)
    raise ValueError(f"unknown layout {layout!r}; choose from {LAYOUTS}")


def relative_error(out: mx.array, ref: mx.array) -> float:
    diff = out.astype(mx.float32) - ref.astype(mx.float32)
    return (mx.linalg.norm(diff.flatten()) / mx.linalg.norm(ref.astype(mx.float32).flatten())).item()


def load_average() -> list[float] | None:
    """The host's 1/5/15-minute load: timings on a busy shared machine scatter more."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device_name: str, profile: hw.Profile) -> dict:
    out = {"name": mx.device_info().get("device_name") if device_name == "gpu" else cpu_name(),
           "profile": profile.key, "fp32_tflops": profile.fp32_tflops,
           "fp32_tflops_estimated": profile.fp32_tflops_estimated,
           "load_average_start": load_average()}
    if device_name == "cpu":
        out["cores"] = os.cpu_count()
        out["numpy_blas"] = numpy_blas()
    return out


def operands(n: int, dtype_name: str, seed: int) -> tuple[mx.array, mx.array]:
    ka, kb = mx.random.split(mx.random.key(seed + n))
    dtype = getattr(mx, dtype_name)
    a = mx.random.normal((n, n), key=ka).astype(dtype)
    b = mx.random.normal((n, n), key=kb).astype(dtype)
    mx.eval(a, b)
    return a, b


def run_case(phase: str, device_name: str, profile: hw.Profile, dtype_name: str, n: int, layouts,
             opts) -> list[dict]:
    """The rows of one (dtype, size) on one device: MLX's layouts, or the reference libraries."""
    math = math_of(profile, dtype_name)
    peak, peak_note = ceiling(profile, math)
    flops = 2.0 * n * n * n
    pipelined = device_name == "gpu"
    target_s = 0.025 if pipelined else 0.5

    def row(impl, layout, timing, err, check):
        t, scatter, reps = timing
        gflops = flops / t / 1e9
        return {"device": device_name, "dtype": dtype_name, "math": math, "n": n,
                "aligned": n % opts.tile == 0, "impl": impl, "layout": layout, "time_us": 1e6 * t,
                "spread": scatter, "reps": reps, "gflops": gflops,
                "efficiency": gflops / peak if peak else None,
                "vs_fp32_peak": gflops / (1e3 * profile.fp32_tflops) if profile.fp32_tflops else None,
                "peak_note": peak_note, "rel_err": err, "check": check}

    rows = []
    a, b = operands(n, dtype_name, opts.seed)
    if phase == "references":
        if device_name == "cpu" and dtype_name == "float32":
            rows.append(row("numpy", "nn", time_numpy(np.array(a), np.array(b), target_s), None, None))
        elif profile.backend == "cuda":
            timing = time_torch(n, dtype_name, math == "tf32", opts.seed + n)
            if timing is not None:
                rows.append(row("torch", "nn", timing, None, None))
        return rows
    reference, check = None, None
    if n <= opts.check_max:
        a64 = np.array(a.astype(mx.float32), dtype=np.float64)
        b64 = np.array(b.astype(mx.float32), dtype=np.float64)
        reference, check = mx.array((a64 @ b64).astype(np.float32)), "float64 numpy"
    for layout in layouts_for(n, opts.tile, layouts):
        try:
            fn, args = make_call(layout, n, opts.tile, a, b)
            out = fn(*args)
            mx.eval(out)
            err = None
            if reference is None:  # too large for float64 NumPy: the other layouts must agree with nn
                reference, check = out, "same dtype nn"
            else:
                err = relative_error(out, reference)
            rows.append(row("mlx", layout, time_mlx(fn, args, pipelined, target_s), err, check))
        except Exception as e:  # noqa: BLE001 - a case MLX cannot run is a finding, not the end of the sweep
            rows.append({"device": device_name, "dtype": dtype_name, "math": math, "n": n, "impl": "mlx",
                         "layout": layout, "error": f"{type(e).__name__}: {e}"})
    base = next((r for r in rows if r["layout"] == "nn" and "error" not in r), None)
    if base is not None:
        # nn timed again after the other layouts: how far the same case moves within seconds (other
        # work on a shared machine, clocks) is the smallest difference this run can resolve.
        fn, args = make_call("nn", n, opts.tile, a, b)
        again = 1e6 * time_mlx(fn, args, pipelined, target_s)[0]
        base["repeat_us"] = again
        base["repeat_scatter"] = abs(again - base["time_us"]) / min(again, base["time_us"])
    return rows


def summarize(rows: list[dict], tile: int) -> list[dict]:
    """Per (device, impl mlx, dtype, size): the fastest layout and whether the others differ by
    more than the noise; per unaligned size: its speed against the aligned neighbour."""
    out = []
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        if r["impl"] == "mlx" and "error" not in r:
            groups.setdefault((r["device"], r["dtype"], r["math"], r["n"]), {})[r["layout"]] = r
    for (device, dtype, math, n), by_layout in sorted(groups.items()):
        best = min(by_layout.values(), key=lambda r: r["time_us"])
        base = by_layout.get("nn")
        entry = {"device": device, "dtype": dtype, "math": math, "n": n, "fastest": best["layout"],
                 "launch_bound": device == "gpu" and (base or best)["time_us"] < LAUNCH_BOUND_US,
                 "speedup_over_nn": {k: base["time_us"] / r["time_us"] for k, r in by_layout.items()}
                 if base else {}}
        if base:
            floor = max(MIN_DIFFERENCE, base["spread"], base.get("repeat_scatter", 0.0))
            noise = {k: max(floor, r["spread"]) for k, r in by_layout.items()}
            entry["significant"] = {k: abs(s - 1) > noise[k] for k, s in entry["speedup_over_nn"].items()}
        aligned = [m for m in groups if m[:3] == (device, dtype, math) and m[3] % tile == 0
                   and abs(m[3] - n) == 1]
        if aligned and base:
            ref = groups[aligned[0]].get("nn")
            if ref:
                entry["nn_gflops_vs_aligned"] = base["gflops"] / ref["gflops"]
                floor = max(MIN_DIFFERENCE, *(r["spread"] for r in (base, ref)),
                            *(r.get("repeat_scatter", 0.0) for r in (base, ref)))
                entry["aligned_significant"] = abs(entry["nn_gflops_vs_aligned"] - 1) > floor
        out.append(entry)
    return out


def warnings(result: dict) -> list[str]:
    """What the reader must know to trust the figures: a busy host (other work competing for the
    cores scatters CPU timings and slows multithreaded BLAS most)."""
    out = []
    for name, info in result.get("devices", {}).items():
        loads = [info.get("load_average_start")] + [r.get("load_average_end") for r in result.get("runs", [])]
        busiest = max((load[0] for load in loads if load), default=None)
        cores = info.get("cores") or os.cpu_count()
        if name == "cpu" and busiest is not None and busiest > 0.5 * cores:
            out.append(f"cpu: the host was busy (1-minute load up to {busiest:.1f} on {cores} cores): CPU "
                       f"figures are lower and scatter more than on an idle machine")
    return out


def findings(summary: list[dict]) -> list[str]:
    """One sentence per case where a layout beat ``nn`` by more than the noise, and per unaligned
    size that lost speed against its aligned neighbour; launch-bound cases are left out."""
    lines = []
    skipped = [s for s in summary if s.get("launch_bound")]
    if skipped:
        lines.append(f"{len(skipped)} GPU cases ran under {LAUNCH_BOUND_US:.0f} us a call (n <= "
                     f"{max(s['n'] for s in skipped)}): per-call cost, not layout; left out below")
    for s in summary:
        if s.get("launch_bound"):
            continue
        where = f"{s['device']} {s['dtype']}{' (' + s['math'] + ')' if s['math'] == 'tf32' else ''} n={s['n']}"
        for layout, speedup in s["speedup_over_nn"].items():
            if layout != "nn" and s.get("significant", {}).get(layout):
                verdict = "faster" if speedup > 1 else "slower"
                lines.append(f"{where}: {layout} {speedup:.2f}x the speed of nn ({verdict})")
        ratio = s.get("nn_gflops_vs_aligned")
        if ratio is not None and s.get("aligned_significant", abs(ratio - 1) > MIN_DIFFERENCE):
            lines.append(f"{where}: unaligned nn reaches {ratio:.2f}x the GFLOPS of the aligned size")
    return lines or ["no layout differed from nn by more than the noise"]


def format_table(rows: list[dict]) -> str:
    head = (f"{'device':6s} {'impl':6s} {'dtype':9s} {'math':4s} {'n':>5s} {'layout':8s} {'time us':>10s} "
            f"{'GFLOPS':>9s} {'eff':>6s} {'xFP32pk':>7s} {'rel err':>8s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['device']:6s} {r['impl']:6s} {r['dtype']:9s} {r['math']:4s} {r['n']:5d} "
                         f"{r['layout']:8s} failed: {r['error']}")
            continue
        eff = f"{100 * r['efficiency']:5.1f}%" if r["efficiency"] is not None else "     -"
        vs = f"{r['vs_fp32_peak']:7.3f}" if r["vs_fp32_peak"] is not None else "      -"
        err = f"{r['rel_err']:8.1e}" if r["rel_err"] is not None else "       -"
        lines.append(f"{r['device']:6s} {r['impl']:6s} {r['dtype']:9s} {r['math']:4s} {r['n']:5d} "
                     f"{r['layout']:8s} {r['time_us']:10.1f} {r['gflops']:9.1f} {eff} {vs} {err}")
    return "\n".join(lines)


def parse_ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="mlxtriton bench gemm", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gemm.json", help="results JSON (written after every row)")
    ap.add_argument("--append", action="store_true", help="add rows to an existing --out file")
    ap.add_argument("--devices", default="", help="cpu,gpu (default: every device MLX has here)")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--sizes", default="", help="aligned sizes (default per device: "
                    + "; ".join(f"{d} {','.join(map(str, s))}" for d, s in DEFAULT_SIZES.items()) + ")")
    ap.add_argument("--unaligned", default=None,
                    help="unaligned sizes (default: n-1 and n+1 next to each aligned n >= 1024)")
    ap.add_argument("--tile", type=int, default=64,
                    help="padding multiple (64: MLX's GEMM tile, shared/reference/apple-gpu.md)")
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--check-max", type=int, default=1024, help="largest n checked against float64 NumPy")
    ap.add_argument("--no-references", action="store_true", help="skip NumPy (CPU) and PyTorch (CUDA)")
    ap.add_argument("--max-seconds", type=float, default=0, help="start no new case after this long")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    started = _now()
    devices = [d for d in opts.devices.split(",") if d] or (
        ["cpu", "gpu"] if mx.is_available(mx.gpu) else ["cpu"])
    if "gpu" in devices and not mx.is_available(mx.gpu):
        print("mlxtriton bench gemm: this MLX has no GPU backend; running the CPU only", file=sys.stderr)
        devices = [d for d in devices if d != "gpu"] or ["cpu"]
    dtypes_wanted = [d for d in opts.dtypes.split(",") if d]
    layouts_wanted = [lay for lay in opts.layouts.split(",") if lay]
    for name in dtypes_wanted:
        if name not in DTYPES:
            raise SystemExit(f"unknown dtype {name!r}; choose from {DTYPES}")

    result = None
    if opts.append and os.path.exists(opts.out):
        with open(opts.out) as fh:
            result = json.load(fh)
    if result is None:
        result = {"benchmark": "gemm", "date": datetime.date.today().isoformat(), "devices": {},
                  "mlx_version": mx.__version__, "python": sys.version.split()[0],
                  "host": f"{platform.machine()} {platform.system()}",
                  "method": __doc__.split("Method:")[1].split("Run:")[0].strip(),
                  "tile": opts.tile, "rows": []}
    rows = result["rows"]

    def save():
        result["summary"] = summarize(rows, result["tile"])
        result["findings"] = findings(result["summary"])
        result["warnings"] = warnings(result)
        with open(opts.out, "w") as fh:
            json.dump(result, fh, indent=1)

    print(f"GEMM sweep on {', '.join(devices)}: dtypes {', '.join(dtypes_wanted)}; results to {opts.out}",
          flush=True)
    print(format_table([]), flush=True)
    deadline = started + opts.max_seconds if opts.max_seconds else None
    truncated = False
    for device_name in devices:
        device = mx.gpu if device_name == "gpu" else mx.cpu
        mx.set_default_device(device)
        profile = hw.running_device(device)
        result["devices"].setdefault(device_name, describe_device(device_name, profile))
        sizes = parse_ints(opts.sizes) or list(DEFAULT_SIZES[device_name])
        unaligned = (parse_ints(opts.unaligned) if opts.unaligned is not None
                     else unaligned_neighbours(sizes, opts.tile))
        cases = [(d, n) for d in dtypes_wanted for n in sorted(set(sizes) | set(unaligned))]
        # MLX first, the references after: a reference library failing cannot cost MLX rows.
        for phase in ("mlx", "references"):
            if phase == "references" and opts.no_references:
                continue
            for dtype_name, n in cases:
                if deadline and _now() > deadline:
                    truncated = True
                    break
                for row in run_case(phase, device_name, profile, dtype_name, n, layouts_wanted, opts):
                    rows.append(row)
                    save()
                    print(format_table([row]).splitlines()[-1], flush=True)
    result.setdefault("runs", []).append({
        "argv": list(argv) if argv is not None else sys.argv[1:], "devices": devices,
        "MLX_ENABLE_TF32": os.environ.get("MLX_ENABLE_TF32"), "seconds": round(_now() - started, 1),
        "truncated": truncated, "load_average_end": load_average()})
    save()
    print()
    print(format_table(sorted(rows, key=lambda r: (r["device"], DTYPES.index(r["dtype"]), r["math"], r["n"],
                                                   r["impl"] != "mlx", r["layout"]))))
    print()
    peaks = {r["peak_note"] for r in rows if "peak_note" in r}
    for note in sorted(peaks):
        print("peak:", note)
    print("layouts:")
    for line in result["findings"]:
        print("  " + line)
    for line in result["warnings"]:
        print("warning:", line)
    if truncated:
        print(f"stopped after --max-seconds {opts.max_seconds:g}: the sweep is incomplete")
    print("wrote", opts.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
