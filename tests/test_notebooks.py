"""The notebooks as a repository page shows them: each committed ``NN_name.ipynb`` is the executed
form of the jupytext percent-format ``NN_name.py`` beside it. Re-executing every source here (a
fresh kernel, each cell bounded in time: notebooks/build.py) gives the same cells, the same kinds
of output in each cell, no error, the same number of figures, and the lines whose printing means
the notebook's story held."""

import json
import pathlib
import sys

import pytest

NOTEBOOKS_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
sys.path.insert(0, str(NOTEBOOKS_DIR))
import build  # noqa: E402  (notebooks/build.py)

# A line each notebook prints only when its story held (the cells assert nothing themselves).
EXPECTED = {
    "01_tracing.py": ["evaluate(graph, x) == block(x) exactly: True", "same result: True"],
    "02_fused_kernel.py": ["same result as the plain function: True",
                           "MLXTRITON_INTERPRET=1 launch matches MLX: True", "SingleKernelError: cannot be one kernel"],
    "03_chips.py": ["7 generated kernels per chip", "32768       1024 thr, stream     1024 thr, registers",
                    "the pattern stage decided alike on M1, M3, M4; its own way on H200"],
    "04_performance.py": ["gemm_h200.json", "unaligned nn reaches"],
}


def _outline(notebook) -> list:
    """Per cell: its type and, for code, its outputs' kinds (a stream by name, consecutive writes to
    one stream as one; a display by its MIME types), errors included."""
    cells = []
    for cell in notebook["cells"]:
        kinds: list = []
        for out in cell.get("outputs", []):
            kind = (("stream", out["name"]) if out["output_type"] == "stream"
                    else (out["output_type"], tuple(sorted(out.get("data", {})))))
            if not (kinds and kind[0] == "stream" and kinds[-1] == kind):
                kinds.append(kind)
        cells.append((cell["cell_type"], tuple(kinds)))
    return cells


def _figures(notebook) -> int:
    return sum("image/png" in out.get("data", {}) for cell in notebook["cells"] for out in cell.get("outputs", []))


def _text(notebook) -> str:
    return "".join("".join(out.get("text", "")) for cell in notebook["cells"] for out in cell.get("outputs", [])
                   if out["output_type"] == "stream")


def test_every_notebook_source_has_its_executed_notebook():
    assert sorted(p.name for p in build.sources()) == sorted(EXPECTED)
    assert sorted(p.name for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb")) == sorted(
        n.replace(".py", ".ipynb") for n in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_committed_notebook_is_its_source_executed(name):
    jupytext = pytest.importorskip("jupytext", reason="the notebooks extra: pip install -e '.[notebooks]'")
    source = jupytext.read(NOTEBOOKS_DIR / name)
    committed = json.loads((NOTEBOOKS_DIR / name).with_suffix(".ipynb").read_text())
    assert [c["source"] if isinstance(c["source"], str) else "".join(c["source"]) for c in committed["cells"]] == [
        c["source"] for c in source.cells], f"{name} changed since its .ipynb was made: python notebooks/build.py {name}"
    assert not any(out["output_type"] == "error" for c in committed["cells"] for out in c.get("outputs", []))
    assert _figures(committed) > 0  # the plots are in the file a repository page shows


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_re_executing_the_notebook_gives_the_committed_structure(name):
    pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")
    pytest.importorskip("jupytext", reason="the notebooks extra: pip install -e '.[notebooks]'")
    nbformat = pytest.importorskip("nbformat", reason="the notebooks extra: pip install -e '.[notebooks]'")
    executed = json.loads(nbformat.writes(build.execute(NOTEBOOKS_DIR / name)))
    committed = json.loads((NOTEBOOKS_DIR / name).with_suffix(".ipynb").read_text())
    assert _outline(executed) == _outline(committed)
    assert _figures(executed) == _figures(committed)
    printed = _text(executed)
    for line in EXPECTED[name]:
        assert line in printed, f"{name} did not print {line!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_source_is_a_percent_format_file_without_outputs(name):
    text = (NOTEBOOKS_DIR / name).read_text()
    assert text.startswith("# ---\n# jupyter:\n") and "format_name: percent" in text
    assert text.count("# %% [markdown]") >= 3 and text.count("\n# %%\n") >= 3
