"""What installing and importing mlxtriton gives a user: SPDX license metadata with its LICENSE
file, one version source, type information (py.typed), an import that loads neither JAX nor
ml_dtypes, and `./dev.sh` installing once for both of its commands."""

import importlib.metadata
import os
import pathlib
import stat
import subprocess
import sys

import pytest

import mlxtriton

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the metadata is checked there
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_with_its_file_and_a_setuptools_that_reads_it():
    project = _pyproject()["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    # setuptools 77 is the first to accept a license string without a deprecation warning
    assert _pyproject()["build-system"]["requires"] == ["setuptools>=77"]


def test_the_version_has_one_source():
    config = _pyproject()
    assert "version" not in config["project"] and config["project"]["dynamic"] == ["version"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "mlxtriton.__version__"}
    try:
        installed = importlib.metadata.version("mlxtriton")
    except importlib.metadata.PackageNotFoundError:
        return
    assert installed == mlxtriton.__version__


def test_py_typed_ships_with_the_package():
    assert (ROOT / "mlxtriton" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["mlxtriton"]


def test_import_loads_neither_jax_nor_ml_dtypes():
    code = "import sys, mlxtriton; print(sorted({'jax', 'ml_dtypes'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _fake_venv(tmp_path: pathlib.Path) -> pathlib.Path:
    """A venv folder whose python only records how it was called."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "calls"}\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    return tmp_path / "venv"


def test_dev_sh_installs_once_for_demo_and_test(tmp_path):
    env = {**os.environ, "MLXTRITON_VENV": str(_fake_venv(tmp_path))}

    def run(*argv):
        out = subprocess.run(["bash", str(ROOT / "dev.sh"), *argv], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        calls = (tmp_path / "calls").read_text().splitlines()
        (tmp_path / "calls").unlink()
        return calls

    first = run("demo", "--flag")
    assert len(first) == 2 and first[0].startswith("-m pip install -q -e .[")
    assert "test" in first[0] and "notebooks" in first[0] and first[1] == "-m mlxtriton demo --flag"
    assert run("test", "-q") == ["-m pytest -q"]  # installed by the demo: nothing again
    assert run("demo") == ["-m mlxtriton demo"]


def test_dev_sh_without_a_command_prints_its_usage():
    out = subprocess.run(["bash", str(ROOT / "dev.sh")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "usage: ./dev.sh demo|test" in out.stderr
