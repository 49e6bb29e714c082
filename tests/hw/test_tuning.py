"""The tuning data (hw/tuning.py): one row per architecture, every field with a reason and its
evidence, every GPU profile served, and the rules reading it."""

from __future__ import annotations

import dataclasses
import pathlib

import pytest

from mlxtriton import hw
from mlxtriton.hw import tuning

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Evidence that is not a results file of this repository: the reference kernels followed, and
# figures of the profile itself.
REFERENCES = ("mlx/", "oneflow/", "MLX PR", "shared/reference/", "profile")


@pytest.mark.parametrize("row", sorted(tuning.TABLE), ids=str)
def test_every_field_has_a_reason_and_evidence(row):
    t = tuning.TABLE[row]
    assert [name for name, _ in t.evidence] == sorted(tuning.TUNED_FIELDS)
    for name in tuning.TUNED_FIELDS:
        e = t.why(name)
        assert e.reason and "\n" not in e.reason, (row, name)
        if e.source.startswith("benchmarks/results/"):
            assert (ROOT / e.source).is_file(), f"{row}.{name}: {e.source} is not in the repository"
        else:
            assert e.source == tuning.NOT_MEASURED or e.source.startswith(REFERENCES), (row, name, e.source)


def test_apple_rows_were_not_measured_where_they_diverge_from_reference_kernels():
    # no mlxtriton kernel has run on a Mac: Apple's rules cite MLX's kernels or say so
    for t in (tuning.APPLE7, tuning.APPLE9):
        assert not any(e.source.startswith("benchmarks/results/") for _, e in t.evidence)


@pytest.mark.parametrize("chip", [p.key for p in hw.profiles() if p.is_gpu])
def test_every_gpu_has_tuning_data(chip):
    profile = hw.profile(chip)
    t = tuning.tuning(profile)
    assert profile.family in t.families
    assert hw.params.register_bytes_per_thread(profile) > 0


def test_an_unknown_family_follows_its_vendor_and_the_cpu_has_none():
    future = dataclasses.replace(hw.profile("h200"), family="sm_100")
    assert tuning.tuning(future) is tuning.SM_90
    with pytest.raises(ValueError, match="runs no generated kernels"):
        tuning.tuning(hw.profile("cpu"))
    with pytest.raises(ValueError, match="no tuning data for family"):
        tuning.tuning_of_family("Apple99")


def test_a_row_needs_every_field():
    with pytest.raises(ValueError, match="missing"):
        tuning._row("partial", ("x",), stream_unroll=(1, "why", tuning.NOT_MEASURED))


def test_derived_parameters_read_the_table():
    h200 = hw.profile("h200")
    t = tuning.tuning(h200)
    p = hw.derive(h200, 4)
    assert p.preferred_row_threads == t.preferred_row_threads
    assert p.unbounded_threads == h200.registers_per_sm // t.unbounded_thread_registers
    assert p.register_bytes_per_thread == (h200.registers_per_sm * 4 // h200.max_threads_per_sm
                                           // t.row_data_register_share)
    assert p.prefetch_store_loads is t.prefetch_store_loads
    m3 = hw.profile("m3")
    assert hw.derive(m3, 4).register_bytes_per_thread == tuning.tuning(m3).row_data_bytes
    assert hw.derive(m3, 4).short_row_limit == tuning.tuning(m3).short_row_limit
