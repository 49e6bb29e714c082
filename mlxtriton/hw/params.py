"""Hardware layer: code-generation parameters derived from a profile and its tuning data.

The kernel generator asks `derive` for the numbers its schedules read (the limits of a chip and
device pair, threadgroup sizes, elements per thread, vector widths, register shares) and never
reads chip figures itself; how a kernel is shaped, and whether its rows stay on chip, is its
schedule's answer (`mlxtriton.codegen.schedule`). Rules read profile fields and the chip's row of
`mlxtriton.hw.tuning` only: a new chip is a table row, not a new rule. May import the standard
library and this layer's modules.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlxtriton.hw._profile import Profile
from mlxtriton.hw.tuning import tuning

_ITEMSIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class CodegenParams:
    """The numbers kernels are shaped by for one chip (and device) and element size.

    Attributes:
        chip: Key of the profile the decisions follow (e.g. ``"m3-max"``).
        dtype_itemsize: Bytes per element these parameters are for.
        simd_width: Lanes of a SIMD-group / warp: the width of ``simd_sum`` / shuffle reductions.
        vector_width: Elements per vector load or store of a row kernel (at most 4 lanes and 16 bytes).
        pointwise_vector_width: The same for pointwise kernels (on CUDA up to 8 lanes of 16 bytes).
        pointwise_threadgroup_size: Threads per threadgroup of a pointwise kernel.
        pointwise_elements_per_thread: Elements each pointwise thread handles on large arrays.
        pointwise_min_size: Arrays smaller than this get one element per thread.
        short_row_limit: Rows up to this length may take one SIMD-group each.
        short_row_threadgroup: Threads of a threadgroup holding several short rows.
        register_bytes_per_thread: Bytes of row data a thread may keep in registers.
        max_row_threads: Most threads one row may take: the threadgroup maximum.
        preferred_row_threads: Threads per row a kernel takes before more: rows that fit the
            registers of this many, and rows a kernel reads in one pass, take no more.
        unbounded_threads: Most threads per threadgroup a kernel may launch without declaring
            a bound on them (larger ones declare it: see the CUDA dialect's ``launch_bounds``).
        block_threads_per_core: Threads per core (SM) a kernel walking blocks of rows asks its
            compiler to leave room for, in its launch bound (0: none declared).
        vector_row_register_bytes: ``register_bytes_per_thread`` for a multi-pass row kernel
            that also reads a vector along the row (a norm's weight): half on NVIDIA (measured,
            see `mlxtriton.hw.tuning`), the same elsewhere (not measured).
        read_only_row_register_bytes: ``register_bytes_per_thread`` for a row kernel of a half
            type that writes nothing per element (a cross-entropy): twice on NVIDIA (measured,
            see `mlxtriton.hw.tuning`), the same elsewhere (not measured).
        prefetch_store_loads: Whether a row kernel holding its rows in registers loads inputs
            only its write pass reads during its first pass: on NVIDIA (measured, see
            `mlxtriton.hw.tuning`), not elsewhere (not measured).
        max_row_register_bytes: Bytes of row data a thread of a capped row may keep, when the cap
            left it more elements than ``register_bytes_per_thread`` holds: on a GPU whose
            threadgroup shares one register file (NVIDIA), half of what each of
            ``max_row_threads`` threads gets of it.
        threadgroup_memory_bytes: Most threadgroup memory a kernel may request. On CUDA, above the
            profile's ``threadgroup_memory_bytes`` (48 KB) it must be dynamic shared memory.
        core_threadgroup_memory_bytes: Threadgroup memory one core (SM) holds for all its
            resident threadgroups: a threadgroup taking more than half leaves it one at a time.
            Apple does not publish it; the per-threadgroup figure stands in.
        cores: GPU cores (Apple) or streaming multiprocessors (NVIDIA), of the largest bin that
            ships: a kernel of fewer threadgroups leaves cores idle.
    Example:
        >>> from mlxtriton import hw
        >>> p = hw.params.derive(hw.profile("m3-max"), 4)
        >>> p.vector_width, p.max_row_threads, p.register_bytes_per_thread
        (4, 1024, 128)
    """

    chip: str
    dtype_itemsize: int
    simd_width: int
    vector_width: int
    pointwise_vector_width: int
    pointwise_threadgroup_size: int
    pointwise_elements_per_thread: int
    pointwise_min_size: int
    short_row_limit: int
    short_row_threadgroup: int
    register_bytes_per_thread: int
    vector_row_register_bytes: int
    read_only_row_register_bytes: int
    prefetch_store_loads: bool
    max_row_threads: int
    preferred_row_threads: int
    unbounded_threads: int
    block_threads_per_core: int
    max_row_register_bytes: int
    threadgroup_memory_bytes: int
    core_threadgroup_memory_bytes: int
    cores: int

    def elements_per_thread(self, size: int) -> int:
        """Elements each thread of a pointwise kernel over ``size`` elements handles.

        Example:
            >>> from mlxtriton import hw
            >>> p = hw.params.derive(hw.profile("m1"), 4)
            >>> p.elements_per_thread(1000), p.elements_per_thread(1 << 20)
            (1, 2)
        """
        return self.pointwise_elements_per_thread if size >= self.pointwise_min_size else 1


def register_bytes_per_thread(profile: Profile) -> int:
    """Bytes of row data one thread may hold in registers on this chip (a tuning rule, not a
    limit: `mlxtriton.hw.tuning`'s ``row_data_bytes``, or on a chip whose profile gives its
    register file, a thread's share at full occupancy over ``row_data_register_share``).

    Example:
        >>> from mlxtriton import hw
        >>> [hw.params.register_bytes_per_thread(hw.profile(c)) for c in ("m2", "m3", "h200")]
        [64, 128, 64]
    """
    t = tuning(profile)
    if t.row_data_bytes is not None:
        return t.row_data_bytes
    return profile.registers_per_sm * 4 // profile.max_threads_per_sm // t.row_data_register_share


def _minimum(*values: int | None) -> int:
    return min(v for v in values if v is not None)


def derive(profile: Profile, dtype_itemsize: int, device: Profile | None = None) -> CodegenParams:
    """Code-generation parameters for kernels over ``dtype_itemsize``-byte elements on ``profile``.

    Decisions follow ``profile``. Where ``device`` (the GPU that will run the kernel) is given and
    differs, every hard limit is clamped to it: threads per threadgroup, threadgroup memory, vector
    width and register budget shrink to the smaller of the two, and reductions use the device's
    SIMD width. `mlxtriton.hw.target` pairs the two for you.

    Args:
        profile: The chip to tune for; must be a GPU profile.
        dtype_itemsize: Bytes per element (1, 2, 4 or 8); for a row kept resident, the size of the
            values kept (e.g. 4 when fp16 rows are accumulated and held as fp32).
        device: The GPU profile that runs the kernel, when it is not ``profile``.

    Returns:
        A frozen `CodegenParams`.

    Raises:
        ValueError: ``profile`` is the CPU profile (MLX's CPU backend runs no generated kernels), or
            ``dtype_itemsize`` is out of range.

    Example:
        >>> from mlxtriton import hw
        >>> p = hw.params.derive(hw.profile("m4-max"), 2)
        >>> p.vector_width, p.short_row_limit, p.short_row_threadgroup
        (4, 2048, 256)
    """
    if not profile.is_gpu:
        raise ValueError(f"{profile.name} runs no generated kernels (MLX's {profile.backend} backend); "
                         f"name a GPU chip, e.g. chip='m3' or chip='h200', to generate code for it")
    if dtype_itemsize not in _ITEMSIZES:
        raise ValueError(f"dtype_itemsize must be one of {_ITEMSIZES}, not {dtype_itemsize!r}")
    limits = [profile] if device is None or not device.is_gpu else [profile, device]

    # Reductions run on the hardware's SIMD-groups: their width is the running device's.
    simd = limits[-1].simd_width
    max_threads = _minimum(*(p.max_threads_per_threadgroup for p in limits))
    threadgroup_memory = _minimum(*(p.threadgroup_memory_max_bytes for p in limits))

    # Tuning follows the chip; on a register file shared by a threadgroup (NVIDIA), the rules
    # about it follow whichever of the two profiles has one.
    tuned = tuning(profile)
    # At most 4 lanes and 16 bytes per vector access: Metal and CUDA vector types stop at 4
    # components, and 16 B is the widest single load. Generated CUDA loads through its own
    # aligned struct (`mt_vec`), so a pointwise kernel there may take more lanes
    # (``pointwise_vector_lanes``); a row kernel takes ``row_vector_lanes``.
    lanes = _minimum(*(p.max_vector_lanes for p in limits), tuned.row_vector_lanes)
    vector_bytes = _minimum(*(p.max_vector_bytes for p in limits))
    type_lanes = [p.max_vector_lanes for p in limits if p.backend != "cuda"]
    pointwise_lanes = _minimum(*type_lanes, tuning(limits[-1]).pointwise_vector_lanes)
    pointwise_vector_width = max(1, min(pointwise_lanes, vector_bytes // dtype_itemsize))
    vector_width = max(1, min(lanes, vector_bytes // dtype_itemsize))

    # Pointwise: as many threads per threadgroup as the hardware allows (MLX does this on both
    # backends: the pipeline maximum on Metal, 1024 on CUDA), each handling a few bytes per operand.
    bytes_per_thread, min_size = tuned.pointwise_bytes_per_thread, tuned.pointwise_min_size
    pointwise_elements = max(1, bytes_per_thread // dtype_itemsize)

    registers = _minimum(*(register_bytes_per_thread(p) for p in limits))
    short_limit = tuned.short_row_limit
    max_row_threads = max(simd, max_threads // simd * simd)
    # NVIDIA: a threadgroup's threads share registers_per_sm (64 K on sm_90), so a thread of a
    # full-size row has registers_per_sm / max_row_threads of them (4 bytes each); a share of
    # them may hold row data (``row_data_register_share``).
    shared_file = [p for p in limits if p.registers_per_sm and p.backend == "cuda"]
    if shared_file:
        nv = tuning(shared_file[0])
        file = min(p.registers_per_sm for p in shared_file)
        max_row_registers = max(registers, file * 4 // max_row_threads // nv.row_data_register_share)
        preferred_row_threads = min(max_row_threads, nv.preferred_row_threads or max_row_threads)
        unbounded_threads = min(max_threads, file // nv.unbounded_thread_registers)
        vector_row_registers = max(4, registers // nv.vector_row_register_share)
        read_only_row_registers = registers * nv.read_only_row_register_share
        block_threads = file // nv.block_thread_registers
        prefetch = nv.prefetch_store_loads
    else:
        max_row_registers, preferred_row_threads, unbounded_threads = registers, max_row_threads, max_threads
        vector_row_registers = read_only_row_registers = registers
        block_threads = 0
        prefetch = False

    return CodegenParams(
        chip=profile.key,
        dtype_itemsize=dtype_itemsize,
        simd_width=simd,
        vector_width=vector_width,
        pointwise_vector_width=pointwise_vector_width,
        pointwise_threadgroup_size=max_threads,
        pointwise_elements_per_thread=pointwise_elements,
        pointwise_min_size=min_size,
        short_row_limit=short_limit,
        short_row_threadgroup=max(simd, min(tuned.short_row_threadgroup, max_threads) // simd * simd),
        register_bytes_per_thread=registers,
        vector_row_register_bytes=vector_row_registers,
        read_only_row_register_bytes=read_only_row_registers,
        prefetch_store_loads=prefetch,
        max_row_threads=max_row_threads,
        preferred_row_threads=preferred_row_threads,
        unbounded_threads=unbounded_threads,
        block_threads_per_core=block_threads,
        max_row_register_bytes=max_row_registers,
        threadgroup_memory_bytes=threadgroup_memory,
        core_threadgroup_memory_bytes=profile.shared_memory_per_sm_bytes or threadgroup_memory,
        cores=max(profile.gpu_cores or (1,)),  # the tuned-for chip's, like every decision
    )
