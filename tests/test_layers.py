"""The layer direction of shared/STYLE.md, enforced: walk every module's imports.

hw and graph know nothing above them; trace builds graphs; fusion (and other passes) are
graph -> graph; codegen turns graphs into kernels; only the runtime launches kernels; the public API
(the package's top-level modules) composes them all.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "mlxtriton"

# layer -> the mlxtriton layers it may import (itself always allowed)
ALLOWED = {
    "graph": set(),
    "hw": set(),
    "state": {"graph"},  # a call's implicit state (tracing layer)
    "trace": {"graph", "state"},
    "fusion": {"graph", "hw"},
    "patterns": {"graph", "hw", "fusion"},
    "codegen": {"graph", "hw", "fusion"},
    "runtime": {"graph", "hw", "fusion", "patterns", "codegen", "trace", "state"},
}
KERNEL_LAUNCHERS = {"metal_kernel", "cuda_kernel", "precompiled_cuda_kernel"}
# Modules that construct a kernel without ever launching it, and why.
KERNEL_PLACEHOLDERS = {
    "_collectives.py": "a collective's placeholder in an export: a metal_kernel call MLX only records",
    "_checkpoint.py": "a checkpointed call's marks in an export: metal_kernel calls MLX only records",
}


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return (rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem in ("trace", "state")
            else "api")


def imported_layers(tree: ast.AST):
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for n in names:
            parts = n.split(".")
            if parts[0] == "mlxtriton" and len(parts) > 1:
                yield parts[1], node.lineno


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    layer = layer_of(path)
    if layer == "api":
        return
    assert layer in ALLOWED, f"{path}: unknown layer {layer!r}; add it to ALLOWED with its rule"
    tree = ast.parse(path.read_text())
    for imported, line in imported_layers(tree):
        if imported == layer or imported.startswith("_"):
            continue
        assert imported in ALLOWED[layer], f"{path}:{line}: layer {layer} imports {imported}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_runtime_launches_kernels(path):
    if layer_of(path) == "runtime" or str(path.relative_to(PACKAGE)) in KERNEL_PLACEHOLDERS:
        return
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in KERNEL_LAUNCHERS:
            pytest.fail(f"{path}:{node.lineno}: only mlxtriton.runtime may call mx.fast.{node.attr}")


def test_modules_open_with_a_docstring():
    missing = [str(p.relative_to(PACKAGE)) for p in MODULES
               if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without an opening docstring: {missing}"
