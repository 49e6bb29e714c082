"""The notebooks run headless on the CPU: each jupytext percent-format script executes top to
bottom with matplotlib's Agg backend, from notebooks/ as Jupyter runs it, and prints what its
cells claim."""

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("matplotlib")  # the notebooks' one dependency beyond the test extra's

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
# A line each notebook prints only when its story held (the cells assert nothing themselves).
EXPECTED = {
    "01_tracing.py": ["evaluate(graph, x) == block(x) exactly: True", "same result: True"],
    "02_fused_kernel.py": ["same result as the plain function: True",
                           "MLXTRITON_INTERPRET=1 launch matches MLX: True", "SingleKernelError: cannot be one kernel"],
    "03_chips.py": ["8 generated kernels per chip", "32768       1024 thr, stream     1024 thr, registers"],
    "04_performance.py": ["gemm_h200.json", "unaligned nn reaches"],
}


def test_the_four_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_headless(name):
    env = {k: v for k, v in os.environ.items() if k not in ("MLXTRITON_INTERPRET", "MLXTRITON_CHIP")}
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join([str(NOTEBOOKS_DIR.parent), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, name], cwd=NOTEBOOKS_DIR, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for line in EXPECTED[name]:
        assert line in proc.stdout, f"{name} did not print {line!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_a_percent_format_file_without_outputs(name):
    text = (NOTEBOOKS_DIR / name).read_text()
    assert text.startswith("# ---\n# jupyter:\n") and "format_name: percent" in text
    assert text.count("# %% [markdown]") >= 3 and text.count("\n# %%\n") >= 3
    try:
        import jupytext
    except ImportError:
        return
    notebook = jupytext.reads(text, fmt="py:percent")
    kinds = {c.cell_type for c in notebook.cells}
    assert kinds == {"markdown", "code"}
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")
