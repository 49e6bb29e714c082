"""Code-generation parameters derived per family, their invariants, and clamping to a running device.

How a kernel's rows are laid out and whether they stay on chip is its schedule's (tests/codegen/
test_schedule.py); here, the numbers those schedules read."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxtriton import hw
from mlxtriton.hw import params

GPUS = [p for p in hw.profiles() if p.is_gpu]
# One chip per family, and what the family's rules give.
FAMILY_CHIPS = {"Apple7": "m1", "Apple8": "m2-pro", "Apple9": "m3-max", "Apple10": "m5", "sm_90": "h200"}


def derive(chip, itemsize=4, device=None):
    return params.derive(hw.profile(chip), itemsize, device=device)


# --- per family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family,registers", [("Apple7", 64), ("Apple8", 64), ("Apple9", 128),
                                              ("Apple10", 128), ("sm_90", 64)])
def test_register_budget_per_family(family, registers):
    # Dynamic Caching (Apple9+) makes register-heavy kernels cheaper in occupancy: twice the budget.
    # sm_90: half of the 32 registers a thread has at full occupancy (65536 / 2048).
    assert derive(FAMILY_CHIPS[family]).register_bytes_per_thread == registers


def test_apple9_keeps_longer_rows_on_chip_than_apple7():
    # twice the registers of row data a thread (Dynamic Caching): a float32 row of 32768 (128 KB)
    # stays in the registers of an M3's threads, streams through an M1's
    from mlxtriton.codegen.region import RegionBuilder
    from mlxtriton.codegen.schedule import holds_rows

    b = RegionBuilder("softmax")
    region = b.build([b.op("Softmax", b.input((8, 32 * 1024), "float32", "x"))])
    assert not holds_rows(region, hw.target("m1", device="m1"))
    assert holds_rows(region, hw.target("m3", device="m3"))


@pytest.mark.parametrize("chip,itemsize,elements", [
    ("m1", 4, 2), ("m3-max", 2, 4), ("m5", 1, 8), ("m2", 8, 1),     # Metal: 8 bytes per thread (MLX)
    ("h200", 4, 4), ("h100", 2, 8), ("h200", 1, 16), ("h200", 8, 2),  # CUDA: 16 bytes per thread (MLX)
])
def test_pointwise_elements_per_thread(chip, itemsize, elements):
    p = derive(chip, itemsize)
    assert p.pointwise_elements_per_thread == elements
    assert p.pointwise_threadgroup_size == 1024


def test_small_pointwise_arrays_take_one_element_per_thread_on_metal():
    p = derive("m4-max")
    assert p.pointwise_min_size == 65536
    assert p.elements_per_thread(65535) == 1 and p.elements_per_thread(65536) == 2
    assert derive("h200").elements_per_thread(10) == 4  # MLX's CUDA kernels vectorize at every size


@pytest.mark.parametrize("chip", [p.key for p in GPUS])
@pytest.mark.parametrize("itemsize,metal,cuda", [(1, 4, 8), (2, 4, 8), (4, 4, 4), (8, 2, 2)])
def test_vector_width_is_at_most_16_bytes_and_4_lanes_but_for_cuda_pointwise(chip, itemsize, metal, cuda):
    # vector types stop at 4 components; generated CUDA pointwise kernels load through their own struct
    p = derive(chip, itemsize)
    assert p.vector_width == metal and p.vector_width * itemsize <= 16
    assert p.pointwise_vector_width == (cuda if hw.profile(chip).backend == "cuda" else metal)
    assert p.pointwise_vector_width * itemsize <= 16


@pytest.mark.parametrize("chip", [p.key for p in GPUS])
def test_reduction_width_is_the_simd_width(chip):
    assert derive(chip).simd_width == 32


@pytest.mark.parametrize("chip,limit", [("m1", 2048), ("m4-max", 2048), ("m5", 2048), ("h200", 1024)])
def test_short_rows_take_one_simdgroup_each_up_to_the_limit(chip, limit):
    p = derive(chip)
    assert (p.short_row_limit, p.short_row_threadgroup) == (limit, 256)


def test_block_kernels_leave_room_for_1024_threads_per_sm_on_nvidia_only():
    # 64 registers a thread: the H200's register file over 1024 threads; Metal declares nothing
    assert derive("h200").block_threads_per_core == 65536 // 64
    assert derive("h200").unbounded_threads == 512
    assert derive("m3").block_threads_per_core == 0


def test_cuda_threadgroup_memory_is_the_opt_in_limit():
    assert derive("h200").threadgroup_memory_bytes == 232448  # cuda_kernel(shared_memory=N) opts in
    assert derive("m3").threadgroup_memory_bytes == 32768


# --- invariants over every chip, element size and row length ------------------------------------------

@given(chip=st.sampled_from([p.key for p in GPUS]), itemsize=st.sampled_from([1, 2, 4, 8]))
def test_invariants(chip, itemsize):
    profile = hw.profile(chip)
    p = params.derive(profile, itemsize)
    simd = p.simd_width
    for threads in (p.pointwise_threadgroup_size, p.max_row_threads, p.preferred_row_threads,
                    p.short_row_threadgroup):
        assert threads % simd == 0 and simd <= threads <= profile.max_threads_per_threadgroup
    assert p.unbounded_threads <= p.pointwise_threadgroup_size
    assert 1 <= p.vector_width <= 4 and p.vector_width * itemsize <= 16
    assert 1 <= p.pointwise_vector_width <= 8 and p.pointwise_vector_width * itemsize <= 16
    assert p.threadgroup_memory_bytes <= profile.threadgroup_memory_max_bytes
    assert p.max_row_register_bytes >= p.register_bytes_per_thread > 0


# --- errors and data -----------------------------------------------------------------------------------

def test_the_cpu_profile_has_no_kernel_parameters():
    with pytest.raises(ValueError, match="runs no generated kernels"):
        derive("cpu")


@pytest.mark.parametrize("itemsize", [0, 3, 16])
def test_bad_itemsize(itemsize):
    with pytest.raises(ValueError, match="dtype_itemsize"):
        derive("m3", itemsize)


def test_params_are_frozen_and_hashable():
    p = derive("m3", 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.vector_width = 8
    assert hash(p) == hash(derive("m3", 4))


# --- clamping to the device that runs the kernel -------------------------------------------------------

def test_a_device_clamps_hard_limits():
    p = derive("h200", 4, device=hw.profile("m3"))
    assert p.threadgroup_memory_bytes == 32768  # not the H200's 227 KB: the M3 could not launch it
    # rows capped at 1024 threads, each thread holding up to 128 B (half the 64 registers the
    # tuned-for H200 gives it)
    assert (p.max_row_threads, p.max_row_register_bytes) == (1024, 128)
    assert p.short_row_limit == 1024 and p.pointwise_elements_per_thread == 4  # tuning: the H200's


def test_smaller_device_limits_shrink_threadgroups():
    small = dataclasses.replace(hw.profile("m3"), max_threads_per_threadgroup=512, max_vector_lanes=2)
    p = derive("h200", 4, device=small)
    assert p.pointwise_threadgroup_size == p.max_row_threads == 512 and p.vector_width == 2


def test_reductions_use_the_running_devices_simd_width():
    wide = dataclasses.replace(hw.profile("h200"), simd_width=64)
    p = derive("m3", 4, device=wide)
    assert p.simd_width == 64 and p.short_row_threadgroup == 256


def test_a_cpu_device_clamps_nothing():
    assert derive("m3", 4, device=hw.profile("cpu")) == derive("m3", 4)


def test_long_rows_take_1024_threads_and_half_their_registers_on_nvidia():
    """Generated CUDA declares __launch_bounds__, so a 1024-thread row fits the register file
    (64 registers each on the H200) and may hold half of them as row data; Apple GPUs keep the
    threadgroup maximum and their per-thread budget."""
    h200 = derive("h200")
    assert (h200.max_row_threads, h200.max_row_register_bytes) == (1024, 128)
    assert derive("m3").max_row_register_bytes == derive("m3").register_bytes_per_thread
    assert derive("m3").max_row_threads == 1024
