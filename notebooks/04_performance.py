# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 4. Performance: the committed benchmark results, plotted
#
# Everything here is read from `benchmarks/results/*.json`: figures measured on real devices,
# each file with its date, device, MLX version and method. Nothing is measured in this notebook,
# so it runs anywhere; `python -m mlxtriton bench` measures the machine you are on.
#
# * fused row kernels on the H200: effective bandwidth against row length, for mlxtriton, MLX eager,
#   `mx.compile`, MLX's own op (`mx.softmax`, `mx.fast.*`), the Triton tutorial kernel, and the
#   device's copy bandwidth (MLX's `x + 0`: the ceiling MLX itself reaches);
# * GEMM: GFLOPS against the chip's peak where the profile has the right one, and what operand
#   layout (padding, transposed storage) did;
# * the cost of tracing.

# %%
import json
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from mlxtriton import hw

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "benchmarks" / "results").is_dir())
RESULTS = {}
for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
    data = json.loads(path.read_text())
    RESULTS.setdefault(data.get("benchmark", path.stem), []).append((path.name, data))
for kind, files in RESULTS.items():
    for name, data in files:
        device = data.get("device") or ", ".join(d["name"] for d in data.get("devices", {}).values())
        print(f"{kind:15s} {name:34s} {data.get('date')}  {device}  MLX {data.get('mlx_version')}")


