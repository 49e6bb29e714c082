"""The profile of the lent NVIDIA card (an H200 or an H100) checked against the real device: runs
only on MLX's CUDA backend.

Reads the device three ways (``mx.device_info()``, PyTorch's and CuPy's device properties) and
launches ``mx.fast.cuda_kernel`` with the parameters `hw.params` derives, at the opt-in shared-memory
limit the profile states. Run on the device machine, after unpacking the MLX CUDA bundle
(shared/device/README.md):

    python3 -m pytest -m cuda tests/hw/test_device_card.py -v -rs
"""

import functools
import json
import subprocess
import sys
import time
import warnings

import mlx.core as mx
import numpy as np
import pytest

from mlxtriton import hw

ON_CUDA = hasattr(mx, "cuda") and mx.cuda.is_available()
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not ON_CUDA, reason="needs MLX's CUDA backend")]

# the device name MLX reports -> the profile that describes that card
_CARDS = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100"}
_NAME = mx.device_info().get("device_name") if ON_CUDA else None
if ON_CUDA and _NAME not in _CARDS:
    pytestmark.append(pytest.mark.skip(reason=f"no profile is checked against {_NAME}"))
CARD = hw.profile(_CARDS.get(_NAME, "h200"))


def test_mlx_device_info_detects_the_card():
    info = mx.device_info()
    assert (info["compute_capability_major"], info["compute_capability_minor"]) == CARD.compute_capability
    assert info["architecture"] == CARD.mlx_architecture
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real device is known: no nearest-profile warning
        assert hw.detect() is CARD
    t = hw.target()
    assert (t.chip, t.device, t.dialect, t.can_launch) == (CARD, CARD, "cuda", True)


# (name in PyTorch's device properties, name in CuPy's, the profile's figure)
PROPERTIES = [
    ("multi_processor_count", "multiProcessorCount", CARD.sm_count),
    ("L2_cache_size", "l2CacheSize", CARD.l2_cache_bytes),
    ("shared_memory_per_block", "sharedMemPerBlock", CARD.threadgroup_memory_bytes),
    ("shared_memory_per_block_optin", "sharedMemPerBlockOptin", CARD.shared_memory_per_block_optin_bytes),
    ("shared_memory_per_multiprocessor", "sharedMemPerMultiprocessor", CARD.shared_memory_per_sm_bytes),
    ("regs_per_multiprocessor", "regsPerMultiprocessor", CARD.registers_per_sm),
    ("max_threads_per_multi_processor", "maxThreadsPerMultiProcessor", CARD.max_threads_per_sm),
    ("max_threads_per_block", "maxThreadsPerBlock", CARD.max_threads_per_threadgroup),
    ("warp_size", "warpSize", CARD.simd_width),
    ("major", "major", CARD.compute_capability[0]),
    ("minor", "minor", CARD.compute_capability[1]),
]


# Each library reads the device in a process of its own, so its CUDA libraries never meet MLX's.
_READERS = {
    "torch": ("import json, torch\n"
              "p = torch.cuda.get_device_properties(0)\n"
              "print(json.dumps({n: getattr(p, n, None) for n in NAMES} | {'name': p.name}))"),
    "cupy": ("import json, cupy\n"
             "p = cupy.cuda.runtime.getDeviceProperties(0)\n"
             "name = p['name'].decode() if isinstance(p['name'], bytes) else p['name']\n"
             "print(json.dumps({n: p.get(n) for n in NAMES} | {'name': name}))"),
}


@functools.cache
def _read(library: str) -> dict:
    column = 0 if library == "torch" else 1
    names = [p[column] for p in PROPERTIES]
    code = f"NAMES = {names!r}\n" + _READERS[library]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("library", ["torch", "cupy"])
@pytest.mark.parametrize("torch_name,cupy_name,expected", PROPERTIES, ids=[p[0] for p in PROPERTIES])
def test_device_properties(library, torch_name, cupy_name, expected):
    props = _read(library)
    if "error" in props:
        pytest.skip(f"{library} could not read the device: {props['error']}")
    assert props["name"] == _NAME
    value = props[torch_name if library == "torch" else cupy_name]
    if value is None:
        pytest.skip(f"this {library} reports no {torch_name if library == 'torch' else cupy_name}")
    assert value == expected


def test_pytorch_or_cupy_read_the_device():
    # Both are installed on the lent machine: if neither can read the device, the checks above skipped.
    errors = {library: _read(library).get("error") for library in _READERS}
    assert not all(errors.values()), errors


def test_a_kernel_at_the_derived_limits_launches():
    # One threadgroup of the derived row size fills and reads back the whole opt-in shared memory:
    # checks that 227 KB is reachable through mx.fast.cuda_kernel, which opts in above 48000 bytes.
    p = hw.target(CARD).derive(4)
    floats = p.threadgroup_memory_bytes // 4
    kernel = mx.fast.cuda_kernel(
        name="hw_smem_limit",
        input_names=["x"],
        output_names=["out"],
        source="""
            extern __shared__ float smem[];
            for (int i = threadIdx.x; i < N; i += blockDim.x) smem[i] = (float)i + x[0];
            __syncthreads();
            out[threadIdx.x] = smem[N - 1 - threadIdx.x];
        """,
        shared_memory=p.threadgroup_memory_bytes,
    )
    threads = p.max_row_threads
    (out,) = kernel(inputs=[mx.zeros((1,), mx.float32)], template=[("N", floats)],
                    grid=(threads, 1, 1), threadgroup=(threads, 1, 1),
                    output_shapes=[(threads,)], output_dtypes=[mx.float32])
    expected = (floats - 1 - np.arange(threads)).astype(np.float32)
    np.testing.assert_array_equal(np.array(out), expected)


def test_copy_bandwidth_is_below_the_stated_peak():
    # A copy cannot beat the memory's peak: a higher reading would mean the profile understates it.
    x = mx.ones((1 << 27,), mx.float32)  # 512 MiB, far beyond the 60 MiB L2
    mx.eval(x)
    for _ in range(3):
        mx.eval(x + 0)
    # Pipelined (shared/device/README.md): queue the copies, keep only the newest outputs alive
    # so MLX reuses their buffers instead of allocating gigabytes, synchronise once.
    runs = 20
    start = time.perf_counter()
    live = []
    for _ in range(runs):
        live = live[-2:] + [x + 0]
        mx.async_eval(live[-1])
    mx.synchronize()
    seconds = (time.perf_counter() - start) / runs
    gbs = 2 * x.nbytes / seconds / 1e9  # bytes read and written
    print(f"MLX copy: {gbs:.0f} GB/s of {CARD.peak_bandwidth_gbs:.0f} peak")
    assert 0.5 * CARD.peak_bandwidth_gbs < gbs <= 1.02 * CARD.peak_bandwidth_gbs
