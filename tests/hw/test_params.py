"""Code-generation parameters derived per family, their invariants, and clamping to a running device."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlxtriton import hw
from mlxtriton.hw import params

GPUS = [p for p in hw.profiles() if p.is_gpu]
# One chip per family, and what the family's rules give.
FAMILY_CHIPS = {"Apple7": "m1", "Apple8": "m2-pro", "Apple9": "m3-max", "Apple10": "m5", "sm_90": "h200"}


def derive(chip, itemsize=4, row_length=None, device=None):
    return params.derive(hw.profile(chip), itemsize, row_length, device=device)


# --- per family ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family,registers", [("Apple7", 64), ("Apple8", 64), ("Apple9", 128),
                                              ("Apple10", 128), ("sm_90", 64)])
def test_register_budget_per_family(family, registers):
    # Dynamic Caching (Apple9+) makes register-heavy kernels cheaper in occupancy: twice the budget.
    # sm_90: half of the 32 registers a thread has at full occupancy (65536 / 2048).
    assert derive(FAMILY_CHIPS[family]).register_bytes_per_thread == registers


@pytest.mark.parametrize("family,budget", [
    ("Apple7", 64 * 1024 + 32 * 1024 - 256),     # 1024 threads x 64 B + 32 KB - scratch
    ("Apple8", 64 * 1024 + 32 * 1024 - 256),
    ("Apple9", 128 * 1024 + 32 * 1024 - 256),    # larger: Dynamic Caching
    ("Apple10", 128 * 1024 + 32 * 1024 - 256),
    ("sm_90", 1024 * 128 + 227 * 1024 - 256),  # 1024 threads x half their 64 registers + opt-in shared memory
])
def test_resident_budget_per_family(family, budget):
    assert derive(FAMILY_CHIPS[family], row_length=1 << 20).resident_budget_bytes == budget


def test_apple9_keeps_longer_rows_on_chip_than_apple7():
    row = 32 * 1024  # f32: 128 KB
    assert not derive("m1", row_length=row).row_resident
    assert derive("m3", row_length=row).row_resident


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
def test_short_rows_take_one_simdgroup_each(chip, limit):
    short = derive(chip, row_length=limit)
    assert short.short_rows
    assert (short.threads_per_row, short.rows_per_threadgroup, short.row_threadgroup_size) == (32, 8, 256)
    assert short.reduction_scratch_bytes == 0  # reduced inside the SIMD-group: no threadgroup memory
    assert short.row_elements_per_thread == limit // 32
    long = derive(chip, row_length=limit + 1)
    assert not long.short_rows and long.rows_per_threadgroup == 1 and long.threads_per_row > 32


@pytest.mark.parametrize("row,threads", [(2049, 544), (2560, 640), (4096, 1024), (8192, 1024),
                                         (1 << 20, 1024)])
def test_long_rows_read_one_vector_per_thread_per_pass(row, threads):
    # MLX's softmax: ceil(n / 4) threads rounded up to 32, at most 1024.
    p = derive("m3", 4, row)
    assert p.threads_per_row == p.row_threadgroup_size == threads
    assert p.row_elements_per_thread == -(-row // threads)


def test_unknown_row_length_uses_the_long_row_kernel_at_full_width():
    p = derive("m2")
    assert (p.row_length, p.short_rows, p.row_resident, p.row_elements_per_thread) == (None,) * 4
    assert p.threads_per_row == p.row_threadgroup_size == 1024


def test_short_row_residency_is_registers_only():
    p = derive("m3", 4, 1024)  # 32 threads x 128 B = 4 KB: 1024 f32 fit
    assert p.resident_budget_bytes == 32 * 128 and p.row_resident
    assert not derive("m1", 4, 1024).row_resident  # 32 x 64 B = 2 KB: it streams instead


def test_block_kernels_leave_room_for_1024_threads_per_sm_on_nvidia_only():
    # 64 registers a thread: the H200's register file over 1024 threads; Metal declares nothing
    assert derive("h200").block_threads_per_core == 65536 // 64
    assert derive("h200").unbounded_threads == 512
    assert derive("m3").block_threads_per_core == 0


def test_cuda_threadgroup_memory_is_the_opt_in_limit():
    assert derive("h200").threadgroup_memory_bytes == 232448  # cuda_kernel(shared_memory=N) opts in
    assert derive("m3").threadgroup_memory_bytes == 32768


# --- invariants over every chip, element size and row length ------------------------------------------

@given(chip=st.sampled_from([p.key for p in GPUS]), itemsize=st.sampled_from([1, 2, 4, 8]),
       row_length=st.one_of(st.none(), st.integers(1, 1 << 22)))
def test_invariants(chip, itemsize, row_length):
    profile = hw.profile(chip)
    p = params.derive(profile, itemsize, row_length)
    simd = p.simd_width
    for threads in (p.pointwise_threadgroup_size, p.row_threadgroup_size, p.threads_per_row):
        assert threads % simd == 0 and simd <= threads <= profile.max_threads_per_threadgroup
    assert p.threads_per_row * p.rows_per_threadgroup == p.row_threadgroup_size
    assert 1 <= p.vector_width <= 4 and p.vector_width * itemsize <= 16
    assert 1 <= p.pointwise_vector_width <= 8 and p.pointwise_vector_width * itemsize <= 16
    assert p.threadgroup_memory_bytes <= profile.threadgroup_memory_max_bytes
    assert 0 <= p.reduction_scratch_bytes <= p.threadgroup_memory_bytes
    assert p.resident_budget_bytes > 0
    if row_length is not None:
        assert p.row_elements_per_thread * p.threads_per_row >= row_length
        assert p.row_resident == (row_length * itemsize <= p.resident_budget_bytes)
        assert p.short_rows == (p.rows_per_threadgroup > 1)


# --- errors and data -----------------------------------------------------------------------------------

def test_the_cpu_profile_has_no_kernel_parameters():
    with pytest.raises(ValueError, match="runs no generated kernels"):
        derive("cpu")


@pytest.mark.parametrize("itemsize", [0, 3, 16])
def test_bad_itemsize(itemsize):
    with pytest.raises(ValueError, match="dtype_itemsize"):
        derive("m3", itemsize)


@pytest.mark.parametrize("row_length", [0, -5, 2.5])
def test_bad_row_length(row_length):
    with pytest.raises(ValueError, match="row_length"):
        derive("m3", 4, row_length)


def test_params_are_frozen_and_hashable():
    p = derive("m3", 4, 4096)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.vector_width = 8
    assert hash(p) == hash(derive("m3", 4, 4096))


# --- clamping to the device that runs the kernel -------------------------------------------------------

def test_a_device_clamps_hard_limits():
    p = derive("h200", 4, 8192, device=hw.profile("m3"))
    assert p.threadgroup_memory_bytes == 32768  # not the H200's 227 KB: the M3 could not launch it
    # rows capped at 1024 threads, each thread holding up to 128 B (half the 64 registers the
    # tuned-for H200 gives it)
    assert p.resident_budget_bytes == 1024 * 128 + 32768 - 256
    assert p.short_row_limit == 1024 and p.pointwise_elements_per_thread == 4  # tuning: the H200's


def test_smaller_device_limits_shrink_threadgroups():
    small = dataclasses.replace(hw.profile("m3"), max_threads_per_threadgroup=512, max_vector_lanes=2)
    p = derive("h200", 4, 1 << 16, device=small)
    assert p.pointwise_threadgroup_size == p.row_threadgroup_size == 512 and p.vector_width == 2


def test_reductions_use_the_running_devices_simd_width():
    wide = dataclasses.replace(hw.profile("h200"), simd_width=64)
    p = derive("m3", 4, 512, device=wide)
    assert p.simd_width == 64 and p.threads_per_row == 64 and p.rows_per_threadgroup == 4


def test_a_cpu_device_clamps_nothing():
    assert derive("m3", 4, 4096, device=hw.profile("cpu")) == derive("m3", 4, 4096)


def test_long_rows_take_1024_threads_and_half_their_registers_on_nvidia():
    """Generated CUDA declares __launch_bounds__, so a 1024-thread row fits the register file
    (64 registers each on the H200) and may hold half of them as row data; Apple GPUs keep the
    threadgroup maximum and their per-thread budget."""
    h200 = derive("h200", row_length=16384)
    assert (h200.max_row_threads, h200.threads_per_row, h200.row_elements_per_thread) == (1024, 1024, 16)
    assert h200.max_row_register_bytes == 128 and h200.row_resident
    assert derive("h200", row_length=32768).row_resident  # 1024 threads x 32 floats
    assert derive("m3", row_length=16384).max_row_register_bytes == derive("m3").register_bytes_per_thread
    assert derive("m3", row_length=16384).max_row_threads == 1024
