"""docs/quickstart.md stays true: its ```python blocks run, in order, in one namespace."""

import pathlib
import re

QUICKSTART = pathlib.Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"


def test_quickstart_python_blocks_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(), flags=re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{QUICKSTART.name} block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "{'Fused': 2}" in out and "-- cache:" in out
    assert "32768 67.0" in out and "False True" in out and "cuda" in out
    assert "cannot be one kernel" in out
