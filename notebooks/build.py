"""Make the executed notebooks: each jupytext percent-format ``NN_name.py`` here (the source to
edit) becomes ``NN_name.ipynb`` with its outputs and plots, run top to bottom in a fresh Python
kernel from this folder (needs the ``notebooks`` extra: jupytext, nbclient, ipykernel).

Run: python notebooks/build.py [NAME.py ...]     (all four when none is named)

tests/test_notebooks.py runs `execute` again and compares the result with the committed files.
"""

from __future__ import annotations

import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
# A cell that runs longer than this is an error, so a hung notebook cannot stall CI.
CELL_TIMEOUT_S = 300


def sources() -> list[pathlib.Path]:
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def execute(source: pathlib.Path):
    """The notebook of ``source``, executed (an ``nbformat`` notebook; raises on a failing cell)."""
    import jupytext
    import nbclient

    notebook = jupytext.read(source)
    # What the kernel inherits: this checkout's mlxtriton, detection of the chip here (no
    # override), and the real launch path rather than the interpreter.
    saved = {k: os.environ.pop(k) for k in ("MLXTRITON_CHIP", "MLXTRITON_INTERPRET", "MPLBACKEND")
             if k in os.environ}
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE.parent), saved_path) if p)
    try:
        client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                         resources={"metadata": {"path": str(HERE)}}, record_timing=False)
        client.execute()
    finally:
        os.environ.update(saved)
        if saved_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved_path
    return notebook


def main(argv: list[str]) -> int:
    import nbformat

    chosen = [HERE / name for name in argv] or sources()
    for source in chosen:
        notebook = execute(source)
        target = source.with_suffix(".ipynb")
        nbformat.write(notebook, target)
        print(f"wrote {target.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
