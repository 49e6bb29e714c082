"""Every profile validated (types, ranges, sources), and the checked facts pinned against the seeds' wrong ones.

shared/seeds/ claims 64 KB threadgroup memory on M3, 16-wide SIMD before M3, 8-wide vectors and
tensor cores on M3; shared/reference/apple-gpu.md shows each is wrong. These tests hold the right values.
"""

import dataclasses
import json
import pickle
import re

import pytest

from mlxtriton import hw
from mlxtriton.hw import _table
from mlxtriton.hw._profile import APPLE_ONLY, BACKENDS, IDENTITY_FIELDS, NVIDIA_ONLY, VARIANTS, VENDORS

ALL = hw.profiles()
GPUS = [p for p in ALL if p.is_gpu]
APPLE = hw.profiles("apple")
NVIDIA = hw.profiles("nvidia")
M_SERIES = [p for p in APPLE if p.key.startswith("m")]
ids = lambda p: p.key  # noqa: E731

REQUIRED = ["m1", "m1-pro", "m1-max", "m1-ultra", "m2", "m2-pro", "m2-max", "m2-ultra",
            "m3", "m3-pro", "m3-max", "m3-ultra", "m4", "m4-pro", "m4-max", "m5", "m5-pro", "m5-max",
            "h100", "h200", "cpu"]

# field -> the types its value may have when known
TYPES = {
    "mlx_architecture": str, "compute_capability": tuple, "gpu_cores": tuple, "simd_width": int,
    "max_threads_per_threadgroup": int, "threadgroup_memory_bytes": int, "max_vector_lanes": int,
    "max_vector_bytes": int, "memory_bandwidth_gbs": tuple, "achievable_bandwidth_fraction": float,
    "fp32_tflops": float, "l2_cache_bytes": int, "system_level_cache_bytes": int,
    "register_file_bytes_per_core": int, "simdgroup_matrix": bool, "native_bfloat16": bool,
    "dynamic_caching": bool, "neural_accelerators": bool, "tensor_cores": bool,
    "shared_memory_per_block_optin_bytes": int, "shared_memory_per_sm_bytes": int,
    "registers_per_sm": int, "max_registers_per_thread": int, "max_threads_per_sm": int,
}


def test_every_required_chip_has_a_profile():
    assert [k for k in REQUIRED if k not in {p.key for p in ALL}] == []


def test_keys_and_names_are_unique_and_well_formed():
    assert len({p.key for p in ALL}) == len(ALL)
    assert len({p.name for p in ALL}) == len(ALL)
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", p.key) for p in ALL)


def test_every_field_is_typed():
    figure_fields = {f.name for f in dataclasses.fields(hw.Profile)} - IDENTITY_FIELDS
    assert figure_fields == set(TYPES), "add the new field to TYPES with its type"


@pytest.mark.parametrize("p", ALL, ids=ids)
def test_types(p):
    for name, expected in TYPES.items():
        value = getattr(p, name)
        if value is None:
            continue
        assert isinstance(value, expected), (name, value)
        if expected is int:
            assert not isinstance(value, bool), name
    for name in ("gpu_cores", "compute_capability"):
        assert getattr(p, name) is None or all(type(v) is int for v in getattr(p, name))
    assert p.memory_bandwidth_gbs is None or all(type(v) is float for v in p.memory_bandwidth_gbs)
    assert isinstance(p.estimates, frozenset) and isinstance(p.sources, tuple)


@pytest.mark.parametrize("p", ALL, ids=ids)
def test_identity(p):
    assert p.vendor in VENDORS and p.backend in BACKENDS
    assert {"apple": "metal", "nvidia": "cuda", "cpu": "cpu"}[p.vendor] == p.backend
    if p.vendor == "apple":
        assert p.family in ("Apple7", "Apple8", "Apple9", "Apple10")
        assert p.mlx_architecture is None or re.fullmatch(r"applegpu_g\d\d[gsdp]", p.mlx_architecture)
    elif p.vendor == "nvidia":
        assert p.family == "sm_%d%d" % p.compute_capability
        assert p.mlx_architecture == p.family
    else:
        assert p.family == "cpu"
    assert p.variant is None or p.variant in VARIANTS
    if p in M_SERIES:
        assert p.variant is not None