def table(headers, rows) -> str:
    cells = [[str(c) for c in r] for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


# %% [markdown]
# ## Fused row kernels: bandwidth against row length
# Effective bandwidth = the bytes the function must move (each input read once, each output
# written once) / time. A row kernel that reads its row once cannot beat the copy; the dashed
# lines are the H200 profile's datasheet bandwidth and its measured achievable fraction.

# %%
VARIANTS = [("mlxtriton", "mlxtriton_gbs", "#ff7f0e", "o"), ("Triton (tutorial kernel)", "triton_gbs", "#9467bd", "s"),
            ("MLX native op", "mlx_native_gbs", "#2ca02c", "^"), ("mx.compile", "mx.compile_gbs", "#1f77b4", "v"),
            ("MLX eager", "eager_gbs", "#7f7f7f", "x"), ("copy (x + 0)", "copy_gbs", "#000000", ".")]

sys.path.insert(0, str(ROOT / "benchmarks"))
from results_tables import TABLES  # noqa: E402  (the files docs/results.md's tables cite)

# files add row lengths; a length several files measured takes the newest complete run's figure
# (the files of docs/results.md's row-kernel table), else the last file's by name
newest = set(TABLES["row_kernels"][1])
row_results = sorted(RESULTS.get("row_kernels", []), key=lambda named: named[0] in newest)
rows = {}  # (family, dtype, device) -> {row length: row}
for name, data in row_results:
    for r in data["rows"]:
        if "cols" in r and r["family"] != "pointwise_chain":
            rows.setdefault((r["family"], r["dtype"], data["device"]), {})[r["cols"]] = r

sweeps = {k: v for k, v in sorted(rows.items()) if len(v) >= 2}
if not sweeps:
    print("no row-length sweep in benchmarks/results yet (python benchmarks/row_kernels.py on a GPU)")
else:
    columns = 2
    lines = -(-len(sweeps) // columns)
    fig, axes = plt.subplots(lines, columns, figsize=(13, 3.6 * lines), squeeze=False)
    for ax, ((family, dtype, device), by_cols) in zip(axes.flat, sweeps.items()):
        cols = sorted(by_cols)
        for label, key, colour, marker in VARIANTS:
            ys = [by_cols[c].get(key) for c in cols]
            if any(y for y in ys):
                ax.plot(cols, [y or np.nan for y in ys], marker=marker, color=colour, label=label,
                        ls=":" if key == "copy_gbs" else "-")
        try:
            profile = hw.profile(device)  # "NVIDIA H200" names the h200 profile
        except hw.UnknownChipError:
            profile = None
        if profile is not None and profile.peak_bandwidth_gbs:
            ax.axhline(profile.peak_bandwidth_gbs, color="k", ls="--", lw=0.8)
            ax.text(cols[0], profile.peak_bandwidth_gbs, f" datasheet {profile.peak_bandwidth_gbs:.0f} GB/s",
                    va="top", fontsize=7)
            if profile.achievable_bandwidth_fraction:
                ax.axhline(profile.peak_bandwidth_gbs * profile.achievable_bandwidth_fraction, color="k",
                           ls="-.", lw=0.6)
        ax.set_xscale("log", base=2)
        ax.set_xticks(cols)
        ax.set_ylim(0, 5000)
        ax.set_ylabel("effective GB/s")
        ax.set_title(f"{family} {dtype} ({device})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(sweeps):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("row length (rows x length = 128 Mi elements)")
    handles = [plt.Line2D([], [], color=colour, marker=marker, ls=":" if key == "copy_gbs" else "-", label=label)
               for label, key, colour, marker in VARIANTS]
    fig.legend(handles=handles, loc="upper center", ncol=len(VARIANTS), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / lines / 3.6))
    plt.show()
    print("from", ", ".join(sorted({name for name, _ in row_results})),
          "(a row length measured in several files: the newest complete run's figure, else the last file's);",
          "dashed: the profile's datasheet bandwidth, dash-dot: its measured achievable fraction")

# %% [markdown]
# ## Every family at 32768 x 4096
# The same comparison for each fused family, float32 and bfloat16. "x compile" is mlxtriton's
# speed-up over `mx.compile` of the same function; "of copy", its bandwidth over the copy's.

# %%
at = {k: v[4096] for k, v in rows.items() if 4096 in v}
if at:
    dtypes = sorted({k[1] for k in at}, reverse=True)
    fig, axes = plt.subplots(1, len(dtypes), figsize=(7 * len(dtypes), 4.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        fams = [k for k in at if k[1] == dtype]
        width = 0.8 / len(VARIANTS[:-1])
        for j, (label, key, colour, _) in enumerate(VARIANTS[:-1]):
            ys = [at[k].get(key) or 0 for k in fams]
            ax.bar(np.arange(len(fams)) + j * width, ys, width, color=colour, label=label)
        copy = [at[k]["copy_gbs"] for k in fams]
        ax.scatter(np.arange(len(fams)) + 0.4 - width / 2, copy, marker="_", s=900, color="k", label="copy", zorder=3)
        ax.set_xticks(np.arange(len(fams)) + 0.4 - width / 2)
        ax.set_xticklabels([k[0] for k in fams], rotation=20, fontsize=8)
        ax.set_ylabel("effective GB/s")
        ax.set_title(f"{dtype}, 32768 x 4096 ({fams[0][2]})")
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    plt.show()
    print(table(["family", "dtype", "mlxtriton GB/s", "x compile", "of copy", "native GB/s", "Triton GB/s"],
                [[k[0], k[1], f"{r['mlxtriton_gbs']:.0f}", f"{r['mx.compile_us'] / r['mlxtriton_us']:.2f}",
                  f"{r['mlxtriton_gbs'] / r['copy_gbs']:.2f}",
                  f"{r['mlx_native_gbs']:.0f}" if r.get("mlx_native_gbs") else "-",
                  f"{r['triton_gbs']:.0f}" if r.get("triton_gbs") else "-"] for k, r in sorted(at.items())]))
for name, data in row_results:
    if data.get("small_input_per_call_us"):
        calls = ", ".join(f"{k} {v:.1f} us" for k, v in data["small_input_per_call_us"].items())
        print(f"\nper-call cost on 8 x 64 inputs ({name}): {calls}")

# %% [markdown]
# Reading these: a fused row kernel that reads its inputs once and writes once runs at about the
# copy's bandwidth (some slightly above: the copy is MLX's `x + 0`, not the hardware's limit).
# One that falls well short is doing more than moving bytes (compute-bound generated code, or
# more passes over memory than counted): those are listed below, from the data.

# %%
short = [(k, r["mlxtriton_gbs"] / r["copy_gbs"]) for k, r in sorted(at.items())
         if r["mlxtriton_gbs"] < 0.8 * r["copy_gbs"]]
print("below 80% of the copy at 32768 x 4096:",
      ", ".join(f"{k[0]} {k[1]} ({ratio:.2f})" for k, ratio in short) or "none")

# %% [markdown]
# ## GEMM: GFLOPS against the peak
# `benchmarks/gemm.py` times `A @ B` (square, N x N). Efficiency is given only where the chip
# profile holds the peak of the arithmetic used: FP32 on CUDA cores. MLX's CUDA backend computes
# float32 GEMMs as TF32 on tensor cores by default (`MLX_ENABLE_TF32=0` turns that off), and
# float16 / bfloat16 always use tensor cores: the profile records no tensor-core peak, so those
# curves are compared with PyTorch (cuBLAS) on the same GPU instead. The CPU profile has no
# peak at all.

# %%
gemm = [data for _, data in RESULTS.get("gemm", [])]
MATH_STYLE = {"fp32": "#1f77b4", "tf32": "#9467bd", "fp16": "#2ca02c", "bf16": "#d62728"}
for data in gemm:
    for device, info in data["devices"].items():
        rows_d = [r for r in data["rows"] if r["device"] == device and "error" not in r]
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for math, colour in MATH_STYLE.items():
            for impl, ls in (("mlx", "-"), ("torch", "--"), ("numpy", ":")):
                pts = sorted((r["n"], r["gflops"]) for r in rows_d if r["math"] == math and r["impl"] == impl
                             and r["layout"] == "nn" and r["aligned"])
                if pts:
                    ax.plot(*zip(*pts), ls=ls, marker="o", color=colour, label=f"{impl} {math}")
        if info.get("fp32_tflops"):
            ax.axhline(info["fp32_tflops"] * 1e3, color="k", ls="--", lw=0.8)
            ax.text(256, info["fp32_tflops"] * 1e3, f" FP32 peak {info['fp32_tflops']} TFLOPS (profile)",
                    va="bottom", fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("N (aligned sizes, A @ B)")
        ax.set_ylabel("GFLOPS")
        ax.set_title(f"GEMM on {info['name']} ({data['date']}, MLX {data['mlx_version']})")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(alpha=0.3, which="both")
        plt.show()
        best, error = {}, {}
        for r in rows_d:
            if r["impl"] == "mlx" and r["layout"] == "nn":
                best[r["math"]] = max(best.get(r["math"], r), r, key=lambda q: q["gflops"])
            if r["impl"] == "mlx" and r.get("check") == "float64 numpy":
                error[r["math"]] = max(error.get(r["math"], 0.0), r["rel_err"])
        print(table(["math", "best N", "GFLOPS", "efficiency", "vs FP32 peak", "error vs float64", "peak"],
                    [[m, r["n"], f"{r['gflops']:.0f}",
                      f"{100 * r['efficiency']:.0f}%" if r["efficiency"] else "-",
                      f"{r['vs_fp32_peak']:.2f}x" if r["vs_fp32_peak"] else "-",
                      f"{error[m]:.1e}" if m in error else "-", r["peak_note"]] for m, r in best.items()]))
        for line in data.get("warnings", []):
            print("warning:", line)

# %% [markdown]
# ## GEMM: unaligned sizes and layouts
# N = 4095 or 4097 instead of 4096. `pad` stores the operands zero-padded to a multiple of 64 (the
# layout a compiler can choose once, at load time) and slices the product; `pad_call` pads inside
# every call; `nt` stores B transposed. GFLOPS count the useful 2 N^3 operations only.

# %%
LAYOUTS = ("nn", "nt", "pad", "pad_call")
for data in gemm:
    for device, info in data["devices"].items():
        rows_d = [r for r in data["rows"] if r["device"] == device and r["impl"] == "mlx" and "error" not in r]
        unaligned = sorted({r["n"] for r in rows_d if not r["aligned"]})
        maths = [m for m in MATH_STYLE if any(r["math"] == m for r in rows_d)]
        if not unaligned:
            continue
        big = [n for n in unaligned if n > max(unaligned) / 2] or unaligned
        fig, axes = plt.subplots(1, len(maths), figsize=(4 * len(maths), 4), squeeze=False, sharey=False)
        for ax, math in zip(axes[0], maths):
            for i, n in enumerate(big):
                for j, layout in enumerate(LAYOUTS):
                    r = next((r for r in rows_d if r["math"] == math and r["n"] == n and r["layout"] == layout), None)
                    if r:
                        ax.bar(i + j * 0.2, r["gflops"] / 1e3, 0.2, color=f"C{j}", label=layout if i == 0 else None)
                aligned = next((r for r in rows_d if r["math"] == math and r["layout"] == "nn" and r["aligned"]
                                and abs(r["n"] - n) == 1), None)
                if aligned:
                    ax.hlines(aligned["gflops"] / 1e3, i - 0.1, i + 0.7, color="k", ls="--",
                              label="aligned neighbour (nn)" if i == 0 else None)
            ax.set_xticks(np.arange(len(big)) + 0.3)
            ax.set_xticklabels([str(n) for n in big])
            ax.set_title(f"{info['name']}: {math}", fontsize=9)
            ax.set_ylabel("TFLOPS")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        plt.show()
    print("\n".join(data["findings"]))

# %% [markdown]
# On the H200, an unaligned N costs tensor-core GEMMs (TF32, fp16, bf16) about 3-6x at N = 4095
# and 4097; PyTorch's cuBLAS call loses as much at the same sizes, so this is the library's
# behaviour, not MLX's wrapper. Storing the operands padded to a multiple of 64 wins it back
# (padding inside every call wins most of it): for tensor-core math, padding is a layout
# decision worth making once. Plain FP32 loses at most ~1.3x (N = 2049) and padding does not help
# it. Transposed storage (`nt`) was never more than 6% faster, and 9-16% slower for fp16/bf16 at
# the unaligned sizes. Below ~100 us a call (N <= 2048 here), per-call cost decides, not layout.
# TF32 buys 7x over FP32 at N = 4096 for a relative error of ~3e-4 instead of ~5e-7.
#
# On this repository's 2-core CPU machine (busy while measured: see the warning) MLX's CPU GEMM
# ran at 2-6 GFLOPS in every dtype, several times below the OpenBLAS that NumPy links, and B
# stored transposed (`nt`) halved MLX's float32 speed there; the CPU profile names no peak, so
# no efficiency is given.

# %% [markdown]
# ## The cost of tracing
# Tracing is linear in the number of primitives: a fixed multiple of `mx.export_function` alone.

# %%
for name, data in RESULTS.get("trace_overhead", []):
    pts = data["rows"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["primitives"] for r in pts], [r["export_ms"] for r in pts], "o-", label="mx.export_function")
    ax.plot([r["primitives"] for r in pts], [r["trace_ms"] for r in pts], "s-", label="mlxtriton.trace")
    ax.plot([r["primitives"] for r in pts], [r["print_ms"] for r in pts], "^-", label="printing the graph")
    ax.set_xlabel("primitives")
    ax.set_ylabel("ms")
    ax.set_title(f"{data['device']} ({data['date']})", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    plt.show()
