"""Hardware layer: code-generation parameters derived from a profile, each rule with its reason.

The kernel generator asks `derive` how to shape a kernel (threadgroup sizes, elements per thread,
vector width, reduction width, rows per threadgroup, how much of a row may stay on chip) and never
reads chip figures itself. Rules read profile fields only: a new chip is a table row, not a new rule.
May import the standard library and this layer's modules.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from mlxtriton.hw._profile import Profile

# --- Tuning constants, each from the MLX (or reference) kernels that measured it ---------------------

# backend -> (bytes of each operand one pointwise thread handles, array size from which it does so).
# Metal: MLX's elementwise kernels give each thread 8 bytes once n >= 65,536 (shared/reference/
#   apple-gpu.md, MLX get_work_per_thread); smaller arrays need every thread they can get.
# CUDA: MLX's unary/binary/ternary kernels read N_READS = 16 / sizeof(T) per thread at every size
#   (mlx/backend/cuda/unary.cu), one 16-byte access per thread (HOPPER.md: coalesced 16 B accesses).
_POINTWISE: dict[str, tuple[int, int]] = {"metal": (8, 65_536), "cuda": (16, 1)}

# backend -> longest row that gets one SIMD-group (warp) per row, reducing without threadgroup memory
# or barriers. Metal: MLX PR #3913 dispatches its simdgroup-per-row logsumexp for rows <= 2048 and
# measured 1.5x (fp32) to 2.8x (fp16) on M4 Max. CUDA: OneFlow's softmax (oneflow/core/cuda/
# softmax.cuh) uses its warp-per-row kernel for rows <= 1024.
_SHORT_ROW_LIMIT: dict[str, int] = {"metal": 2048, "cuda": 1024}

# Threads of a short-row threadgroup: MLX PR #3913 runs 8 rows per 256-thread threadgroup.
_SHORT_ROW_THREADGROUP = 256

# Threadgroup memory a row reduction keeps for partials: 8 bytes (two f32 partials, e.g. the max and
# the sum of an online softmax) per SIMD-group.
_SCRATCH_BYTES_PER_SIMDGROUP = 8

# 32-bit registers a thread may need, for the threadgroup size a kernel may launch without
# declaring a bound. MLX's cuda_kernel wrapper writes the signature without __launch_bounds__, so
# NVRTC may give a thread up to 255 registers, and a launch fails when threads x registers exceed
# the register file: "too many resources requested for launch" for a 1024-thread RMS norm x gate
# backward (benchmarks/results/backward_rows_h200_run1.json) and 65536-long bf16 rows
# (benchmarks/results/row_registers_h200_nobounds.json). Threadgroups up to registers_per_sm / 128
# (512 on the H200) have never failed; larger ones declare the bound in our header
# (`mlxtriton.codegen.dialects.CUDA.launch_bounds`), and NVRTC then keeps a 1024-thread kernel
# within 64 registers, spilling if it must. Not every kernel declares it: the bound changed
# NVRTC's code for a 512-thread cross-entropy over 4096x16384 float32 from 3709-3715 to
# 3478-3487 GB/s in two runs each (benchmarks/results/: unbounded in row_registers_h200_nobounds
# and row_kernels_h200_fastexp, bounded in row_registers_h200_bounds_all ("t512") and
# row_kernels_h200_bounds_all).
_UNBOUNDED_THREAD_REGISTERS = 128

# Fraction of a full-size row thread's registers that may hold row data (one half): the rest keeps
# indices, accumulators, kept values and the loads of an unrolled pass.
_ROW_DATA_REGISTER_SHARE = 2

# Threads per row a row kernel takes before more, on a GPU whose threadgroup shares one register
# file: a row that fits the registers of this many threads, and any row of a kernel that reads
# its rows in one pass (an online max-and-sum: a cross-entropy), takes no more. Measured on the
# H200 (benchmarks/results/row_registers_h200_bounds_all.json): rows that miss the registers of 512 threads
# run 1.04-1.45x faster at 1024 (float32 softmax 2048x32768 2628 -> 3589 GB/s, layer norm 3102
# -> 3829; bfloat16 softmax 2048x32768 2375 -> 2920); rows that fit 512 lost up to 5% at 1024
# (float32 4096x16384 layer norm 3859 -> 3680; RMS norm x gate 3701 -> 3472 between the tables
# row_kernels_h200_fastexp and row_kernels_h200_bounds_all); one-pass
# cross-entropy ran 3527 against 3178 at 2048x32768 and 3484 against 3162 at 1536x40960.
_PREFERRED_ROW_THREADS = 512

# On a GPU whose threadgroup shares one register file, a multi-pass row kernel that also reads a
# vector along the row (a norm's weight and bias) gives each thread this fraction of the row
# data a plain row would get: twice the threads, half the elements each. Measured on the H200,
# kernels alone (benchmarks/results/kernel_only_h200_session12_short.json and the earlier
# kernel_only_h200.json; GB/s, 16 -> 8 registers of row data): bfloat16 layer norm 3338 -> 3486
# (32768x1024), 3402 -> 3534 (16384x2048), 3687 -> 3846 (8192x8192), 3628 -> 3764 (4096x16384);
# bfloat16 RMS norm x gate 3046 -> 3294, 3030 -> 3298, 3290 -> 3446, 3244 -> 3382; float32 RMS
# norm x gate 3984 -> 4065, 3970 -> 4074, 3511 -> 3911; float32 layer norm level. Softmax and
# cross-entropy, which read no such vector, lost with it (bfloat16 softmax 32768x4096 4044 ->
# 3754, cross-entropy 2582 -> 2460).
_VECTOR_ROW_REGISTER_SHARE = 2

# On such a GPU, a row kernel of a half type that writes nothing per element (cross-entropy's
# forward: it reads the rows and writes one loss each) may hold this many times the row data a
# plain row holds per thread, over the row lengths codegen/builder.READ_ONLY_HALF_ROWS gives
# (half the threads: with no row to write, more of the row in flight per thread keeps the
# memory busy). Measured on the H200 (benchmarks/results/kernel_only_h200_session13_ce_long.json,
# row_kernels_h200_session13_read_only_rows.json): bf16 cross-entropy through MLX 32768x4096
# 3686 -> 3915 GB/s, 8192x8192 3307 -> 3411, 4096x16384 2916 -> 3354.
_READ_ONLY_ROW_REGISTER_SHARE = 2

# On such a GPU, a row kernel whose rows stay in registers loads an input that only its write
# pass reads (the gate of RMS norm x SiLU gate) during its first pass, into registers, so that
# its latency overlaps the row's own loads instead of following the reductions' barriers
# (codegen/builder.PREFETCH_STORE_LOADS). Measured on the H200, one run with it off
# (benchmarks/results/kernel_only_h200_session14_prefetch.json, kernels alone, GB/s off -> on):
# bf16 RMS norm x gate 65536x512 3452 -> 3652, 32768x1024 3351 -> 3507, 16384x2048 3319 ->
# 3475, 32768x4096 3720 -> 3989, 8192x8192 3453 -> 3708; float32 4096x16384 3722 -> 3922, the
# others within 1%; through MLX (row_kernels_h200_session14_prefetch.json) bf16 32768x4096 3581
# -> 3976 (2.95x mx.compile), float32 4096x16384 3668 -> 3849. A threadgroup of 1024 threads
# (bf16 rows of 16384) lost 12-13% with it (benchmarks/prefetch_probe.py,
# prefetch_probe_h200_session14.json), so it keeps none.
# Mixed: float32 4096x16384 eight calls per evaluation 3913 -> 3720
# (calls_per_eval_h200_session13_all.json -> calls_per_eval_h200_session14_gate.json), where
# one per evaluation gained 3676 -> 3851; bf16 gained both ways.
_PREFETCH_STORE_LOADS = True

_ITEMSIZES = (1, 2, 4, 8)

# Most lanes of a generated CUDA vector of a pointwise kernel (`mt_vec`; see derive): the widest measured.
_CUDA_VECTOR_LANES = 8


# Registers a thread of a kernel walking blocks of rows (block column sums) may take, whatever
# its threadgroup size: its launch bound asks for registers_per_sm / this threads per SM (1024
# on the H200; a 1024-thread threadgroup gets exactly this from its bound alone). Such a kernel
# walks its rows one after another, so it hides latency only with threads that stay resident.
# Measured on the H200 (benchmarks/results/block_sums_h200_minthreads.json, backward row kernels
# alone at 32768x4096): with 256- and 512-thread threadgroups asking for 1024 threads per SM,
# bf16 RMS norm x gate 652 -> 590 us (102 registers, 2 threadgroups per SM -> 64, 4), bf16 RMS
# norm 226 -> 211, f32 gate 860 -> 830, the other three within 2%; 768 threads per SM lost up
# to 19%, 1536 up to 60% (spills).
_BLOCK_THREAD_REGISTERS = 64

# Registers per thread a row kernel's block column sums may take (a weight gradient's partial
# sums over blocks of rows, fusion/partials.py): past them the row takes more threads, and a row
# that would need more than its most threads hold gets no block sums. Measured on the H200
# (benchmarks/results/backward_rows_h200_partials.json, 32 registers of them at 128 threads): a
# bf16 RMS norm x gate backward at 32768x4096 ran 1792 GB/s against 2190 without block sums,
# and a float32 layer norm over rows of 16384 (64 registers at 512 threads) failed to launch.
BLOCK_SUM_REGISTERS = 16


@dataclass(frozen=True)
class CodegenParams:
    """How to shape kernels for one chip, element size and (optionally) row length.

    Attributes:
        chip: Key of the profile the decisions follow (e.g. ``"m3-max"``).
        dtype_itemsize: Bytes per element these parameters are for.
        simd_width: Lanes of a SIMD-group / warp: the width of ``simd_sum`` / shuffle reductions.
        vector_width: Elements per vector load or store of a row kernel (at most 4 lanes and 16 bytes).
        pointwise_vector_width: The same for pointwise kernels (on CUDA up to 8 lanes of 16 bytes).
        pointwise_threadgroup_size: Threads per threadgroup of a pointwise kernel.
        pointwise_elements_per_thread: Elements each pointwise thread handles on large arrays.
        pointwise_min_size: Arrays smaller than this get one element per thread.
        short_row_limit: Rows up to this length take one SIMD-group each.
        row_length: The row length these row parameters are for, or None (unknown until run time).
        row_threadgroup_size: Threads per threadgroup of a row kernel.
        threads_per_row: Threads that cooperate on one row.
        rows_per_threadgroup: Rows one threadgroup handles (more than one for short rows).
        row_elements_per_thread: Elements of a row each thread handles, when the length is known.
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
            see ``_VECTOR_ROW_REGISTER_SHARE``), the same elsewhere (not measured).
        read_only_row_register_bytes: ``register_bytes_per_thread`` for a row kernel of a half
            type that writes nothing per element (a cross-entropy): twice on NVIDIA (measured,
            see ``_READ_ONLY_ROW_REGISTER_SHARE``), the same elsewhere (not measured).
        prefetch_store_loads: Whether a row kernel holding its rows in registers loads inputs
            only its write pass reads during its first pass: on NVIDIA (measured, see
            ``_PREFETCH_STORE_LOADS``), not elsewhere (not measured).
        max_row_register_bytes: Bytes of row data a thread of a capped row may keep, when the cap
            left it more elements than ``register_bytes_per_thread`` holds: on a GPU whose
            threadgroup shares one register file (NVIDIA), half of what each of
            ``max_row_threads`` threads gets of it.
        threadgroup_memory_bytes: Most threadgroup memory a kernel may request. On CUDA, above the
            profile's ``threadgroup_memory_bytes`` (48 KB) it must be dynamic shared memory.
        reduction_scratch_bytes: Threadgroup memory a row threadgroup keeps for reduction partials.
        core_threadgroup_memory_bytes: Threadgroup memory one core (SM) holds for all its
            resident threadgroups: a threadgroup taking more than half leaves it one at a time.
            Apple does not publish it; the per-threadgroup figure stands in.
        cores: GPU cores (Apple) or streaming multiprocessors (NVIDIA), of the largest bin that
            ships: a kernel of fewer threadgroups leaves cores idle.
        resident_budget_bytes: On-chip bytes available to keep *one row* resident across passes
            (registers of its threads plus the threadgroup memory left after the scratch), so a
            softmax or norm reads the row from memory once instead of once per pass.
        row_resident: Whether ``row_length`` elements fit in ``resident_budget_bytes`` (None when
            the length is unknown).

    Example:
        >>> from mlxtriton import hw
        >>> p = hw.params.derive(hw.profile("m3-max"), 4, row_length=4096)
        >>> p.vector_width, p.threads_per_row, p.row_resident
        (4, 1024, True)
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
    row_length: int | None
    row_threadgroup_size: int
    threads_per_row: int
    rows_per_threadgroup: int
    row_elements_per_thread: int | None
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
    reduction_scratch_bytes: int
    core_threadgroup_memory_bytes: int
    cores: int
    resident_budget_bytes: int
    row_resident: bool | None

    @property
    def short_rows(self) -> bool | None:
        """Whether the row kernel is the one-SIMD-group-per-row kind (None when the length is unknown)."""
        return None if self.row_length is None else self.row_length <= self.short_row_limit

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
    """Bytes of row data one thread may hold in registers on this chip (a tuning rule, not a limit).

    Example:
        >>> from mlxtriton import hw
        >>> [hw.params.register_bytes_per_thread(hw.profile(c)) for c in ("m2", "m3", "h200")]
        [64, 128, 64]
    """
    if profile.registers_per_sm and profile.max_threads_per_sm:
        # NVIDIA: at full occupancy a thread has registers_per_sm / max_threads_per_sm registers
        # (32 on sm_90). Row data may take half of them; the kernel's indices and accumulators the rest.
        return profile.registers_per_sm * 4 // profile.max_threads_per_sm // 2
    if profile.dynamic_caching:
        # Apple9+: Dynamic Caching allocates registers at run time from one on-chip pool instead of
        # reserving the compiled worst case, so a register-heavy kernel loses less occupancy: 32
        # registers of row data.
        return 128
    # Apple7/8 (and any chip whose caching is unknown): the compiled worst case sets occupancy, and
    # the high-register path costs an M1 Max ~60% of its threads per core (apple-gpu.md): 16 registers.
    return 64


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _minimum(*values: int | None) -> int:
    return min(v for v in values if v is not None)