@pytest.mark.parametrize("p", GPUS, ids=ids)
def test_ranges(p):
    assert p.simd_width == 32
    assert p.max_threads_per_threadgroup == 1024
    assert p.threadgroup_memory_bytes in (32 * 1024, 48 * 1024)
    assert p.max_vector_lanes == 4 and p.max_vector_bytes == 16
    if p.gpu_cores is not None:
        assert list(p.gpu_cores) == sorted(set(p.gpu_cores)) and all(0 < c <= 200 for c in p.gpu_cores)
    if p.memory_bandwidth_gbs is not None:
        assert all(50 <= b <= 10_000 for b in p.memory_bandwidth_gbs)
        # one figure for every bin, or one per bin
        assert len(p.memory_bandwidth_gbs) in (1, len(p.gpu_cores or ()))
        assert list(p.memory_bandwidth_gbs) == sorted(p.memory_bandwidth_gbs)
    assert p.achievable_bandwidth_fraction is None or 0.5 <= p.achievable_bandwidth_fraction <= 1
    assert p.fp32_tflops is None or 1 <= p.fp32_tflops <= 100
    for name in ("l2_cache_bytes", "system_level_cache_bytes", "register_file_bytes_per_core"):
        value = getattr(p, name)
        assert value is None or 64 * 1024 <= value <= 256 * 1024 * 1024, name


@pytest.mark.parametrize("p", ALL, ids=ids)
def test_every_known_figure_has_a_source_and_every_source_a_figure(p):
    cited = dict(p.sources)
    assert len(cited) == len(p.sources), "a field cited twice"
    for name, value in p.figures().items():
        if value is not None:
            assert name in cited, f"{p.key}.{name} = {value!r} has no source"
            assert p.source(name) == _table.CITATIONS[cited[name]]
        else:
            assert name not in cited, f"{p.key}.{name} is unknown yet cites {cited[name]}"
    if p.is_gpu:
        assert "family" in cited
    assert set(cited) <= set(p.figures()) | {"family"}
    assert all(key in _table.CITATIONS for key in cited.values())


@pytest.mark.parametrize("p", ALL, ids=ids)
def test_estimates_are_known_figures_cited_as_estimates(p):
    for name in p.estimates:
        assert getattr(p, name) is not None
        assert "estimate" in p.source(name).lower() or name == "register_file_bytes_per_core"


def test_every_citation_is_used():
    used = {key for p in ALL for _, key in p.sources}
    assert used == set(_table.CITATIONS)


@pytest.mark.parametrize("p", ALL, ids=ids)
def test_vendor_specific_fields_stay_empty_elsewhere(p):
    if p.vendor != "apple":
        assert all(getattr(p, f) is None for f in APPLE_ONLY)
    if p.vendor != "nvidia":
        assert all(getattr(p, f) is None for f in NVIDIA_ONLY)


def test_cpu_profile_has_no_kernel_figures():
    cpu = hw.profile("cpu")
    assert not cpu.is_gpu and cpu.sources == () and all(v is None for v in cpu.figures().values())


# --- the seeds' wrong figures, pinned right ----------------------------------------------------------

@pytest.mark.parametrize("p", APPLE, ids=ids)
def test_threadgroup_memory_is_32_kb_on_every_apple_gpu(p):
    assert p.threadgroup_memory_bytes == 32768  # seed: "64KB of shared memory" on M3


@pytest.mark.parametrize("p", GPUS, ids=ids)
def test_simd_width_is_32_everywhere(p):
    assert p.simd_width == 32  # seed: "32-wide vs 16-wide in previous generations"


@pytest.mark.parametrize("p", GPUS, ids=ids)
def test_vectors_are_at_most_4_wide(p):
    assert p.max_vector_lanes == 4  # seed: "8-wide vs 4-wide"


@pytest.mark.parametrize("p", APPLE, ids=ids)
def test_no_matrix_units_before_m5(p):
    has = p.family == "Apple10"  # seed: "Tensor cores" on M3
    assert p.neural_accelerators is has
    assert p.has_matrix_accelerator is has
    assert p.tensor_cores is None


@pytest.mark.parametrize("key,family", [("m1", "Apple7"), ("m1-ultra", "Apple7"), ("m2-max", "Apple8"),
                                        ("m3", "Apple9"), ("m4-max", "Apple9"), ("m5", "Apple10"),
                                        ("m5-max", "Apple10"), ("a17-pro", "Apple9"), ("a18", "Apple9"),
                                        ("a18-pro", "Apple9")])
def test_families(key, family):
    assert hw.profile(key).family == family


@pytest.mark.parametrize("p", APPLE, ids=ids)
def test_family_features(p):
    newer = p.family in ("Apple9", "Apple10")
    assert p.dynamic_caching is newer  # real from M3 / A17 Pro, with no API
    assert p.simdgroup_matrix is True
    # Native bf16 casting from Apple9; nobody has documented Apple10's, so it stays unknown.
    assert p.native_bfloat16 is {"Apple7": False, "Apple8": False, "Apple9": True, "Apple10": None}[p.family]


