"""`hw.target`: decisions follow the named chip, the dialect and limits follow the running device."""

import dataclasses

import mlx.core as mx
import pytest

from mlxtriton import hw

NO_GPU = not mx.is_available(mx.gpu)


def test_m3_decisions_on_an_h200():
    t = hw.target("m3", device="h200")
    assert (t.chip.key, t.device.key, t.dialect, t.can_launch, t.cross_device) == ("m3", "h200", "cuda",
                                                                                    True, True)
    p = t.derive(4)
    # Tuning follows the M3: MLX Metal's 8 bytes per pointwise thread, the 2048-element short-row limit.
    assert p.chip == "m3" and p.pointwise_elements_per_thread == 2 and p.short_row_limit == 2048
    # Limits are both chips' smaller ones: 32 KB of threadgroup memory, the H200's register rule.
    assert p.threadgroup_memory_bytes == 32768 and p.register_bytes_per_thread == 64


def test_h200_decisions_on_an_m3():
    t = hw.target("h200", device="m3")
    assert t.dialect == "metal" and t.can_launch
    p = t.derive(4)
    assert p.chip == "h200" and p.pointwise_elements_per_thread == 4 and p.short_row_limit == 1024
    assert p.threadgroup_memory_bytes == 32768  # clamped: 227 KB cannot launch on an M3


def test_same_chip_and_device_is_plain_derive():
    t = hw.target("m4-max", device="m4-max")
    assert not t.cross_device
    assert t.derive(2) == hw.params.derive(hw.profile("m4-max"), 2)


def test_on_the_cpu_backend_source_is_rendered_for_the_chip_but_nothing_launches():
    t = hw.target("m3", device="cpu")
    assert t.dialect == "metal" and not t.can_launch
    assert t.derive(4) == hw.params.derive(hw.profile("m3"), 4)


def test_cpu_chip_on_cpu_has_nothing_to_generate():
    t = hw.target("cpu", device="cpu")
    assert t.dialect is None and not t.can_launch
    with pytest.raises(ValueError, match="runs no generated kernels"):
        t.derive(4)


def test_chip_resolution_follows_resolve(monkeypatch):
    monkeypatch.setenv("MLXTRITON_CHIP", "m2-max")
    assert hw.target(device="h200").chip.key == "m2-max"
    assert hw.target("m1", device="h200").chip.key == "m1"


@pytest.mark.skipif(not NO_GPU, reason="checks MLX's CPU build")
def test_defaults_on_the_cpu_build(monkeypatch):
    assert hw.target() == hw.Target(hw.profile("cpu"), hw.profile("cpu"))
    assert hw.running_device() is hw.profile("cpu")
    monkeypatch.setenv("MLXTRITON_CHIP", "m3-max")
    t = hw.target()
    assert (t.chip.key, t.device.key, t.dialect, t.can_launch) == ("m3-max", "cpu", "metal", False)


@pytest.mark.parametrize("device", [mx.cpu, mx.Device(mx.cpu)])
def test_cpu_devices(device):
    assert hw.running_device(device) is hw.profile("cpu")


def test_running_device_accepts_profiles_and_names():
    h200 = hw.profile("h200")
    assert hw.running_device(h200) is h200 and hw.running_device("H200") is h200


def test_targets_are_cache_keys():
    a, b = hw.target("m3", device="h200"), hw.target("m3", device="h200")
    assert a == b and hash(a) == hash(b) and a != hw.target("m3", device="m3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.chip = hw.profile("m1")
