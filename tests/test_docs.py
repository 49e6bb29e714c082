"""The documents stay true: the README's and docs/quickstart.md's ```python blocks run, in order, in
one namespace; the results tables match the JSON files they cite; every linked results file exists;
the README stays short and no document narrates how its figures were reached."""

import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "notebooks" / "README.md"]


def _run_python_blocks(path: pathlib.Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{path.name} has no python blocks"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{path.name} block {i + 1}", "exec"), namespace)


def test_quickstart_python_blocks_run(capsys):
    _run_python_blocks(QUICKSTART)
    out = capsys.readouterr().out
    assert "{'Fused': 2}" in out and "-- cache:" in out
    assert "32768 67.0" in out and "False True" in out and "cuda" in out
    assert "cannot be one kernel" in out


def test_readme_python_blocks_run_and_print_what_it_shows(capsys):
    _run_python_blocks(README)
    out = capsys.readouterr().out
    assert "-- patterns:" in out and "-- fuse:" in out  # the explanation
    shown = re.search(r"```\n(\{ lambda.*?)```", README.read_text(), flags=re.S).group(1)
    assert shown in out  # the printed graph, as the README shows it


def test_readme_is_short_and_has_its_sections():
    text = README.read_text()
    assert len(text.splitlines()) < 250
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    for section in ("Set up: two commands", "Quickstart", "What works", "Results", "Limits"):
        assert section in headings
    assert "./dev.sh demo" in text and "./dev.sh test" in text
    assert "not yet run on a Mac" in text or "have not run on a Mac" in text


def _results_tables():
    spec = importlib.util.spec_from_file_location("results_tables", ROOT / "benchmarks" / "results_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_tables_match_the_json_files_they_cite():
    tables = _results_tables()
    for path, link in tables.PAGES.items():
        text = path.read_text()
        assert "<!-- table " in text, f"{path.name} has no generated table"
        assert tables.render(text, link) == text, (
            f"{path.name}'s tables differ from benchmarks/results: run python benchmarks/results_tables.py")
    results = (ROOT / "docs" / "results.md").read_text()
    for name in tables.TABLES:
        if name != "row_kernels_summary":
            assert f"<!-- table {name} -->" in results, f"docs/results.md has no {name} table"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_linked_files_exist(path):
    for target in re.findall(r"\]\(([^)#:]+)\)", path.read_text()):
        assert (path.parent / target).exists(), f"{path.name} links to a missing {target}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_no_document_narrates_how_its_figures_were_reached(path):
    # File names may carry a run's label (row_kernels_h200_f32.json); prose may not.
    prose = re.sub(r"\S+\.(json|txt|log)\b", "", path.read_text())
    for pattern in (r"\b[Ss]ession \d+", r"\btried and dropped\b", r"\bmeasured and dropped\b",
                    r"\bthe lent H200\b", r"\bthe issue's method\b", r"\bnot rerun\b"):
        assert not re.search(pattern, prose), f"{path.name}: {re.search(pattern, prose).group(0)!r}"
