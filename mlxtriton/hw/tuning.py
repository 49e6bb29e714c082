"""Hardware layer: tuning data, the rules fitted to measurements, one table row per architecture.

A schedule's hard limits come from the chip profile (`mlxtriton.hw.params.derive`); which of the
legal schedules a kernel gets by default follows the numbers here. Every field carries one line of
reason and the evidence behind it: a results file under ``benchmarks/results/`` where the rule was
measured on that architecture, a reference kernel's source where it follows one, or "not measured"
where it is a carried-over guess (the tuner, `mlxtriton.runtime.tuner`, measures instead).
May import the standard library and this layer's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mlxtriton.hw._profile import Profile

# Where no measurement exists: the value is a guess the tuner may overturn on the chip.
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Evidence:
    """Why a tuning field has its value: ``reason`` in one line, ``source`` the results file
    (``benchmarks/results/...``), the reference kernel it follows, or `NOT_MEASURED`."""

    reason: str
    source: str


@dataclass(frozen=True)
class Tuning:
    """The default-schedule rules of one GPU architecture (`tuning` finds a chip's).

    Attributes:
        architecture: The row's key, e.g. ``"sm_90"``.
        families: The profile families it serves.
        pointwise_bytes_per_thread: Bytes of each operand one pointwise thread handles.
        pointwise_min_size: Pointwise kernels over fewer elements take one element per thread.
        pointwise_vector_lanes: Most lanes of a pointwise vector (None: the vector types' limit).
        row_vector_lanes: Most lanes of a row kernel's vector.
        wide_small_operands: Whether a pointwise operand smaller than the domain (broadcast, read
            from cache) may take two vector loads, so that it does not narrow the vector.
        short_row_limit: Rows up to this length may take one SIMD-group each.
        short_row_threadgroup: Threads of a threadgroup holding several short rows.
        row_data_bytes: Bytes of row data a thread may hold in registers (None: from the register
            file, ``row_data_register_share``).
        row_data_register_share: On a chip whose profile gives its register file: row data takes
            1 / this of a thread's registers at full occupancy.
        preferred_row_threads: Threads per row a row kernel takes before more (None: the
            threadgroup maximum).
        vector_row_register_share: A multi-pass row that also reads a vector along the row (a
            norm's weight) holds 1 / this of the row data per thread.
        vector_row_past_preferred: Whether such a row of a half type passes
            ``preferred_row_threads`` where half its elements per thread miss their registers.
        read_only_row_register_share: A half-precision row kernel writing nothing per element (a
            cross-entropy) holds this many times the row data per thread...
        read_only_half_rows: ...over row lengths in (low, high] ((0, 0): never)...
        read_only_rows_per_core: ...where its rows fill every core this many times.
        prefetch_store_loads: Whether a row kernel holding its rows in registers loads, during
            its first pass, inputs only its write pass reads.
        kept_registers_ratio: Registers row data and computed values kept between passes may take
            together, over the row data's own.
        cap_kept_at_widest: Whether a row at the widest threadgroup keeps at most 1.5x its capped
            row data in registers.
        widen_held_rows: Whether a row kernel whose register arrays exceed twice the capped row
            data takes twice ``preferred_row_threads``.
        unbounded_thread_registers: Threadgroups of more than register file / this threads
            declare a launch bound (None: never).
        block_thread_registers: A kernel walking blocks of rows declares room for register file /
            this threads per core (None: no bound).
        block_sum_registers: Registers per thread a row kernel's block column sums may take.
        block_sums_shared_when_bounded: Whether a threadgroup above the unbounded size that also
            keeps computed values holds its block sums in threadgroup memory.
        stage_min_reads: Passes over memory a streamed input must cost before it is staged in
            threadgroup memory that leaves one threadgroup per core.
        column_lane_elements: Elements each lane of a split column reduction reduces at least.
        column_centred_threads: Threads per threadgroup of a column reduction that reads its
            input once only through a one-pass variance (`sqdev`, whose lanes merge by a formula).
        column_held_elements: A column reduction read in several passes holds its column in
            registers, this many elements a lane, where that takes at most...
        column_held_threads: ...this many threads per threadgroup (0: never held by default).
        column_min_group: Fewest neighbouring columns a column reduction's threadgroup takes.
        split_groups_per_core: Threadgroups per core a reduction split in two levels, or a
            column sum kept in blocks of rows, aims for.
        split_min_bytes: Reductions over fewer bytes of input stay one level.
        arg_split_min_bytes: The same for an argmax / argmin (three kernels once split).
        split_min_segment: Elements each first-level row of a split keeps at least.
        stream_unroll: Chunks of a streamed row a thread's loop unrolls.
        online_chunked: Whether an online max-and-sum rescales once per vector (else per element).
        hoist_row_loads: Whether a row's own scalars no reduction feeds are read before its passes.
        hoist_block_loads: Whether a threadgroup walking a block of rows loads what its rows share
            once, before them.
        norms_generated_at_least_as_fast: Row norms (``"RMSNorm"``, ``"LayerNorm"``) whose
            generated kernel runs at least as fast as MLX's fast op: with the fuse stage to
            follow, the patterns stage leaves them decomposed for it.
        norms_generated_faster: ...and clearly faster: a fast-op primitive of a GPU trace is
            decomposed for the fuse stage.
        attention_split_keys: Attention at decode over more keys than this splits each query
            row's keys over...
        attention_key_blocks: ...this many threadgroups of...
        attention_block_simd_groups: ...this many SIMD groups each, and merges their partial
            results in a second kernel.
        resident_saves_statistics: Whether a row kernel holding its rows in registers and
            computing a logsumexp saves its row statistics for a backward that would otherwise
            reduce the row again (rows streamed from memory always save them).
        projection_max_rows: Products of x of at most this many rows by weight matrices (a
            decode step's projections) run as the projection kernel, those reading one x as one
            launch (0: never; MLX's own matrix-vector kernels run them)...
        projection_lone_rows: ...and a product alone on its x up to this many rows...
        projection_quantized: ...and whether affine-quantized products do too (else MLX's
            quantized kernels run them).
        projection_epilogues: Whether a SwiGLU gate of two of a projection region's products,
            and a product's RoPE (attention's q and k), are outputs of its kernel (else each
            is a kernel of its own).
        projection_columns_one_row: The projection kernel's output columns per SIMD group for
            x of one row...
        projection_columns: ...for x of several rows...
        projection_simd_groups: ...its SIMD groups per threadgroup...
        projection_unroll: ...and the 16-byte vectors of a weight row each lane has in flight.
        evidence: ``(field, Evidence)`` for every field above.
    """

    architecture: str
    families: tuple[str, ...]
    pointwise_bytes_per_thread: int
    pointwise_min_size: int
    pointwise_vector_lanes: int | None
    row_vector_lanes: int
    wide_small_operands: bool
    short_row_limit: int
    short_row_threadgroup: int
    row_data_bytes: int | None
    row_data_register_share: int
    preferred_row_threads: int | None
    vector_row_register_share: int
    vector_row_past_preferred: bool
    read_only_row_register_share: int
    read_only_half_rows: tuple[int, int]
    read_only_rows_per_core: int
    prefetch_store_loads: bool
    kept_registers_ratio: int
    cap_kept_at_widest: bool
    widen_held_rows: bool
    unbounded_thread_registers: int | None
    block_thread_registers: int | None
    block_sum_registers: int
    block_sums_shared_when_bounded: bool
    stage_min_reads: int
    column_lane_elements: int
    column_centred_threads: int
    column_held_elements: int
    column_held_threads: int
    column_min_group: int
    split_groups_per_core: int
    split_min_bytes: int
    arg_split_min_bytes: int
    split_min_segment: int
    stream_unroll: int
    online_chunked: bool
    hoist_row_loads: bool
    hoist_block_loads: bool
    norms_generated_at_least_as_fast: frozenset[str]
    norms_generated_faster: frozenset[str]
    attention_split_keys: int
    attention_key_blocks: int
    attention_block_simd_groups: int
    resident_saves_statistics: bool
    projection_max_rows: int
    projection_lone_rows: int
    projection_quantized: bool
    projection_epilogues: bool
    projection_columns_one_row: int
    projection_columns: int
    projection_simd_groups: int
    projection_unroll: int
    evidence: tuple[tuple[str, Evidence], ...] = ()

    def why(self, field: str) -> Evidence:
        """The reason and evidence of one field.

        Example:
            >>> from mlxtriton import hw
            >>> hw.tuning.tuning(hw.profile("h200")).why("preferred_row_threads").source
            'benchmarks/results/row_registers_h200_bounds_all.json'
        """
        for name, e in self.evidence:
            if name == field:
                return e
        raise KeyError(f"{self.architecture} has no tuning field {field!r}")


TUNED_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(Tuning) if f.name not in ("architecture", "families", "evidence"))


def _row(architecture: str, families: tuple[str, ...], **rules: tuple[Any, str, str]) -> Tuning:
    """One table row: every field given as (value, reason, evidence source)."""
    missing = set(TUNED_FIELDS) - set(rules)
    extra = set(rules) - set(TUNED_FIELDS)
    if missing or extra:
        raise ValueError(f"tuning row {architecture}: missing {sorted(missing)}, unknown {sorted(extra)}")
    return Tuning(architecture, families, **{k: v for k, (v, _, _) in rules.items()},
                  evidence=tuple((k, Evidence(reason, source))
                                 for k, (_, reason, source) in sorted(rules.items())))


_R = "benchmarks/results/"

# NVIDIA Hopper: every rule measured on the H200 or the H100 through MLX 0.32's CUDA backend.
SM_90 = _row(
    "sm_90", ("sm_90",),
    pointwise_bytes_per_thread=(16, "MLX's CUDA unary/binary kernels read N_READS = 16 / sizeof(T) "
                                    "per thread at every size", "mlx/backend/cuda/unary.cu"),
    pointwise_min_size=(1, "MLX's CUDA kernels vectorize at every size", "mlx/backend/cuda/unary.cu"),
    pointwise_vector_lanes=(8, "generated CUDA loads 16 bytes of a 2-byte type as one aligned struct: "
                               "bf16 pointwise chain 2969 -> 3560 GB/s", _R + "row_kernels_h200_pointwise.json"),
    row_vector_lanes=(4, "8 lanes moved most bf16 rows within 2% but cross-entropy over rows of "
                         "512-2048 down 18-35%", _R + "row_vectors_h200.json"),
    wide_small_operands=(True, "cross-entropy's backward one-hot compares bf16 rows with an int32 "
                               "index read from cache: 8 lanes, not 4", NOT_MEASURED),
    short_row_limit=(1024, "OneFlow's warp-per-row softmax serves rows up to 1024",
                     "oneflow/core/cuda/softmax.cuh"),
    short_row_threadgroup=(256, "MLX PR #3913 runs 8 rows per 256-thread threadgroup", "MLX PR #3913"),
    row_data_bytes=(None, "from the register file: registers_per_sm / max_threads_per_sm", "profile"),
    row_data_register_share=(2, "row data takes half a thread's registers at full occupancy; "
                                "indices, accumulators and loads in flight the rest",
                             _R + "row_registers_h200_bounds_all.json"),
    preferred_row_threads=(512, "rows that fit 512 threads' registers lost up to 5% at 1024; rows "
                                "that miss them gain 4-45% there", _R + "row_registers_h200_bounds_all.json"),
    vector_row_register_share=(2, "bf16 layer norm and RMS norm x gate +3-11% with half the row data "
                                  "per thread; softmax lost", _R + "kernel_only_h200_short.json"),
    vector_row_past_preferred=(True, "bf16 norms over 16384 +2-4% at 1024 threads; float32 lost",
                               _R + "row_kernels_h200_past_preferred.json"),
    read_only_row_register_share=(2, "bf16 cross-entropy +3-15% holding twice the row data",
                                  _R + "kernel_only_h200_ce_long.json"),
    read_only_half_rows=((2048, 16384), "gains measured over 4096-16384; rows of 2048 lost",
                         _R + "kernel_only_h200_ce_short.json"),
    read_only_rows_per_core=(16, "every measured shape filled each SM 16 times; a split "
                                 "reduction's few hundred segments would leave SMs idle",
                             _R + "row_kernels_h200_read_only_rows.json"),
    prefetch_store_loads=(True, "bf16 RMS norm x gate +5-11%: the gate's loads overlap the row's",
                          _R + "kernel_only_h200_prefetch.json"),
    kept_registers_ratio=(2, "keeping exp(x - max) of a bf16 softmax beat recomputing it: 3955 "
                             "against 3266 GB/s", _R + "row_variants_h200.json"),
    cap_kept_at_widest=(True, "64 registers of held values spilled at 1024 threads: the gate "
                              "backward 1048 against 559 us", _R + "backward_capkept_kernels_h200.json"),
    widen_held_rows=(True, "float32 softmax backward over 16384 holding 96 registers of arrays: "
                           "2139 -> 2659 GB/s at 1024 threads", _R + "backward_preferred_threads_h200.json"),
    unbounded_thread_registers=(128, "1024 threads without a declared bound failed to launch "
                                     "(too many resources); 512 never did", _R + "backward_rows_h200_run1.json"),
    block_thread_registers=(64, "256- and 512-thread block kernels asking for 1024 threads per SM "
                                "ran up to 10% faster", _R + "block_sums_h200_minthreads.json"),
    block_sum_registers=(16, "32 registers of block sums at 128 threads ran 1792 against 2190 GB/s "
                             "without them", _R + "backward_rows_h200_partials.json"),
    block_sums_shared_when_bounded=(True, "gate backward over 16384 spilled in registers: f32 581 "
                                          "-> 454 us in threadgroup memory", _R + "block_sums_h200_shared.json"),
    stage_min_reads=(3, "a layer norm staged gained 29-52%; a softmax lost where one threadgroup "
                        "filled an SM", _R + "staging_h200.json"),
    column_lane_elements=(16, "32 lanes x 32 columns summed 32768x4096 at 4218 GB/s against 1066 "
                              "with a thread per column", _R + "column_variants_h200.json"),
    column_min_group=(8, "8 float32 columns are one 32-byte sector: 512 columns of 65536 at 2536 "
                         "GB/s with 128 lanes x 8", _R + "column_variants_h200.json"),
    column_centred_threads=(256, "NHWC batch-norm statistics' one-pass first level (bf16, 16384 "
                                  "columns of 2048) at 8 lanes x 32 columns: 1979 GB/s against "
                                  "1480 at 32 x 32", _R + "sweep_bn_h100.json"),
    column_held_elements=(64, "softmax over axis 0 of 4096x16384 f32 with its column in "
                              "registers, 64 lanes x 8 columns: 2128 GB/s against 1479 streamed",
                          _R + "sweep_softmax0_h100.json"),
    column_held_threads=(512, "the same sweep: 64 x 16 columns held spilled (769 GB/s)",
                         _R + "sweep_softmax0_h100.json"),
    split_groups_per_core=(4, "an SM holds four 512-thread blocks: several resident keep loads in "
                              "flight to cover memory latency", NOT_MEASURED),
    split_min_bytes=(1 << 20, "a sum of squares over 1 MiB took 15.7 us in one threadgroup, 16.9 "
                              "split; over 2 MiB 24.1 and 19.1", _R + "split_threshold_h200.json"),
    arg_split_min_bytes=(1 << 19, "an argmax over 512 KiB took 34.8 us in one threadgroup, 27.9 "
                                  "split; over 256 KiB 23.5 and 26.3", _R + "split_threshold_h200.json"),
    split_min_segment=(4096, "a first-level row keeps a row's worth of work for its threadgroup",
                       NOT_MEASURED),
    stream_unroll=(1, "unrolling the streamed loop moved nothing beyond noise",
                   _R + "stream_unroll_h200.json"),
    online_chunked=(True, "an online max-and-sum rescaling once per vector beat per element",
                    _R + "stream_unroll_h200.json"),
    hoist_row_loads=(True, "bf16 cross-entropy forward 3203 -> 3334 GB/s with its label read first",
                     _R + "ce_hoist_h200.json"),
    hoist_block_loads=(True, "bf16 RMS norm backward 265 -> 224 us loading the weight once per "
                             "block", _R + "block_sums_h200.json"),
    norms_generated_at_least_as_fast=(frozenset({"RMSNorm", "LayerNorm"}), "32768 x 4096: RMS norm f32 271 "
                                      "us generated against 270 us mx.fast.rms_norm, bf16 136 against 136",
                                      _R + "row_kernels_h200_quick.json"),
    norms_generated_faster=(frozenset({"LayerNorm"}), "32768 x 4096: layer norm f32 271 us generated "
                            "against 684 us mx.fast.layer_norm, bf16 136 against 324",
                            _R + "row_kernels_h200_quick.json"),
    attention_split_keys=(1024, "MLX's sdpa_vector splits past 1024 keys; at 2304 keys (8B, prompt "
                                "2048) attention took 565 us a step split, 2479 in one block",
                          _R + "decode_kernels_h100_p2048.json"),
    attention_key_blocks=(32, "MLX's two-pass kernel: 32 blocks a row",
                          "mlx/backend/cuda/scaled_dot_product_attention.cu"),
    attention_block_simd_groups=(8, "MLX's two-pass kernel: 8 warps a block",
                                 "mlx/backend/cuda/scaled_dot_product_attention.cu"),
    resident_saves_statistics=(True, "log-softmax forward + backward: bf16 2955 GB/s saving against "
                                     "2262 recomputing; cross-entropy, whose backward is then pointwise, "
                                     "recomputes", _R + "backward_rows_h200_saves.json"),
    projection_max_rows=(8, "8 rows of x: q/k/v as one launch 20.5 us against MLX's three 49.1 "
                            "(1B), 31.4 against 57.6 (8B) in projections_h100.json; 8B batch-8 "
                            "step 7.97 ms with every region in the kernel, 10.27 with gate/up and "
                            "q/k/v left to MLX", _R + "generation_h100_b8_rows.json"),
    projection_lone_rows=(1, "one row: a lone product level with MLX's matrix-vector kernel (8B "
                             "down 46.7 against 46.8 us, output head 174.2 against 174.4); at 8 "
                             "rows slower (8B down 61.0 against 50.2)", _R + "projections_h100.json"),
    projection_quantized=(True, "8B 4-bit step 3.75 ms with quantized projections against plain "
                                "mlx-lm's 5.80 (1.55x; 1.02x with MLX's quantized kernels in an "
                                "earlier run); 1B 4-bit 2.00 against 1.61, where MLX's kernels "
                                "gave 2.17 against 1.61", _R + "generation_h100_quantized_projections.json"),
    projection_epilogues=(True, "one process, two rounds: 8B step 6.76 and 6.85 ms with the "
                                "epilogues, 7.52 and 7.00 without; 1B 2.13 and 2.19, 2.12 and "
                                "2.62", _R + "decode_epilogues_ab_h100.json"),
    projection_columns_one_row=(1, "one row: 8B down 46.7 us at one column, 52.9 at two",
                                _R + "projections_h100.json"),
    projection_columns=(2, "8 rows: 8B down 61.0 us at two columns, 80.4 at one; q/k/v 31.4 "
                           "against 38.3", _R + "projections_h100.json"),
    projection_simd_groups=(4, "4 or 8 SIMD groups level within 2% (8B q/k/v and down, 1 and "
                               "8 rows)", _R + "projections_h100.json"),
    projection_unroll=(2, "one row: two vectors in flight best or level in 7 of 9 shapes; "
                          "four lost up to 9%", _R + "projections_h100.json"),
)


def _apple(architecture: str, families: tuple[str, ...], row_data_bytes: int, why: str) -> Tuning:
    """Apple GPUs: the rules MLX's own Metal kernels follow where there is one; otherwise
    nothing was measured, and the row keeps the neutral choice (or today's shared rule)."""
    guess = NOT_MEASURED
    return _row(
        architecture, families,
        pointwise_bytes_per_thread=(8, "MLX's Metal elementwise kernels give each thread 8 bytes once "
                                       "n >= 65536", "shared/reference/apple-gpu.md"),
        pointwise_min_size=(65536, "smaller arrays need every thread they can get (MLX "
                                   "get_work_per_thread)", "shared/reference/apple-gpu.md"),
        pointwise_vector_lanes=(None, "Metal's vector types stop at 4 components", "profile"),
        row_vector_lanes=(4, "Metal's vector types stop at 4 components", "profile"),
        wide_small_operands=(True, "the NVIDIA rule, kept", guess),
        short_row_limit=(2048, "MLX's simdgroup-per-row logsumexp up to 2048: 1.5-2.8x on M4 Max",
                         "MLX PR #3913"),
        short_row_threadgroup=(256, "MLX PR #3913 runs 8 rows per 256-thread threadgroup", "MLX PR #3913"),
        row_data_bytes=(row_data_bytes, why, "shared/reference/apple-gpu.md"),
        row_data_register_share=(2, "unused: the profile gives no register file", "profile"),
        preferred_row_threads=(None, "the threadgroup maximum", guess),
        vector_row_register_share=(1, "one share for every row", guess),
        vector_row_past_preferred=(False, "no preferred thread count to pass", guess),
        read_only_row_register_share=(1, "one share for every row", guess),
        read_only_half_rows=((0, 0), "never", guess),
        read_only_rows_per_core=(16, "unused: no read-only share", guess),
        prefetch_store_loads=(False, "loads stay where their pass reads them", guess),
        kept_registers_ratio=(2, "the NVIDIA rule, kept", guess),
        cap_kept_at_widest=(True, "the NVIDIA rule, kept", guess),
        widen_held_rows=(False, "no preferred thread count to widen", guess),
        unbounded_thread_registers=(None, "Metal takes no launch bound", "profile"),
        block_thread_registers=(None, "Metal takes no launch bound", "profile"),
        block_sum_registers=(16, "the NVIDIA rule, kept", guess),
        block_sums_shared_when_bounded=(False, "no threadgroup is bounded", guess),
        stage_min_reads=(3, "the NVIDIA rule, kept", guess),
        column_lane_elements=(16, "the NVIDIA rule, kept", guess),
        column_min_group=(8, "the NVIDIA rule, kept", guess),
        column_centred_threads=(256, "the NVIDIA rule, kept", guess),
        column_held_elements=(64, "the NVIDIA rule, kept", guess),
        column_held_threads=(512, "the NVIDIA rule, kept", guess),
        split_groups_per_core=(4, "a core holds 1024 threads at full occupancy in small "
                                  "threadgroups", guess),
        split_min_bytes=(1 << 20, "the NVIDIA rule, kept", guess),
        arg_split_min_bytes=(1 << 19, "the NVIDIA rule, kept", guess),
        split_min_segment=(4096, "the NVIDIA rule, kept", guess),
        stream_unroll=(1, "the NVIDIA rule, kept", guess),
        online_chunked=(True, "the NVIDIA rule, kept", guess),
        hoist_row_loads=(True, "the NVIDIA rule, kept", guess),
        hoist_block_loads=(True, "the NVIDIA rule, kept", guess),
        norms_generated_at_least_as_fast=(frozenset(), "MLX's fast norms are kept until a generated "
                                          "norm is timed on the chip", guess),
        norms_generated_faster=(frozenset(), "MLX's fast norms are kept until a generated norm is "
                                "timed on the chip", guess),
        attention_split_keys=(1024, "MLX's Metal SDPA takes its two-pass kernel from 1024 keys on "
                                    "Max and Ultra chips",
                              "mlx/backend/metal/scaled_dot_product_attention.cpp"),
        attention_key_blocks=(64, "MLX's Metal two-pass kernel on a base chip where 4 or more query "
                                  "rows share a kv head: 64 blocks (more on Max and Ultra)",
                              "mlx/backend/metal/scaled_dot_product_attention.cpp"),
        attention_block_simd_groups=(8, "the NVIDIA rule, kept", guess),
        resident_saves_statistics=(True, "the NVIDIA rule, kept", guess),
        projection_max_rows=(0, "MLX's Metal matrix-vector and quantized kernels are kept until the "
                                "projection kernel is timed on the chip", guess),
        projection_lone_rows=(0, "as projection_max_rows", guess),
        projection_quantized=(False, "as projection_max_rows", guess),
        projection_epilogues=(False, "as projection_max_rows", guess),
        projection_columns_one_row=(1, "the NVIDIA rule, kept", guess),
        projection_columns=(2, "the NVIDIA rule, kept", guess),
        projection_simd_groups=(4, "the NVIDIA rule, kept", guess),
        projection_unroll=(2, "the NVIDIA rule, kept", guess),
    )


# Apple7/8: the compiled worst case sets occupancy, and the high-register path costs an M1 Max
# ~60% of its threads per core: 16 registers of row data.
APPLE7 = _apple("apple7", ("Apple7", "Apple8"), 64,
                "the compiled worst case sets occupancy (an M1 Max loses ~60% of its threads on "
                "the high-register path): 16 registers")
# Apple9+: Dynamic Caching allocates registers from one on-chip pool at run time, so a
# register-heavy kernel loses less occupancy: 32 registers of row data.
APPLE9 = _apple("apple9", ("Apple9", "Apple10"), 128,
                "Dynamic Caching allocates registers at run time: 32 registers")

TABLE: dict[str, Tuning] = {t.architecture: t for t in (SM_90, APPLE7, APPLE9)}
_BY_FAMILY = {family: t for t in TABLE.values() for family in t.families}
# A GPU of a family no row serves follows the newest row of its vendor (the tuner measures it).
_BY_VENDOR = {"nvidia": SM_90, "apple": APPLE9}


def tuning(profile: Profile) -> Tuning:
    """The tuning data a chip's default schedules follow: its family's row, else its vendor's.

    Raises:
        ValueError: ``profile`` runs no generated kernels (the CPU).

    Example:
        >>> from mlxtriton import hw
        >>> hw.tuning.tuning(hw.profile("h100")).architecture, hw.tuning.tuning(hw.profile("m1")).architecture
        ('sm_90', 'apple7')
    """
    if not profile.is_gpu:
        raise ValueError(f"{profile.name} runs no generated kernels: it has no tuning data")
    found = _BY_FAMILY.get(profile.family) or _BY_VENDOR.get(profile.vendor)
    if found is None:
        raise ValueError(f"no tuning data for {profile.name} ({profile.vendor} {profile.family})")
    return found


def tuning_of_family(family: str) -> Tuning:
    """The table row serving a profile family (e.g. ``"sm_90"``, ``"Apple9"``)."""
    try:
        return _BY_FAMILY[family]
    except KeyError:
        raise ValueError(f"no tuning data for family {family!r} (known: {sorted(_BY_FAMILY)})") from None


__all__ = ["Evidence", "NOT_MEASURED", "TABLE", "TUNED_FIELDS", "Tuning", "tuning", "tuning_of_family"]
