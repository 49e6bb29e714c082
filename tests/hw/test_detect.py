"""Detection from recorded ``mx.device_info()`` dictionaries, chip names, and override precedence.

Recorded dictionaries: "verbatim" ones are copied from public reports of real machines; the others
keep the architecture string and device name such reports show for that chip (e.g. "Apple M3 Max
(applegpu_g15s)") with illustrative memory figures, which detection does not read.
"""

import warnings

import mlx.core as mx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxtriton import hw

# --- recorded device_info dictionaries ---------------------------------------------------------------

M1 = {  # verbatim: MacBook, 8 GPU cores, 16 GB, MLX 0.29.3 (mx.metal.device_info())
    "resource_limit": 499000, "max_buffer_length": 8589934592, "architecture": "applegpu_g13g",
    "memory_size": 17179869184, "max_recommended_working_set_size": 11453251584, "device_name": "Apple M1"}
M2_PRO = {  # architecture seen in a public report: "Apple M2 Pro (16 GB, applegpu_g14s)"
    "resource_limit": 499000, "max_buffer_length": 9663676416, "architecture": "applegpu_g14s",
    "memory_size": 17179869184, "max_recommended_working_set_size": 12713115648,
    "device_name": "Apple M2 Pro"}
M3_MAX = {  # architecture seen in a public report: "Apple M3 Max (applegpu_g15s)", MLX 0.32.2
    "resource_limit": 499000, "max_buffer_length": 77309411328, "architecture": "applegpu_g15s",
    "memory_size": 103079215104, "max_recommended_working_set_size": 77309411328,
    "device_name": "Apple M3 Max"}
M3_ULTRA = {  # verbatim
    "resource_limit": 499000, "max_buffer_length": 167503724544, "architecture": "applegpu_g15d",
    "memory_size": 274877906944, "max_recommended_working_set_size": 223338299392,
    "device_name": "Apple M3 Ultra"}
M4_PRO = {  # verbatim: 48 GB
    "resource_limit": 499000, "max_buffer_length": 30150672384, "architecture": "applegpu_g16s",
    "memory_size": 51539607552, "max_recommended_working_set_size": 40200896512, "device_name": "Apple M4 Pro"}
M4_MAX = {  # same architecture string as the M4 Pro (MLX issue #3852): only the name tells them apart
    "resource_limit": 499000, "max_buffer_length": 86586540032, "architecture": "applegpu_g16s",
    "memory_size": 137438953472, "max_recommended_working_set_size": 115448725504,
    "device_name": "Apple M4 Max"}
M5 = {  # architecture of the base M5 in public reports (applegpu_g17g, 10 GPU cores)
    "resource_limit": 499000, "max_buffer_length": 17179869184, "architecture": "applegpu_g17g",
    "memory_size": 34359738368, "max_recommended_working_set_size": 25769803776, "device_name": "Apple M5"}
M5_MAX = {  # verbatim: MLX 0.32.2
    "device_name": "Apple M5 Max", "max_recommended_working_set_size": 115448725504,
    "memory_size": 137438953472, "architecture": "applegpu_g17s", "max_buffer_length": 86586540032,
    "resource_limit": 499000}
A18_PRO = {  # verbatim: an A18 Pro Mac; g17 like the M5, but GPU family Apple9
    "device_name": "Apple A18 Pro", "max_recommended_working_set_size": 5726633984,
    "memory_size": 8589934592, "architecture": "applegpu_g17p", "max_buffer_length": 4294967296,
    "resource_limit": 499000}
H200 = {  # shared/reference/mlx.md, read on the lent H200 with MLX 0.32.4 (free memory, bus id, uuid elided)
    "total_memory": 150754820096, "free_memory": 149000000000, "compute_capability_major": 9,
    "compute_capability_minor": 0, "pci_bus_id": "0000:00:00.0", "uuid": "GPU-0",
    "architecture": "sm_90", "device_name": "NVIDIA H200"}