def derive(profile: Profile, dtype_itemsize: int, row_length: int | None = None,
           device: Profile | None = None) -> CodegenParams:
    """Code-generation parameters for kernels over ``dtype_itemsize``-byte elements on ``profile``.

    Decisions follow ``profile``. Where ``device`` (the GPU that will run the kernel) is given and
    differs, every hard limit is clamped to it: threads per threadgroup, threadgroup memory, vector
    width and register budget shrink to the smaller of the two, and reductions use the device's
    SIMD width. `mlxtriton.hw.target` pairs the two for you.

    Args:
        profile: The chip to tune for; must be a GPU profile.
        dtype_itemsize: Bytes per element (1, 2, 4 or 8); for a row kept resident, the size of the
            values kept (e.g. 4 when fp16 rows are accumulated and held as fp32).
        row_length: Length of the reduced (last) axis of a row kernel, if known.
        device: The GPU profile that runs the kernel, when it is not ``profile``.

    Returns:
        A frozen `CodegenParams`.

    Raises:
        ValueError: ``profile`` is the CPU profile (MLX's CPU backend runs no generated kernels), or
            ``dtype_itemsize`` / ``row_length`` is out of range.

    Example:
        >>> from mlxtriton import hw
        >>> p = hw.params.derive(hw.profile("m4-max"), 2, row_length=512)
        >>> p.threads_per_row, p.rows_per_threadgroup, p.row_threadgroup_size
        (32, 8, 256)
    """
    if not profile.is_gpu:
        raise ValueError(f"{profile.name} runs no generated kernels (MLX's {profile.backend} backend); "
                         f"name a GPU chip, e.g. chip='m3' or chip='h200', to generate code for it")
    if dtype_itemsize not in _ITEMSIZES:
        raise ValueError(f"dtype_itemsize must be one of {_ITEMSIZES}, not {dtype_itemsize!r}")
    if row_length is not None:
        try:
            length = operator.index(row_length)  # ints of any kind (numpy's too), not floats
        except TypeError:
            length = 0
        if length < 1:
            raise ValueError(f"row_length must be a positive int or None, not {row_length!r}")
        row_length = length
    limits = [profile] if device is None or not device.is_gpu else [profile, device]

    # Reductions run on the hardware's SIMD-groups: their width is the running device's.
    simd = limits[-1].simd_width
    max_threads = _minimum(*(p.max_threads_per_threadgroup for p in limits))
    threadgroup_memory = _minimum(*(p.threadgroup_memory_max_bytes for p in limits))

    # At most 4 lanes and 16 bytes per vector access: Metal and CUDA vector types stop at 4
    # components, and 16 B is the widest single load (the seed's 8-wide vectors do not exist).
    # Generated CUDA loads through its own aligned struct (`mt_vec`), so a pointwise kernel
    # there takes 16 bytes of a 2-byte type as one vector (8 lanes): the bfloat16 pointwise
    # chain ran 2969 -> 3560 GB/s on the H200. Row kernels stay at 4 lanes: 8 moved most bf16
    # rows within 2%, long ones up by 2-7%, but cross-entropy over rows of 512-2048 down by
    # 18-35% (benchmarks/results/row_vectors_h200.json, row_kernels_h200_bf16_v8.json against
    # row_kernels_h200_session5.json).
    lanes = _minimum(*(p.max_vector_lanes for p in limits))
    vector_bytes = _minimum(*(p.max_vector_bytes for p in limits))
    type_lanes = [p.max_vector_lanes for p in limits if p.backend != "cuda"]
    pointwise_lanes = _minimum(*type_lanes) if type_lanes else _CUDA_VECTOR_LANES
    pointwise_vector_width = max(1, min(pointwise_lanes, vector_bytes // dtype_itemsize))
    vector_width = max(1, min(lanes, vector_bytes // dtype_itemsize))

    # Pointwise: as many threads per threadgroup as the hardware allows (MLX does this on both
    # backends: the pipeline maximum on Metal, 1024 on CUDA), each handling a few bytes per operand.
    bytes_per_thread, min_size = _POINTWISE[profile.backend]
    pointwise_elements = max(1, bytes_per_thread // dtype_itemsize)

    registers = _minimum(*(register_bytes_per_thread(p) for p in limits))
    short_limit = _SHORT_ROW_LIMIT[profile.backend]
    max_row_threads = max(simd, max_threads // simd * simd)
    # NVIDIA: a threadgroup's threads share registers_per_sm (64 K on sm_90), so a thread of a
    # full-size row has registers_per_sm / max_row_threads of them (4 bytes each); half may hold
    # row data (see _ROW_DATA_REGISTER_SHARE).
    files = [p.registers_per_sm for p in limits if p.registers_per_sm and p.backend == "cuda"]
    if files:
        max_row_registers = max(registers, min(files) * 4 // max_row_threads // _ROW_DATA_REGISTER_SHARE)
        preferred_row_threads = min(max_row_threads, _PREFERRED_ROW_THREADS)
        unbounded_threads = min(max_threads, min(files) // _UNBOUNDED_THREAD_REGISTERS)
        vector_row_registers = max(4, registers // _VECTOR_ROW_REGISTER_SHARE)
        read_only_row_registers = registers * _READ_ONLY_ROW_REGISTER_SHARE
        block_threads = min(files) // _BLOCK_THREAD_REGISTERS
        prefetch = _PREFETCH_STORE_LOADS
    else:
        max_row_registers, preferred_row_threads, unbounded_threads = registers, max_row_threads, max_threads
        vector_row_registers = read_only_row_registers = registers
        block_threads = 0
        prefetch = False

    if row_length is not None and row_length <= short_limit:
        # Short rows: one SIMD-group per row, several rows per threadgroup; reductions stay inside
        # the SIMD-group, so no threadgroup memory and no barriers (MLX PR #3913: 1.5-2.8x on M4 Max).
        # The row can be resident only in the SIMD-group's registers.
        threads_per_row = simd
        row_threadgroup = max(simd, min(_SHORT_ROW_THREADGROUP, max_threads) // simd * simd)
        rows_per_threadgroup = row_threadgroup // simd
        scratch_bytes = 0
        budget = registers * simd
    else:
        # Long rows: one threadgroup per row, enough threads that each reads one vector per pass,
        # in whole SIMD-groups, up to the hardware maximum (MLX's softmax: ceil(n / 4) threads
        # rounded up to 32, at most 1024). Unknown length: the maximum.
        wanted = max_threads if row_length is None else -(-row_length // vector_width)
        threads_per_row = min(max_row_threads, max(simd, _round_up(wanted, simd)))
        row_threadgroup = threads_per_row
        rows_per_threadgroup = 1
        scratch_bytes = _SCRATCH_BYTES_PER_SIMDGROUP * (row_threadgroup // simd)
        # Registers of every thread plus the threadgroup memory left after the partials; a row
        # capped below the threads it wanted holds more per thread.
        per_thread = registers if wanted <= max_row_threads else max_row_registers
        budget = per_thread * threads_per_row + threadgroup_memory - scratch_bytes

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
        row_length=row_length,
        row_threadgroup_size=row_threadgroup,
        threads_per_row=threads_per_row,
        rows_per_threadgroup=rows_per_threadgroup,
        row_elements_per_thread=None if row_length is None else -(-row_length // threads_per_row),
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
        reduction_scratch_bytes=scratch_bytes,
        core_threadgroup_memory_bytes=profile.shared_memory_per_sm_bytes or threadgroup_memory,
        cores=max(profile.gpu_cores or (1,)),  # the tuned-for chip's, like every decision
        resident_budget_bytes=budget,
        row_resident=None if row_length is None else row_length * dtype_itemsize <= budget,
    )
