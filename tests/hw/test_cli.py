"""`python -m mlxtriton chips` (table, one chip, --json) and the command registry it lives in."""

import doctest
import json
import pathlib
import subprocess
import sys
import types

import mlx.core as mx
import pytest

import mlxtriton.__main__ as cli
from mlxtriton import hw
from mlxtriton.hw import _detect, _profile, _table, _target, params, report

ON_CPU = not mx.is_available(mx.gpu)


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_lists_every_chip(capsys):
    code, out, _ = run(capsys, "chips")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CHIP", "NAME", "FAMILY"]
    listed = [line.split()[0].lstrip("*") for line in lines[1:len(hw.profiles()) + 1]]
    assert listed == [p.key for p in hw.profiles()]


def test_table_shows_estimates_unknowns_and_limits(capsys):
    _, out, _ = run(capsys, "chips")
    rows = {line.split()[0].lstrip("*"): line for line in out.splitlines()[1:len(hw.profiles()) + 1]}
    assert "~14.2" in rows["m3-max"] and "300/400" in rows["m3-max"] and "30/40" in rows["m3-max"]
    assert " 2.6 " in rows["m1"] and "~" not in rows["m1"].split()[8]
    assert "48K/227K" in rows["h200"] and "60M" in rows["h200"] and "tensor-cores" in rows["h200"]
    assert "neural-accel" in rows["m5"] and "neural-accel" not in rows["m4-max"]
    assert "bf16?" in rows["m5"]  # undocumented, shown as such
    assert "32K" in rows["m3"] and "64K" not in rows["m3"]
    assert "~ estimate" in out


@pytest.mark.skipif(not ON_CPU, reason="marks the detected chip of MLX's CPU build")
def test_table_marks_the_chip_auto_selects(capsys, monkeypatch):
    _, out, _ = run(capsys, "chips")
    assert any(line.startswith("*cpu ") for line in out.splitlines())
    assert "CPU (detected)" in out
    monkeypatch.setenv("MLXTRITON_CHIP", "m4-max")
    _, out, _ = run(capsys, "chips")
    assert any(line.startswith("*m4-max ") for line in out.splitlines())
    assert "M4 Max (from MLXTRITON_CHIP)" in out


def test_json(capsys):
    code, out, _ = run(capsys, "chips", "--json")
    data = json.loads(out)
    assert code == 0 and [p["key"] for p in data["profiles"]] == [p.key for p in hw.profiles()]
    assert data["detected"] == hw.resolve().key
    m3 = next(p for p in data["profiles"] if p["key"] == "m3")
    assert m3["threadgroup_memory_bytes"] == 32768 and m3["simd_width"] == 32
    assert m3["estimates"] == ["fp32_tflops"] and "Estimate" in m3["sources"]["fp32_tflops"]
    for p in data["profiles"]:
        for field, value in p.items():
            if field in _profile.IDENTITY_FIELDS or field == "last_level_cache_bytes" or value is None:
                continue
            assert field in p["sources"], (p["key"], field)


def test_one_chip_with_sources(capsys):
    code, out, _ = run(capsys, "chips", "M3 Max")
    assert code == 0 and out.startswith("M3 Max (m3-max): apple, metal backend, family Apple9")
    assert "(estimate)" in out and "[apple-chips-estimate]" in out
    assert "sources:" in out and _table.CITATIONS["metal-feature-set-tables"] in out
    _, out, _ = run(capsys, "chips", "h200", "--json")
    assert json.loads(out)["profiles"][0]["shared_memory_per_block_optin_bytes"] == 232448


def test_unknown_chip_is_an_error_listing_the_known(capsys):
    code, _, err = run(capsys, "chips", "m9")
    assert code == 2 and "unknown chip 'm9'" in err and "m3-max" in err


def test_bad_environment_still_prints_the_table(capsys, monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "nope")
    code, out, err = run(capsys, "chips")
    assert code == 0 and "MLXTRITON_CHIP='nope'" in err and "m3-max" in out


def test_no_command_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "chips" in out and "demo" in out


def test_demo_is_registered_and_imported_only_when_run(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("mlxtriton.demo")
    fake.main = lambda *args: calls.append(args) or 0
    monkeypatch.setitem(sys.modules, "mlxtriton.demo", fake)
    monkeypatch.delattr("mlxtriton.demo", raising=False)
    assert cli.main(["demo"]) == 0 and calls == [()]
    assert cli.main(["demo", "--quick", "x"]) == 0 and calls[-1] == (["--quick", "x"],)


def test_registering_a_command_twice_is_an_error():
    with pytest.raises(ValueError, match="registered twice"):
        cli.command("chips", "again")(lambda parser: lambda args: 0)


def test_entry_point_runs_and_loads_no_more_than_it_needs():
    code = ("import sys, mlxtriton.__main__ as m; rc = m.main(['chips']); "
            "print('LOADED', 'mlxtriton.demo' in sys.modules); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "LOADED False" in done.stdout and "h200" in done.stdout
    done = subprocess.run([sys.executable, "-m", "mlxtriton", "chips", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and json.loads(done.stdout)["profiles"]


@pytest.mark.parametrize("module", [hw, _detect, _profile, report, _target, params, cli],
                         ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_the_table_in_docs_is_current():
    doc = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "hardware.md").read_text()
    block = doc.split("<!-- chips table:", 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]
    assert block == report.table(hw.profiles()), "regenerate the table in docs/hardware.md"