CPU_BUILD = {"architecture": "x86_64", "device_name": "AMD EPYC"}  # MLX's CPU build (this machine)
FUTURE = {  # an Apple GPU two generations past the table
    "resource_limit": 499000, "max_buffer_length": 86586540032, "architecture": "applegpu_g19s",
    "memory_size": 137438953472, "max_recommended_working_set_size": 115448725504,
    "device_name": "Apple M7 Max"}

KNOWN = [
    (M1, "m1", "Apple7"), (M2_PRO, "m2-pro", "Apple8"), (M3_MAX, "m3-max", "Apple9"),
    (M3_ULTRA, "m3-ultra", "Apple9"), (M4_PRO, "m4-pro", "Apple9"), (M4_MAX, "m4-max", "Apple9"),
    (M5, "m5", "Apple10"), (M5_MAX, "m5-max", "Apple10"), (A18_PRO, "a18-pro", "Apple9"),
    (H200, "h200", "sm_90"), (CPU_BUILD, "cpu", "cpu"),
    ({"architecture": "arm64", "device_name": "Apple M2"}, "cpu", "cpu"),  # CPU stream/build on a Mac
    ({}, "cpu", "cpu"),
]


@pytest.mark.parametrize("info,key,family", KNOWN, ids=lambda v: v if isinstance(v, str) else None)
def test_recorded_machines(info, key, family):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known machine is detected without a warning
        p = hw.detect(info)
    assert (p.key, p.family) == (key, family)


def test_the_name_tells_pro_from_max():
    assert M4_PRO["architecture"] == M4_MAX["architecture"]
    assert hw.detect(M4_PRO).key == "m4-pro" and hw.detect(M4_MAX).key == "m4-max"
    assert hw.detect(M4_PRO).gpu_cores != hw.detect(M4_MAX).gpu_cores


def test_features_follow_the_family_not_the_g_number():
    # g17: M5 (Apple10, neural accelerators) and A18 Pro (Apple9, none) share the generation number.
    a18, m5 = hw.detect(A18_PRO), hw.detect(M5)
    assert a18.mlx_architecture[:-1] == m5.mlx_architecture[:-1] == "applegpu_g17"
    assert (a18.family, a18.neural_accelerators) == ("Apple9", False)
    assert (m5.family, m5.neural_accelerators) == ("Apple10", True)


def test_unknown_future_apple_gpu_maps_to_the_nearest_family_with_a_warning():
    with pytest.warns(hw.UnknownHardwareWarning, match="M7 Max.*M5 Max"):
        p = hw.detect(FUTURE)
    assert (p.key, p.family) == ("m5-max", "Apple10")


@pytest.mark.parametrize("arch,name,key", [
    ("applegpu_g19g", "Apple M7", "m5"),              # newer base chip
    ("applegpu_g18d", "Apple M6 Ultra", "m5-max"),     # no M5 Ultra: the largest M5
    ("applegpu_g17d", "", "m5-max"),
    ("applegpu_g12g", "Apple M0", "m1"),               # older than the table: the oldest family
    ("applegpu_g18p", "Apple A19 Pro", "a18-pro"),     # phone line: nearest phone chip, Apple9
    ("applegpu_g15s", "", "m3-pro"),                   # no name: Pro or Max cannot be told
    ("applegpu_xyz", "Apple Mystery", "m1"),           # unparseable: the most conservative profile
    ("applegpu_g16s", "Apple M4 Max (Virtual)", "m4-max"),  # unknown name, variant still readable
])
def test_unknown_apple_hardware_warns_and_picks_the_nearest(arch, name, key):
    with pytest.warns(hw.UnknownHardwareWarning):
        p = hw.detect({"architecture": arch, "device_name": name})
    assert p.key == key


def test_architecture_alone_is_enough_when_it_is_unambiguous():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hw.detect({"architecture": "applegpu_g13g", "device_name": ""}).key == "m1"
        assert hw.detect({"architecture": "applegpu_g15d"}).key == "m3-ultra"


def test_name_and_architecture_disagreeing_warns_and_trusts_the_name():
    with pytest.warns(hw.UnknownHardwareWarning, match="disagree"):
        assert hw.detect({"architecture": "applegpu_g16s", "device_name": "Apple M3 Max"}).key == "m3-max"


