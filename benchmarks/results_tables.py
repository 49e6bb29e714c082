"""The results tables of docs/results.md and README.md, made from the JSON files in
benchmarks/results/.

Each table is written between ``<!-- table NAME -->`` and ``<!-- end table -->`` in a page, from
the files named in ``TABLES`` (the newest complete run of each benchmark), with a line giving the
files, device, date and MLX version they record. tests/test_docs.py checks that the pages match
what this script writes.

Run: python benchmarks/results_tables.py            (rewrites the tables in both pages)
     python benchmarks/results_tables.py --check    (exit 1 if a page differs)
"""

from __future__ import annotations

import json
import pathlib
import re
import sys
from typing import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# page -> the path from it to benchmarks/results/, for links
PAGES = {ROOT / "docs" / "results.md": "../benchmarks/results/", ROOT / "README.md": "benchmarks/results/"}

FAMILIES = {"softmax": "softmax", "log_softmax": "log-softmax", "layer_norm": "layer norm",
            "rms_norm": "RMS norm", "rms_norm_gate": "RMS norm x SiLU gate", "cross_entropy": "cross-entropy",
            "pointwise_chain": "pointwise `max(exp(x/2) * y + 1, 0)`"}
DTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def load(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _num(v, digits: int = 0) -> str:
    if v is None:
        return ""
    return f"{0.0 if round(v, digits) == 0 else v:.{digits}f}"  # no "-0.0"


def _ratio(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _range(values, fmt: Callable = _ratio) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def _markdown(headers: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _provenance(files: list[str], link: str) -> str:
    """The files, device, date and MLX version a table comes from."""
    runs = [load(f) for f in files]
    device = {r.get("device") if isinstance(r.get("device"), str) and r.get("device") != "gpu"
              else (r.get("device_info") or {}).get("device_name")
              or next(iter((r.get("devices") or {}).values()), {}).get("name") for r in runs}
    dates = {str(r.get("date", ""))[:10] for r in runs}
    versions = {r.get("mlx_version") or r.get("mlx") for r in runs}
    links = ", ".join(f"[{f}]({link}{f})" for f in files)
    return (f"From {links}: {', '.join(sorted(str(d) for d in device))}, {', '.join(sorted(dates))}, "
            f"MLX {', '.join(sorted(str(v) for v in versions))}.")


def _shape(r) -> str:
    return f"{r['rows']}x{r['cols']}"


def row_kernels(files):
    rows = [r for f in files for r in load(f)["rows"]]
    out = []
    for dtype in ("float32", "bfloat16"):
        for fam in FAMILIES:
            mine = [r for r in rows if r["family"] == fam and r["dtype"] == dtype]
            if not mine:
                continue
            speedups = [r["mx.compile_us"] / r["mlxtriton_us"] for r in mine]
            at = next((r for r in mine if (r["rows"], r["cols"]) == (32768, 4096)), mine[0])
            out.append([FAMILIES[fam], DTYPES[dtype], _shape(at), _num(at["mlxtriton_gbs"]),
                        _num(at["mx.compile_gbs"]), _num(at.get("mlx_native_gbs")), _num(at.get("triton_gbs")),
                        _num(at.get("copy_gbs")), _ratio(at["mx.compile_us"] / at["mlxtriton_us"]),
                        _range(speedups) if len(mine) > 1 else ""])
    return _markdown(["function", "dtype", "shape", "mlxtriton", "mx.compile", "MLX's op", "Triton softmax",
                      "MLX copy", "vs mx.compile", "vs mx.compile, rows of 512-16384"], out)


def row_kernels_summary(files):
    """The README's table: each function at 32768x4096, both dtypes, against mx.compile and MLX's op."""
    rows = [r for f in files for r in load(f)["rows"] if (r["rows"], r["cols"]) == (32768, 4096)]
    out = []
    for fam in FAMILIES:
        cells = [FAMILIES[fam]]
        for dtype in ("float32", "bfloat16"):
            r = next((r for r in rows if r["family"] == fam and r["dtype"] == dtype), None)
            if r is None:
                break
            native = r.get("mlx_native_us")
            cells += [_num(r["mlxtriton_gbs"]), _ratio(r["mx.compile_us"] / r["mlxtriton_us"]),
                      _ratio(native / r["mlxtriton_us"]) if native else "-"]
        else:
            out.append(cells)
    return _markdown(["32768 x 4096", "float32 GB/s", "vs mx.compile", "vs MLX's op", "bfloat16 GB/s",
                      "vs mx.compile", "vs MLX's op"], out)


def backward_rows(files):
    rows = [r for f in files for r in load(f)["rows"]]
    out = []
    for dtype in ("float32", "bfloat16"):
        for fam in FAMILIES:
            for r in (r for r in rows if r["family"] == fam and r["dtype"] == dtype):
                ours, theirs = r["bwd/mlxtriton_gbs"], r["bwd/mx.compile_gbs"]
                out.append([FAMILIES[fam], DTYPES[dtype], _shape(r), _num(ours), _num(theirs),
                            _num(r.get("bwd/mlx_native_gbs")), _ratio(ours / theirs),
                            _num(r.get("fwd+bwd/mlxtriton_gbs")), _num(r.get("fwd+bwd/mx.compile_gbs"))])
    return _markdown(["function", "dtype", "shape", "mlxtriton", "mx.compile of MLX's VJP", "MLX's op's VJP",
                      "vs mx.compile", "forward + backward: mlxtriton", "mx.compile"], out)


def long_reductions(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        one = r.get("one threadgroup per row (@kernel)", {})
        out.append([r["case"].replace("*", "\\*"), DTYPES[r["dtype"]], r["kernels"], _num(r["mlxtriton"]["us"], 1),
                    _num(r["mx.compile"]["us"], 1), _num(r["eager"]["us"], 1), _num(one.get("us"), 1),
                    _ratio(r["mx.compile"]["us"] / r["mlxtriton"]["us"])])
    return _markdown(["function, rows x length", "dtype", "kernels", "mlxtriton (us)", "mx.compile", "eager",
                      "one threadgroup per row", "vs mx.compile"], out)


def llama_block(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        ms = r["ms"]
        block = {"llama": "Llama", "mlp": "GELU MLP"}.get(r["block"], r["block"])
        out.append([block, r["batch"], r["seq"], _num(ms["eager"], 2), _num(ms["compile"], 2),
                    _num(ms["optimize"], 2), _num(ms.get("rewrite"), 2), _num(ms.get("fast-sdpa"), 2),
                    _ratio(ms["compile"] / ms["optimize"]), f"{r['check']['optimize']['rel_err']:.1e}"])
    return _markdown(["block", "batch", "tokens", "eager (ms)", "mx.compile", "optimize", "rewrite only",
                      "written with mx.fast SDPA", "optimize vs mx.compile", "relative error"], out)


def train_step(files):
    (run,) = [load(f) for f in files]
    ms = {(r["kind"], r["variant"]): r["ms"] for r in run["rows"]}
    out = []
    for kind, what in (("forward", "forward"), ("grad", "`nn.value_and_grad`"), ("step", "AdamW step")):
        best = min(ms[(kind, v)] for v in ("optimize", "optimize+compile") if (kind, v) in ms)
        out.append([what, _num(ms[(kind, "eager")], 2), _num(ms[(kind, "compile")], 2),
                    _num(ms[(kind, "optimize")], 2), _num(ms.get((kind, "optimize+compile")), 2),
                    _ratio(ms[(kind, "compile")] / best)])
    return _markdown(["", "eager (ms)", "mx.compile", "optimize", "optimize inside mx.compile",
                      "best vs mx.compile"], out)


def gemm(files):
    out = []
    for f in files:
        run = load(f)
        for r in run["rows"]:
            if r["impl"] == "mlx" and r["layout"] == "nn" and r["n"] in (1024, 4096):
                name = run["devices"][r["device"]]["name"]
                eff = f"{100 * r['efficiency']:.0f}%" if r.get("efficiency") else "-"
                out.append([name, r["dtype"], r["math"], r["n"], _num(r["gflops"]), eff])
    return _markdown(["device", "dtype", "arithmetic", "n", "GFLOPS", "of the FP32 peak (FP32 arithmetic only)"], out)


def trace_overhead(files):
    out = [[r["primitives"], _num(r["export_ms"], 1), _num(r["trace_ms"], 1), _ratio(r["trace_over_export"]),
            _num(r["print_us_per_eqn"], 1)] for f in files for r in load(f)["rows"]]
    return _markdown(["primitives", "mx.export_function (ms)", "mlxtriton.trace (ms)", "trace / export",
                      "printing (us per equation)"], out)


def per_call(files):
    runs = [load(f) for f in files]
    names = list(runs[0]["per_call_us"])
    out = [[f"`{n}`", *[_num(r["per_call_us"][n], 1) for r in runs],
            _range([r["ratio_to_native_median"][n] for r in runs], lambda v: f"{v:.3f}x")] for n in names]
    return _markdown(["call (8 x 64 float32)", *[f"run {i + 1} (us)" for i in range(len(runs))],
                      "vs the native ops' median"], out)


def calls_per_eval(files):
    rows = [r for f in files for r in load(f)["rows"]]
    out = []
    for dtype in ("float32", "bfloat16"):
        for fam in FAMILIES:
            mine = [r for r in rows if r["family"] == fam and r["dtype"] == dtype]
            if mine:
                num = lambda v: _num(v)  # noqa: E731
                out.append([FAMILIES[fam], DTYPES[dtype], _range([r["mlxtriton_1_gbs"] for r in mine], num),
                            _range([r["mlxtriton_8_gbs"] for r in mine], num),
                            _range([r["copy_1_gbs"] for r in mine], num), _range([r["copy_8_gbs"] for r in mine], num),
                            _range([r.get("triton_gbs") for r in mine], num)])
    return _markdown(["function", "dtype", "mlxtriton, 1 call per evaluation", "8 calls per evaluation",
                      "MLX copy, 1", "MLX copy, 8", "Triton softmax (do_bench)"], out)


def kernel_only(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        out.append([FAMILIES[r["family"]], DTYPES[r["dtype"]], _shape(r), _num(r["mlxtriton_gbs"]),
                    _num(r.get("triton_gbs")), _num(r.get("torch_clone_gbs"))])
    return _markdown(["function", "dtype", "shape", "mlxtriton kernel", "Triton softmax", "PyTorch clone"], out)


def eval_bound(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        out.append([FAMILIES[r["family"]], DTYPES[r["dtype"]], _shape(r), _ratio(r["speedup_vs_compile"]),
                    _ratio(r["bound_vs_compile"]), _num(r["mlxtriton_kernel_us"], 1), _num(r["mlxtriton_gap_us"], 1)])
    return _markdown(["function", "dtype", "shape", "mlxtriton vs mx.compile", "bound vs mx.compile",
                      "our kernel (us)", "idle gap per evaluation (us)"], out)


def per_eval(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        for name in ("copy x + 0", "mlxtriton.optimize", "mx.compile(composed)", "native"):
            if name not in r["variants"]:
                continue
            v, t = r["variants"][name], r["timeline"].get(name, {})
            out.append([f"{FAMILIES[r['family']]} {DTYPES[r['dtype']]} {_shape(r)}", name, _num(v["one_us"], 1),
                        _num(v["eight_us"], 1), _num(t.get("kernel_us_median"), 1), _num(t.get("gap_us_median"), 1)])
    return _markdown(["case", "variant", "1 call per evaluation (us)", "8 per evaluation (us per call)",
                      "GPU kernel time (us)", "idle gap (us)"], out)


def ce_rows(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        out.append([DTYPES[r["dtype"]], _shape(r), _num(r["mlxtriton_gbs"]), _num(r.get("logsumexp_gbs")),
                    _num(r.get("triton_ce_gbs")), _num(r.get("torch_sum_gbs")), _num(r.get("torch_ce_gbs"))])
    return _markdown(["dtype", "shape", "mlxtriton cross-entropy", "mlxtriton logsumexp", "Triton cross-entropy",
                      "PyTorch sum", "PyTorch cross_entropy"], out)


def column_reductions(files):
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        ours, compiled = r["mlxtriton"], r["mx.compile"]
        out.append([r["case"], DTYPES.get(r["dtype"], r["dtype"]), r.get("kernels", ""), _num(r["copy"]["GB/s"]),
                    _num(ours["GB/s"]), _num(compiled["GB/s"]), _num(r["eager"]["GB/s"]),
                    f"{100 * ours['of_copy']:.0f}%", _ratio(ours["vs_compile"])])
    return _markdown(["case", "dtype", "kernels", "MLX copy (GB/s)", "mlxtriton", "mx.compile", "eager",
                      "mlxtriton of copy", "vs mx.compile"], out)


def column_split(files):
    out = []
    for f in files:
        result = load(f)
        for r in result["rows"]:
            out.append([r["label"], f"{r['us']:.0f}", _num(r["gbps"]), f"{100 * r['of_copy']:.0f}%", r["schedule"]])
        out.append(["MLX copy", "", _num(result["copy_gbps"]), "100%", ""])
    return _markdown(["schedule", "us", "GB/s", "of copy", "as built"], out)


def generation(files):
    """One row per case (model, weights, batch, prompt): the first file listing it gives it (the
    newest runs are listed first; an older file keeps the cases they did not measure)."""
    out, seen = [], set()
    for r in (r for f in files for r in load(f)["rows"]):
        case = (r["model"], r["dtype"], r["batch"], r["prompt"])
        if case in seen:
            continue
        seen.add(case)
        m = r["methods"]

        def ms(name):
            return (m.get(name) or {}).get("ms")

        best_peer = min(v for v in (ms("plain"), ms("compile")) if v is not None)
        roof = ms("roofline")
        opt = m.get("optimize") or {}
        out.append([r["model"].upper(), "4-bit" if r["dtype"] == "4bit" else DTYPES.get(r["dtype"], r["dtype"]),
                    r["batch"], r["prompt"], _num(ms("plain"), 2), _num(ms("generate_step"), 2),
                    _num(ms("compile"), 2), _num(ms("optimize"), 2), _num(roof, 2),
                    _ratio(ms("plain") / ms("optimize")) if ms("optimize") else "",
                    _ratio(best_peer / ms("optimize")) if ms("optimize") else "",
                    f"{100 * roof / ms('optimize'):.0f}%" if ms("optimize") and roof else "",
                    (opt.get("cache_info") or {}).get("builds", "")])
    return _markdown(["model", "weights", "batch", "prompt", "plain mlx-lm (ms/token)", "generate_step",
                      "static cache under mx.compile", "optimize", "roofline", "optimize vs plain",
                      "vs best peer", "of roofline", "builds"], out)


def launch_costs(files):
    return _markdown(["variant", "host us per launch", "us per launch"],
                     [[r["variant"], _num(r["host_us_per_launch"], 2), _num(r["us_per_launch"], 2)]
                      for f in files for r in load(f)["rows"]])


def decode_epilogues(files):
    """Per model and round, the step with and without the projection kernel's epilogues."""
    d = load(files[0])
    out = []
    for model in dict.fromkeys(r["model"] for r in d["rows"]):
        rows = [r for r in d["rows"] if r["model"] == model]
        for k in range(len(rows) // 3):
            ms = {r["label"]: r["ms"] for r in rows[3 * k:3 * k + 3]}
            out.append([model.upper(), k + 1, _num(ms["plain"], 2), _num(ms["off"], 2), _num(ms["on"], 2),
                        _ratio(ms["off"] / ms["on"])])
        counts = d[model]["counts"]
        out.append([model.upper(), "graph", f"{d[model]['kernels']} kernels", "", "",
                    f"RoPE {counts.get('RoPE', 0)}, Sigmoid {counts.get('Sigmoid', 0)}"])
    return _markdown(["model", "round", "plain mlx-lm (ms)", "optimize, epilogues off", "epilogues on",
                      "on vs off"], out)


def decode_views_ab(files):
    """Per weights, each variant's step (median run) with its host and call time."""
    out = []
    for r in load(files[0])["rows"]:
        out.append([r["model"].upper(), "4-bit" if r["dtype"] == "4bit" else DTYPES.get(r["dtype"], r["dtype"]),
                    r["label"], _num(r["ms"], 2), _num(r["host_ms"], 2), _num(r["call_ms"], 2)])
    return _markdown(["model", "weights", "variant", "ms per step", "host ms", "call ms"], out)


def projections(files):
    """One row per case: MLX's products against the projection kernel's best schedule and the
    schedule the chip's tuning data picks (R columns per SIMD group, W SIMD groups, U vectors)."""
    from mlxtriton import hw

    t = hw.tuning.SM_90
    out = []
    for r in (r for f in files for r in load(f)["rows"]):
        best = min(r["schedules"], key=lambda s: s["us"])
        columns = t.projection_columns_one_row if r["rows"] == 1 else t.projection_columns
        default = next((s for s in r["schedules"] if (s["R"], s["W"], s["U"]) ==
                        (columns, t.projection_simd_groups, t.projection_unroll)), None)
        out.append([r["model"].upper(), r["product"], r["weights"], r["rows"], _num(r["mlx_us"], 1),
                     _num(default["us"], 1) if default else "", f"R{best['R']} W{best['W']} U{best['U']}",
                     _num(best["us"], 1), _ratio(r["mlx_us"] / best["us"]), _num(best["gbs"])])
    return _markdown(["model", "product", "weights", "rows", "MLX (us)", "default schedule (us)",
                      "best schedule", "best (us)", "best vs MLX", "best (GB/s)"], out)


def autotune(files):
    out, rows = [], {}
    for r in (r for f in files for r in load(f)["rows"]):  # a later file's case replaces an earlier's
        rows[(r["family"], r["dtype"], tuple(r["shape"]))] = r
    for r in rows.values():
        out.append([FAMILIES.get(r["family"], r["family"]), DTYPES.get(r["dtype"], r["dtype"]),
                    "x".join(map(str, r["shape"])), _num(r["default_gbs"]), _num(r["autotuned_gbs"]),
                    _ratio(r["speedup"]), _num(r.get("mx.compile_gbs")), _num(r.get("copy_gbs")),
                    sum(k["timed"] for k in r.get("kernels", [])), _num(r.get("tune_s"), 1)])
    return _markdown(["case", "dtype", "shape", "default (GB/s)", "autotuned (GB/s)", "autotuned vs default",
                      "mx.compile (GB/s)", "MLX copy (GB/s)", "schedules timed", "tuning (s)"], out)


def _by_kind(by_kernel: dict) -> dict:
    """Launches and GPU time per kernel kind, a generated kernel's source hash dropped from its name
    (one kind for the attention kernel of every bucket)."""
    out: dict = {}
    for name, (count, us) in by_kernel.items():
        kind = (re.sub(r"(row|pointwise|column)[0-9a-f]{10}$", r"\1",
                       re.sub(r"_([0-9a-f]{10}_)?[0-9a-f]{12}$", "", name))
                if name.startswith("mlxtriton ") else name)
        c, t = out.get(kind, (0, 0))
        out[kind] = [c + count, t + us]
    return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))


def decode_kernels(files, top: int = 10):
    out = []
    for f in files:
        result = load(f)
        config = result.get("config", {})
        setting = ("" if (config.get("dtype", "bfloat16"), config.get("prompt", 128)) == ("bfloat16", 128)
                   else f" ({config['dtype'].replace('bfloat16', 'bf16')}, prompt {config['prompt']})")
        out += _decode_rows(result["rows"], setting, top)
    return _markdown(["model", "kernel", "plain: launches/step", "plain: GPU us/step", "optimize: launches/step",
                      "optimize: GPU us/step"], out)


def _decode_rows(rows, setting: str, top: int):
    out = []
    for r in rows:
        model = r["model"].upper() + setting
        variants = r["variants"]
        plain, ours = (variants[v].get("launches") or {} for v in ("plain", "optimize"))
        plain, ours = ({**x, "by_kernel": _by_kind(x["by_kernel"])} for x in (plain, ours))
        kinds = list(dict.fromkeys([*list(ours["by_kernel"])[:top], *list(plain["by_kernel"])[:top],
                                    *[k for k in ours["by_kernel"] if k.startswith("mlxtriton ")]]))
        for k in kinds:
            p, o = plain["by_kernel"].get(k, [0, 0]), ours["by_kernel"].get(k, [0, 0])
            out.append([model, f"`{k}`", _num(p[0], 1), _num(p[1], 1), _num(o[0], 1), _num(o[1], 1)])
        out.append([model, "**all kernels**", _num(plain["kernels"], 1), _num(1e3 * plain["gpu_ms"], 0),
                    _num(ours["kernels"], 1), _num(1e3 * ours["gpu_ms"], 0)])
        out.append([model, "**step time (ms), host time**",
                    f"{variants['plain']['ms']:.2f}, {variants['plain']['host_ms']:.2f}", "",
                    f"{variants['optimize']['ms']:.2f}, {variants['optimize']['host_ms']:.2f}", ""])
    return out


# name -> (the function writing the table, the newest complete run's files)
TABLES: dict[str, tuple[Callable, list[str]]] = {
    "row_kernels": (row_kernels, ["row_kernels_h200_f32.json", "row_kernels_h200_bf16.json"]),
    "row_kernels_summary": (row_kernels_summary, ["row_kernels_h200_f32.json", "row_kernels_h200_bf16.json"]),
    "backward_rows": (backward_rows, ["backward_rows_h200_f32.json", "backward_rows_h200_bf16.json"]),
    "long_reductions": (long_reductions, ["long_reductions_h200_launch_bound.json"]),
    "llama_block": (llama_block, ["llama_block_h200_launch_bound.json"]),
    "train_step": (train_step, ["train_step_h200_launch_bound.json"]),
    "gemm": (gemm, ["gemm_h200.json", "gemm_cpu.json"]),
    "trace_overhead": (trace_overhead, ["trace_overhead.json"]),
    "per_call": (per_call, ["per_call_h200_41_rounds_run1.json", "per_call_h200_41_rounds_run2.json"]),
    "calls_per_eval": (calls_per_eval, ["calls_per_eval_h200_all.json"]),
    "kernel_only": (kernel_only, ["kernel_only_h200_short.json"]),
    "eval_bound": (eval_bound, ["eval_bound_h200.json"]),
    "per_eval": (per_eval, ["per_eval_h200.json"]),
    "ce_rows": (ce_rows, ["ce_rows_h200.json"]),
    "generation": (generation, ["generation_h100_1b_bracket.json", "generation_h100_1b_epilogues_on.json", "generation_h100_8b_epilogues_on.json",
                                "generation_h100_quantized_projections.json", "generation_h100_b8_projections.json",
                                "generation_h100_p2048_projections.json", "generation_h100_b1_bf16.json"]),
    "launch_costs": (launch_costs, ["launch_costs_h100.json"]),
    "decode_epilogues": (decode_epilogues, ["decode_epilogues_ab_h100.json"]),
    "decode_views_ab": (decode_views_ab, ["decode_views_ab_h100.json"]),
    "autotune": (autotune, ["autotune_h100.json", "autotune_h100_bf16.json", "autotune_h100_columns.json"]),
    "decode_kernels": (decode_kernels, ["decode_kernels_h100.json", "decode_kernels_h100_p2048.json"]),
    "column_reductions": (column_reductions, ["column_reductions_h100.json"]),
    "column_split": (column_split, ["column_split_h100.json"]),
    "projections": (projections, ["projections_h100.json", "projections_h100_swiglu.json"]),
}

_BLOCK = re.compile(r"(<!-- table (\w+) -->\n)(.*?)(<!-- end table -->)", re.S)


def render(page: str, link: str) -> str:
    """``page`` with every table block rewritten from its files (``link``: the path from the page
    to benchmarks/results/)."""
    def fill(m: re.Match) -> str:
        fn, files = TABLES[m.group(2)]
        return m.group(1) + "\n".join([_provenance(files, link), "", *fn(files)]) + "\n" + m.group(4)

    return _BLOCK.sub(fill, page)


def main(argv: list[str]) -> int:
    stale = []
    for path, link in PAGES.items():
        page = path.read_text()
        new = render(page, link)
        if new != page:
            stale.append(path.relative_to(ROOT))
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print(f"{', '.join(map(str, stale))} differ from the results files: run python benchmarks/results_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
