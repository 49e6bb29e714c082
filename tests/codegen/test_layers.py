"""codegen imports downward only (graph, hw, itself) and never launches kernels."""

from __future__ import annotations

import ast
import pathlib

import mlxtriton.codegen

ALLOWED = ("mlxtriton.codegen", "mlxtriton.graph", "mlxtriton.hw")


def test_codegen_imports_point_down_and_launch_nothing():
    root = pathlib.Path(mlxtriton.codegen.__file__).parent
    for path in sorted(root.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(
                    "mlxtriton"):
                assert node.module.startswith(ALLOWED) or node.module == "mlxtriton" and all(
                    a.name == "hw" for a in node.names), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                for a in node.names:
                    assert not a.name.startswith("mlxtriton") or a.name.startswith(ALLOWED)
            if isinstance(node, ast.Attribute):
                assert node.attr not in ("metal_kernel", "cuda_kernel"), \
                    f"{path.name} calls mx.fast.{node.attr}: only the runtime launches kernels"
