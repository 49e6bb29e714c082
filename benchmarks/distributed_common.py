"""What the distributed benchmarks share: joining the group, timing every rank alike, writing one
result file from rank 0, and the scaling table over result files of several world sizes.

Each benchmark runs as one process per GPU under ``mlx.launch --backend nccl -n N`` (or on the
CPU under ``mlx.launch --backend ring -n N`` for a dry run), and as a plain ``python`` process for
the one-GPU baseline (a group of one: MLX's collectives return their input).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

# NVLink multicast stays off on the lent multi-GPU hosts (their device notes: a program using it
# can take the host's GPUs out of service); NCCL reads this when the group is created.
os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

import mlx.core as mx  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from harness import time_mlx  # noqa: E402,F401  (one timing method for all benchmarks)


def join() -> "mx.distributed.Group":
    """The world group: strict under a launcher (which sets MLX_RANK), a group of one otherwise."""
    group = mx.distributed.init(strict="MLX_RANK" in os.environ)
    if os.environ.get("NCCL_NVLS_ENABLE") != "0":
        raise SystemExit("NCCL_NVLS_ENABLE must be 0 (NVLink multicast off)")
    return group


def slowest(group, seconds: float) -> float:
    """The largest of every rank's ``seconds`` (a step is as slow as its slowest rank)."""
    if group.size() == 1:
        return seconds
    return mx.distributed.all_max(mx.array(seconds, dtype=mx.float32), group=group).item()


def header(benchmark: str, group, config: dict, method: str) -> dict:
    return {
        "benchmark": benchmark, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": mx.device_info().get("device_name", str(mx.default_device())),
        "ranks": group.size(), "mlx": mx.__version__, "python": platform.python_version(),
        "config": config, "method": method, "rows": [],
    }


class Results:
    """Rows that rank 0 prints and saves as they come; the other ranks only compute."""

    def __init__(self, group, path: str, result: dict):
        self.group, self.path, self.result = group, path, result

    def add(self, row: dict) -> None:
        self.result["rows"].append(row)
        if self.group.rank() == 0:
            with open(self.path, "w") as f:
                json.dump(self.result, f, indent=1)
            print(json.dumps(row), flush=True)


def summarize(paths: list[str], key: str, value: str, higher_is_better: bool) -> None:
    """Print ``value`` of each row (``key`` names it) per world size, with its scaling efficiency
    against the one-rank file: speedup / ranks where higher is better (throughput), time(1) /
    time(N) otherwise (weak scaling: every rank does one rank's work)."""
    runs = sorted((json.load(open(p)) for p in paths), key=lambda r: r["ranks"])
    base = {r[key]: r.get(value) for r in runs[0]["rows"]} if runs[0]["ranks"] == 1 else {}
    print(f"{key:28s} " + " ".join(f"{r['ranks']:>4d} rank(s) {'(eff.)' if base else '':6s}" for r in runs))
    for name in dict.fromkeys(row[key] for r in runs for row in r["rows"]):
        cells = []
        for r in runs:
            v = next((row.get(value) for row in r["rows"] if row[key] == name), None)
            b = base.get(name)
            eff = ""
            if v and b:
                eff = (v / b / r["ranks"]) if higher_is_better else (b / v)
                eff = f"({eff:.0%})"
            cells.append(f"{v if v is not None else '-':>12} {eff:6s}")
        print(f"{name:28s} " + " ".join(cells))