def test_peak_fp32():
    # The seed's "~2,000 GFLOPS" M1/M2 peaks are wrong: Apple's figures are 2.6 and 3.6 TFLOPS.
    assert (hw.profile("m1").fp32_tflops, hw.profile("m2").fp32_tflops) == (2.6, 3.6)
    assert not hw.profile("m1").fp32_tflops_estimated and not hw.profile("m2-ultra").fp32_tflops_estimated
    for key in ("m3", "m3-pro", "m3-max", "m3-ultra", "m4", "m4-pro", "m4-max"):
        assert hw.profile(key).fp32_tflops_estimated  # Apple publishes no FP32 figure from M3 on
    for key in ("m5", "m5-pro", "m5-max"):
        assert hw.profile(key).fp32_tflops is None  # not found: unknown, not invented
    assert hw.profile("h200").fp32_tflops == 67.0 and not hw.profile("h200").fp32_tflops_estimated


def test_bandwidth_per_bin():
    assert hw.profile("m3-max").memory_bandwidth_gbs == (300.0, 400.0)
    assert hw.profile("m3-max").gpu_cores == (30, 40)
    assert hw.profile("m4-max").memory_bandwidth_gbs == (410.0, 546.0)
    assert hw.profile("m4-max").peak_bandwidth_gbs == 546.0
    assert hw.profile("m1").memory_bandwidth_gbs == (68.25,)


def test_caches():
    assert hw.profile("m1").l2_cache_bytes == 768 * 1024
    assert hw.profile("m1").last_level_cache_bytes == 8 * 1024 * 1024
    assert "system_level_cache_bytes" in hw.profile("m2-ultra").estimates  # EST in the reference
    assert hw.profile("m3-max").last_level_cache_bytes is None  # n/f
    assert hw.profile("h100").last_level_cache_bytes == 50 * 1024 * 1024


@pytest.mark.parametrize("key,l2_mib", [("h100", 50), ("h200", 60)])
def test_nvidia_hopper(key, l2_mib):
    p = hw.profile(key)
    assert p.compute_capability == (9, 0) and p.sm_count == 132
    assert p.threadgroup_memory_bytes == 48 * 1024
    assert p.shared_memory_per_block_optin_bytes == 232448 == p.threadgroup_memory_max_bytes
    assert p.shared_memory_per_sm_bytes == 233472
    assert p.registers_per_sm == 65536 and p.max_registers_per_thread == 255
    assert p.max_threads_per_sm == 2048 and p.tensor_cores is True
    assert p.l2_cache_bytes == l2_mib * 1024 * 1024


def test_h200_is_an_h100_with_more_memory_bandwidth():
    h100, h200 = hw.profile("h100"), hw.profile("h200")
    assert h200.peak_bandwidth_gbs == 4800 and h100.peak_bandwidth_gbs == 3350
    same = ("compute_capability", "gpu_cores", "registers_per_sm", "shared_memory_per_block_optin_bytes",
            "fp32_tflops", "max_threads_per_sm")
    assert all(getattr(h100, f) == getattr(h200, f) for f in same)


# --- profiles as data ---------------------------------------------------------------------------------

def test_profiles_are_frozen_hashable_and_picklable():
    p = hw.profile("m3-max")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.simd_width = 16
    assert len({hash(q) for q in ALL}) == len(ALL)
    assert pickle.loads(pickle.dumps(p)) == p
    assert repr(p) == "Profile('m3-max': M3 Max, Apple9)"


def test_to_dict_is_json_ready():
    d = json.loads(json.dumps(hw.profile("m3-max").to_dict()))
    assert d["memory_bandwidth_gbs"] == [300.0, 400.0] and d["estimates"] == ["fp32_tflops"]
    assert d["sources"]["fp32_tflops"].startswith("Estimate")


def test_profiles_filter_and_order():
    assert [p.vendor for p in ALL] == sorted((p.vendor for p in ALL), key=["apple", "nvidia", "cpu"].index)
    assert hw.profiles("cpu") == (hw.profile("cpu"),)
    assert hw.profiles() == ALL


def test_adding_a_chip_is_adding_a_row(monkeypatch):
    row = ("m6", "M6", "Apple10", "base", "applegpu_g18g", (10,), (200,), None, None, None, None)
    monkeypatch.setattr(_table, "APPLE_CHIPS", _table.APPLE_CHIPS + (row,))
    m6 = {p.key: p for p in _table._build()}["m6"]
    # Family facts come along with their sources; the row's figures with theirs.
    assert m6.threadgroup_memory_bytes == 32768 and m6.neural_accelerators is True
    assert m6.source("threadgroup_memory_bytes") == hw.profile("m5").source("threadgroup_memory_bytes")
    assert m6.memory_bandwidth_gbs == (200.0,) and m6.source("memory_bandwidth_gbs") is not None
    assert m6.fp32_tflops is None and m6.source("fp32_tflops") is None
