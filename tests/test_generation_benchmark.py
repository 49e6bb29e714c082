"""benchmarks/generation.py's tuning variants: optimize again under other tuning data in the same
process (what an A/B of a rule measures), each field parsed to its type, the data restored after."""

import importlib.util
import pathlib

import pytest

from mlxtriton import hw

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "generation.py"
_spec = importlib.util.spec_from_file_location("generation_benchmark", _PATH)
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_variants_parse_to_each_fields_type():
    got = bench.parse_variants("on:projection_epilogues=1;rows:projection_max_rows=0,projection_quantized=false")
    assert got == {"on": {"projection_epilogues": True},
                   "rows": {"projection_max_rows": 0, "projection_quantized": False}}
    assert bench.parse_variants("") == {}
    with pytest.raises(ValueError, match="no tuning field"):
        bench.parse_variants("x:projection_epilogue=1")


def test_a_variants_tuning_holds_inside_its_block_only():
    h100 = hw.profile("h100")
    before = hw.tuning.tuning(h100)
    with bench.tuned({"projection_max_rows": 0}):
        assert hw.tuning.tuning(h100).projection_max_rows == 0
        assert hw.tuning.tuning(h100).projection_lone_rows == before.projection_lone_rows
    assert hw.tuning.tuning(h100) == before


def test_a_method_named_again_gets_an_entry_of_its_own():
    assert bench.timed_again("optimize", {}) == "optimize"
    assert bench.timed_again("optimize", {"optimize": 1}) == "optimize#2"
    assert bench.timed_again("plain", {"plain": 1, "plain#2": 1, "optimize": 1}) == "plain#3"
    assert "autotune" in bench.METHODS
