"""Codegen layer: the two C-style dialects as data. Metal (body of ``mx.fast.metal_kernel``) and
CUDA (body of ``mx.fast.cuda_kernel``) differ only in these tables; the renderer never asks
which dialect it is. May import the codegen IR only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from mlxtriton.codegen.kernel_ir import Ops


@dataclass(frozen=True)
class Dialect:
    name: str  # "metal" | "cuda": the target the LoweredKernel is for
    types: Mapping[str, str]  # dtype -> C type name, as MLX names it in the signature
    fn: str  # qualifier of helper functions in the header
    thread_in_group: str  # this thread's index in its threadgroup (x)
    group_in_grid: str  # this threadgroup's index in the grid (x)
    thread_in_grid: str  # this thread's global index (x)
    barrier: str  # threadgroup barrier with threadgroup-memory ordering
    shared: str  # qualifier of a threadgroup-memory array declared in the body
    global_space: str  # address-space qualifier of an input/output buffer pointer
    unroll: str  # pragma that fully unrolls the next loop
    unroll_by: str  # pragma that unrolls the next loop {n} times
    # A threadgroup array of {count} {T} named {name} at byte {offset} of the staging area, and
    # what declares the area once (CUDA: dynamic shared memory, sized by ``staging_option``)
    staged_array: str
    staging_area: str
    staging_option: str | None
    shuffle_xor: str  # {x} from the lane whose index is this lane's xor {o}
    vector_type: str  # a {N}-lane vector of {T} that one 16-byte load fills
    vector_lane: str  # lane {l} of vector {v}
    simd_reduce: Mapping[str, str]  # whole-SIMD-group reductions the dialect has built in
    code_for_op: Mapping[tuple[Ops, str], str]  # (op, "float"|"int"|"any") -> template
    casts: Mapping[tuple[str, str], str]  # (from dtype, to dtype) -> template; else static_cast
    float_from_bits: str  # the float whose bits are the uint32 {x}
    half_from_bits: str  # the float value of the float16 whose bits are the low 16 of uint32 {x}
    fma: str  # {a} * {b} + {c} in float, rounded once
    literals: Mapping[str, str]  # "inf", "nan" (float32)
    scalar_input: str  # how the body reads a 0-d input named {name}
    prelude: str  # first lines of the header
    # Last lines of the header, given the kernel's {bound} (threads per threadgroup, and
    # threadgroups per core to leave room for when more than one): MLX writes the signature
    # right after the header, so this is where a bound on them can reach the compiler.
    launch_bounds: str
    helpers: Mapping[str, str] = field(default_factory=dict)  # "mt_name" -> definition
    constructor_options: tuple[tuple[str, object], ...] = ()  # extra kernel-constructor args

    def type(self, dtype: str) -> str:
        return self.types[dtype]

    def cast(self, x: str, src: str, dst: str) -> str:
        """``x`` of ``src`` as ``dst``: the dialect's conversion where it has one, else a
        static_cast."""
        template = self.casts.get((src, dst))
        return template.format(x=x) if template else f"static_cast<{self.type(dst)}>({x})"


def _freeze(d: dict) -> Mapping:
    return MappingProxyType(dict(d))


_INT_TYPES = {
    "bool": "bool", "uint8": "uint8_t", "uint16": "uint16_t", "uint32": "uint32_t",
    "uint64": "uint64_t", "int8": "int8_t", "int16": "int16_t", "int32": "int32_t",
    "int64": "int64_t", "float32": "float",
}

# Helpers written once, specialised per dialect with {fn} and its math names. Semantics follow
# MLX's kernels (NaN-propagating max/min, stable sigmoid and logaddexp, integer power).
_SHARED_HELPERS = {
    "mt_max": "template <typename T> {fn} T mt_max(T a, T b) {{ return (a > b || a != a) ? a : b; }}",
    "mt_min": "template <typename T> {fn} T mt_min(T a, T b) {{ return (a < b || a != a) ? a : b; }}",
    "mt_vec": "template <typename T, int N> struct alignas(sizeof(T) * N) mt_vec {{ T v[N]; }};",
    "mt_sign": "template <typename T> {fn} T mt_sign(T x) {{ return T(x > T(0)) - T(x < T(0)); }}",
    "mt_iabs": "template <typename T> {fn} T mt_iabs(T x) {{ return x < T(0) ? T(-x) : x; }}",
    # a float to an integer: truncated, saturated to [lo, hi], NaN to 0 (kernel_ir.Ops.CAST)
    "mt_ftoi": (
        "template <typename T> {fn} T mt_ftoi(float x, T lo, T hi) {{\n"
        "  return x != x ? T(0) : x <= float(lo) ? lo : x >= float(hi) ? hi : static_cast<T>(x);\n"
        "}}"),
    "mt_ipow": (
        "template <typename T> {fn} T mt_ipow(T b, T e) {{\n"
        "  if (e < T(0)) return T(0);\n"
        "  T r = T(1);\n"
        "  while (e != T(0)) {{ if (e & T(1)) r = T(r * b); b = T(b * b); e = T(e >> 1); }}\n"
        "  return r;\n"
        "}}"),
    # shifts whose count may lie outside [0, bits): such a count shifts every bit out
    # (kernel_ir.Ops.SHL / SHR); the left shift runs on an unsigned copy, where shifting a
    # negative value is defined, and a right shift by bits - 1, then 1, leaves the sign's fill
    "mt_shl": (
        "template <typename T> {fn} T mt_shl(T x, T s) {{\n"
        "  return static_cast<uint64_t>(s) < 8 * sizeof(T)\n"
        "      ? static_cast<T>(static_cast<uint64_t>(x) << s) : T(0);\n"
        "}}"),
    "mt_shr": (
        "template <typename T> {fn} T mt_shr(T x, T s) {{\n"
        "  return static_cast<uint64_t>(s) < 8 * sizeof(T)\n"
        "      ? static_cast<T>(x >> s) : static_cast<T>((x >> (8 * sizeof(T) - 1)) >> 1);\n"
        "}}"),
    "mt_sigmoid": (
        "{fn} float mt_sigmoid(float x) {{\n"
        "  const float y = 1.0f / (1.0f + {exp}({fabs}(x)));\n"
        "  return x < 0.0f ? y : 1.0f - y;\n"
        "}}"),
    # MLX's LogAddExp: the larger operand itself when the smaller is -inf or the larger +inf
    "mt_logaddexp": (
        "{fn} float mt_logaddexp(float a, float b) {{\n"
        "  const float hi = mt_max(a, b), lo = mt_min(a, b);\n"
        "  return (lo == -{inf} || hi == {inf}) ? hi : hi + {log1p}({exp}(lo - hi));\n"
        "}}"),
}

# Metal's standard library has no log1p, expm1 or erf (MLX ships its own); these are ours.
_METAL_ONLY_HELPERS = {
    "mt_log1p": (
        "inline float mt_log1p(float x) {\n"
        "  // log(u) * x / (u - 1) with u = 1 + x cancels the rounding of u (Goldberg 1991)\n"
        "  const float u = 1.0f + x;\n"
        "  if (u == 1.0f) return x;\n"
        "  if (u == INFINITY) return u;  // (x = -inf gives log(-inf): NaN)\n"
        "  return metal::log(u) * (x / (u - 1.0f));\n"
        "}"),
    "mt_expm1": (
        "inline float mt_expm1(float x) {\n"
        "  // (u - 1) * x / log(u) with u = exp(x) (Kahan)\n"
        "  const float u = metal::exp(x);\n"
        "  if (u == 1.0f) return x;\n"
        "  const float um1 = u - 1.0f;\n"
        "  if (um1 == -1.0f) return -1.0f;\n"
        "  if (metal::isinf(u)) return u;\n"
        "  return um1 * (x / metal::log(u));  // um1 * x overflows where the result does not\n"
        "}"),
    "mt_erf": (
        "inline float mt_erf(float x) {\n"
        "  const float a = metal::abs(x);\n"
        "  if (a < 0.5f) {\n"
        "    // Taylor series, relative error < 1e-7 on |x| < 0.5\n"
        "    const float t = x * x;\n"
        "    return x * (1.1283791671f + t * (-0.3761263890f + t * (0.1128379167f + t * (\n"
        "        -0.0268661706f + t * (0.0052239776f + t * (-0.0008548327f + t * 0.0001205499f))))));\n"
        "  }\n"
        "  // Abramowitz & Stegun 7.1.26, absolute error < 1.5e-7\n"
        "  const float t = 1.0f / (1.0f + 0.3275911f * a);\n"
        "  const float p = ((((1.061405429f * t - 1.453152027f) * t + 1.421413741f) * t\n"
        "      - 0.284496736f) * t + 0.254829592f) * t;\n"
        "  return metal::copysign(1.0f - p * metal::exp(-a * a), x);\n"
        "}"),
}


def _shuffle64(fn: str, shuffle_xor: str) -> str:
    # SIMD shuffles move 32-bit values (MSL 6.9.2 lists no 64-bit types): two halves
    lo = shuffle_xor.format(x="static_cast<uint32_t>(u)", o="o")
    hi = shuffle_xor.format(x="static_cast<uint32_t>(u >> 32)", o="o")
    return (f"template <typename T> {fn} T mt_shuffle64(T x, int o) {{\n"
            f"  const uint64_t u = static_cast<uint64_t>(x);\n"
            f"  const uint32_t lo = {lo};\n"
            f"  const uint32_t hi = {hi};\n"
            f"  return static_cast<T>((static_cast<uint64_t>(hi) << 32) | lo);\n"
            f"}}")


def _helpers(fn: str, shuffle_xor: str, names: dict[str, str], extra: dict[str, str],
             overloads: dict[str, str] | None = None) -> Mapping[str, str]:
    # dialect-only helpers first: shared ones may call them (mt_logaddexp -> mt_log1p)
    out = dict(extra)
    out.update({k: v.format(fn=fn, **names) for k, v in _SHARED_HELPERS.items()})
    out["mt_shuffle64"] = _shuffle64(fn, shuffle_xor)
    for name, text in (overloads or {}).items():  # written after the shared definition
        out[name] += "\n" + text
    return _freeze(out)


# The exponential of a value that cannot exceed 0 (Ops.EXP_SHIFTED): __expf's ex2.approx of
# x * log2(e), but flushing results below 2^-126 to zero (.ftz), as Metal's fast::exp does. MLX
# compiles without --use_fast_math, where __expf's ex2.approx keeps subnormal results at the
# cost of a range check and two multiplies around it. H200, kernels alone (benchmarks/results/
# ftzexp_h200.json): bf16 cross-entropy forward 3345 -> 3643 GB/s at 32768x4096,
# 2463 -> 2797 at 2048x32768; bf16 softmax backward 2783 -> 3293 and 2275 -> 2589; none slower.
_CUDA_FAST_EXP = {
    "mt_fastexp": ("__device__ __forceinline__ float mt_fastexp(float x) {\n"
                   "  float r;\n"
                   "  asm(\"ex2.approx.ftz.f32 %0, %1;\" : \"=f\"(r) : \"f\"(x * 1.44269504f));\n"
                   "  return r;\n"
                   "}"),
}

# A float max or min that propagates NaN is one instruction from sm_80 (PTX max.NaN.f32), where
# the shared comparison takes three: H200, kernels alone (benchmarks/results/
# ce_nanmax_h200.json), bf16 cross-entropy forward 3011 -> 3336 GB/s at 32768x4096,
# 2432 -> 2726 at 4096x16384, its backward 3076 -> 3391 and 2979 -> 3185; float32 softmax and
# log-softmax over 16384 2%; the others level.
_CUDA_NAN_MINMAX = {
    f"mt_{op}": ("#if __CUDA_ARCH__ >= 800\n"
                 f"__device__ __forceinline__ float mt_{op}(float a, float b) {{\n"
                 f"  float r;\n"
                 f"  asm(\"{op}.NaN.f32 %0, %1, %2;\" : \"=f\"(r) : \"f\"(a), \"f\"(b));\n"
                 f"  return r;\n"
                 f"}}\n"
                 "#endif")
    for op in ("max", "min")}


def _float_math(fmt: str, names: dict[Ops, str]) -> dict[tuple[Ops, str], str]:
    return {(op, "float"): fmt.format(name) + "({0})" if op not in _BINARY_MATH
            else fmt.format(name) + "({0}, {1})" for op, name in names.items()}


_BINARY_MATH = {Ops.POW, Ops.ATAN2, Ops.REM}

_METAL_MATH = {
    Ops.SQRT: "sqrt", Ops.RSQRT: "rsqrt", Ops.EXP: "exp", Ops.LOG: "log", Ops.LOG2: "log2",
    Ops.LOG10: "log10", Ops.SIN: "sin", Ops.COS: "cos", Ops.TAN: "tan", Ops.ASIN: "asin",
    Ops.ACOS: "acos", Ops.ATAN: "atan", Ops.SINH: "sinh", Ops.COSH: "cosh", Ops.TANH: "tanh",
    Ops.ASINH: "asinh", Ops.ACOSH: "acosh", Ops.ATANH: "atanh", Ops.FLOOR: "floor",
    Ops.CEIL: "ceil", Ops.ROUND: "rint", Ops.ABS: "abs", Ops.POW: "pow", Ops.ATAN2: "atan2",
    Ops.REM: "fmod",
}
_CUDA_MATH = {
    Ops.SQRT: "sqrtf", Ops.RSQRT: "rsqrtf", Ops.EXP: "expf", Ops.EXP_SHIFTED: "mt_fastexp",
    Ops.LOG: "logf", Ops.LOG2: "log2f",
    Ops.LOG10: "log10f", Ops.SIN: "sinf", Ops.COS: "cosf", Ops.TAN: "tanf", Ops.ASIN: "asinf",
    Ops.ACOS: "acosf", Ops.ATAN: "atanf", Ops.SINH: "sinhf", Ops.COSH: "coshf",
    Ops.TANH: "tanhf", Ops.ASINH: "asinhf", Ops.ACOSH: "acoshf", Ops.ATANH: "atanhf",
    Ops.FLOOR: "floorf", Ops.CEIL: "ceilf", Ops.ROUND: "rintf", Ops.ABS: "fabsf",
    Ops.POW: "powf", Ops.ATAN2: "atan2f", Ops.REM: "fmodf", Ops.EXPM1: "expm1f",
    Ops.LOG1P: "log1pf", Ops.ERF: "erff",
}

METAL = Dialect(
    name="metal",
    types=_freeze({**_INT_TYPES, "float16": "float16_t", "bfloat16": "bfloat16_t"}),
    fn="inline",
    thread_in_group="thread_position_in_threadgroup.x",
    group_in_grid="threadgroup_position_in_grid.x",
    thread_in_grid="thread_position_in_grid.x",
    barrier="metal::threadgroup_barrier(metal::mem_flags::mem_threadgroup);",
    shared="threadgroup",
    global_space="device ",
    unroll="#pragma clang loop unroll(full)",
    unroll_by="#pragma clang loop unroll_count({n})",
    staged_array="threadgroup {T} {name}[{count}];",
    staging_area="",
    staging_option=None,
    shuffle_xor="metal::simd_shuffle_xor({x}, static_cast<ushort>({o}))",
    # Metal's own vector types: a load from device memory is a plain vector load (a struct
    # would need a copy constructor across address spaces)
    vector_type="metal::vec<{T}, {N}>",
    vector_lane="{v}[{l}]",
    simd_reduce=_freeze({"sum": "metal::simd_sum({x})"}),
    code_for_op=_freeze({
        **_float_math("metal::{}", _METAL_MATH),
        (Ops.EXPM1, "float"): "mt_expm1({0})", (Ops.LOG1P, "float"): "mt_log1p({0})",
        (Ops.ERF, "float"): "mt_erf({0})", (Ops.EXP_SHIFTED, "float"): "metal::fast::exp({0})",
    }),
    casts=_freeze({}),
    # as_type is an operator of the language (MSL 2.19), not a metal:: function
    float_from_bits="as_type<float>({x})",
    half_from_bits="static_cast<float>(as_type<half>(static_cast<ushort>({x})))",
    fma="metal::fma({a}, {b}, {c})",
    literals=_freeze({"inf": "INFINITY", "nan": "NAN"}),
    scalar_input="{name}",  # MLX passes a 0-d input as `const constant T& name`
    prelude="#include <metal_stdlib>\n",
    # Metal sizes registers per pipeline and MLX checks the threadgroup against the pipeline's
    # maximum: nothing to declare
    launch_bounds="",
    helpers=_helpers("inline", "metal::simd_shuffle_xor({x}, static_cast<ushort>({o}))",
                     {"exp": "metal::exp", "fabs": "metal::abs", "inf": "INFINITY",
                      "log1p": "mt_log1p"},
                     _METAL_ONLY_HELPERS),
    constructor_options=(("atomic_outputs", False),),
)

CUDA = Dialect(
    name="cuda",
    types=_freeze({**_INT_TYPES, "float16": "__half", "bfloat16": "__nv_bfloat16"}),
    fn="__device__ __forceinline__",
    thread_in_group="threadIdx.x",
    group_in_grid="blockIdx.x",
    thread_in_grid="(blockIdx.x * blockDim.x + threadIdx.x)",
    barrier="__syncthreads();",
    shared="__shared__",
    global_space="",
    unroll="#pragma unroll",
    unroll_by="#pragma unroll {n}",
    # static __shared__ stops at 48 KB; MLX opts a kernel in above 48000 bytes of dynamic memory
    staged_array="{T}* {name} = reinterpret_cast<{T}*>(mt_stage + {offset});",
    staging_area="extern __shared__ __align__(16) unsigned char mt_stage[];",
    staging_option="shared_memory",
    shuffle_xor="__shfl_xor_sync(0xffffffffu, {x}, {o})",
    # CUDA has no half4: an aligned array struct (MLX's AlignedVector) loads as one ld.v4
    vector_type="mt_vec<{T}, {N}>",
    vector_lane="{v}.v[{l}]",
    simd_reduce=_freeze({}),
    code_for_op=_freeze(_float_math("{}", _CUDA_MATH)),
    casts=_freeze({
        ("float16", "float32"): "__half2float({x})",
        ("float32", "float16"): "__float2half_rn({x})",
        ("bfloat16", "float32"): "__bfloat162float({x})",
        ("float32", "bfloat16"): "__float2bfloat16_rn({x})",
    }),
    float_from_bits="__uint_as_float({x})",
    half_from_bits="__half2float(__ushort_as_half(static_cast<unsigned short>({x})))",
    fma="fmaf({a}, {b}, {c})",
    literals=_freeze({"inf": "__int_as_float(0x7f800000)", "nan": "__int_as_float(0x7fffffff)"}),
    scalar_input="{name}[0]",
    prelude="#include <cuda_fp16.h>\n#include <cuda_bf16.h>\n",
    # MLX's wrapper writes `__global__ void custom_kernel_...(` without __launch_bounds__, so
    # NVRTC may give a thread more registers than a full threadgroup can have and the launch
    # fails ("too many resources requested for launch"). Redefining __global__ at the end of our
    # header puts the bound on the one kernel that follows (MLX's own includes come before it):
    # NVRTC then keeps threads x registers within the register file, spilling if it must.
    launch_bounds=("#undef __global__\n"
                   "#define __global__ __attribute__((global)) __launch_bounds__({bound})\n"),
    helpers=_helpers("__device__ __forceinline__", "__shfl_xor_sync(0xffffffffu, {x}, {o})",
                     {"exp": "expf", "fabs": "fabsf", "inf": "__int_as_float(0x7f800000)",
                      "log1p": "log1pf"},
                     _CUDA_FAST_EXP, _CUDA_NAN_MINMAX),
    constructor_options=(("shared_memory", 0),),
)

DIALECTS = {"metal": METAL, "cuda": CUDA}
