"""Golden text files: compare, or rewrite with MLXTRITON_UPDATE_GOLDEN=1."""

import os
import pathlib

GOLDEN = pathlib.Path(__file__).parent / "golden"


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("MLXTRITON_UPDATE_GOLDEN") == "1" or not path.exists():
        if os.environ.get("CI") and not path.exists():
            raise AssertionError(f"golden file {path} is missing; generate it locally and commit it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        return
    expected = path.read_text().rstrip("\n")
    assert text == expected, (
        f"{name} differs from its golden file; if the change is intended, rerun with "
        f"MLXTRITON_UPDATE_GOLDEN=1 and review the diff"
    )