@given(generation=st.integers(0, 99), suffix=st.text("abcdgpsz", min_size=1, max_size=2),
       name=st.text(max_size=30))
def test_apple_detection_never_crashes(generation, suffix, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hw.UnknownHardwareWarning)
        p = hw.detect({"architecture": f"applegpu_g{generation}{suffix}", "device_name": name})
    assert p.vendor == "apple" and p.family.startswith("Apple")


@pytest.mark.parametrize("info,key", [
    ({"architecture": "sm_90", "device_name": "NVIDIA H100 80GB HBM3", "compute_capability_major": 9,
      "compute_capability_minor": 0}, "h100"),
    ({"architecture": "sm_90", "device_name": "NVIDIA H200"}, "h200"),  # capability from the arch
])
def test_cuda_devices(info, key):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hw.detect(info).key == key


@pytest.mark.parametrize("info,key", [
    ({"architecture": "sm_90", "device_name": "NVIDIA H200 NVL", "compute_capability_major": 9,
      "compute_capability_minor": 0}, "h200"),                     # another form of a known chip
    ({"architecture": "sm_80", "device_name": "NVIDIA A100-SXM4-80GB", "compute_capability_major": 8,
      "compute_capability_minor": 0}, "h100"),                     # nearest compute capability
    ({"architecture": "sm_90", "device_name": "NVIDIA H100 PCIe", "compute_capability_major": 9,
      "compute_capability_minor": 0}, "h100"),                     # PCIe is not the SXM profile
])
def test_unknown_cuda_devices_warn(info, key):
    with pytest.warns(hw.UnknownHardwareWarning):
        assert hw.detect(info).key == key


def test_detect_reads_this_machine():
    if mx.is_available(mx.gpu):
        pytest.skip("checks the CPU build; GPU machines are covered by the device tests")
    assert hw.detect().key == "cpu"


# --- names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["m3-max", "M3 Max", "m3_max", "APPLE M3 MAX", "m3max", " M3-Max "])
def test_names_ignore_case_spacing_and_punctuation(name):
    assert hw.profile(name) is hw.profile("m3-max")


@pytest.mark.parametrize("name,key", [("h200", "h200"), ("NVIDIA H200", "h200"), ("H200 SXM", "h200"),
                                      ("h100", "h100"), ("H100 SXM5", "h100"), ("m3", "m3"),
                                      ("Apple M1", "m1"), ("A18 Pro", "a18-pro"), ("cpu", "cpu")])
def test_aliases(name, key):
    assert hw.profile(name).key == key


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(hw.UnknownChipError, match="unknown chip 'm9'.*m3-max.*h200") as info:
        hw.profile("m9")
    assert isinstance(info.value, ValueError)
    with pytest.raises(hw.UnknownChipError, match="resolve"):
        hw.profile("auto")


def test_profile_passes_a_profile_through():
    p = hw.profile("m2")
    assert hw.profile(p) is p and hw.resolve(p) is p


# --- precedence: explicit > MLXTRITON_CHIP > detection -------------------------------------------------

def test_detection_when_nothing_is_named():
    assert hw.resolve("auto", H200).key == "h200"
    assert hw.resolve(None, M3_MAX).key == "m3-max"


def test_environment_overrides_detection(monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "M4 Max")
    assert hw.resolve("auto", H200).key == "m4-max"
    assert hw.resolve(device_info=CPU_BUILD).key == "m4-max"


def test_explicit_chip_overrides_the_environment(monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "m4-max")
    assert hw.resolve("m3", H200).key == "m3"


@pytest.mark.parametrize("value", ["", "auto", " AUTO "])
def test_environment_auto_or_empty_means_detect(monkeypatch, value):
    monkeypatch.setenv("MLXTRITON_CHIP", value)
    assert hw.resolve("auto", M1).key == "m1"


def test_bad_environment_value_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "m99")
    with pytest.raises(hw.UnknownChipError, match="MLXTRITON_CHIP='m99'.*known chips"):
        hw.resolve("auto", M1)


def test_detect_ignores_the_environment(monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "h200")
    assert hw.detect(M1).key == "m1"
