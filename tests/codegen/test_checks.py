"""Every rendered kernel family compiles: Metal through clang against the Metal stdlib stub,
wrapped by MLX itself; CUDA through nvcc (where installed), wrapped as MLX's build_kernel does.
Deliberately broken kernels are rejected, so the checks can fail."""

from __future__ import annotations

import dataclasses

import pytest

from mlxtriton.codegen.builder import build
from mlxtriton.codegen.schedule import default, dialect_target
from mlxtriton.codegen.region import RegionBuilder
from mlxtriton.codegen.render import lower, render
from tests.codegen import codegen_oracle as oracle
from tests.codegen import cuda_check, metal_check

DTYPES = ("float32", "float16", "bfloat16")

# Shapes that reach every schedule: one-element rows, several rows per SIMD-group, a SIMD-group
# per row, a threadgroup per row with a non-power-of-two number of SIMD-groups, and rows longer
# than the on-chip budget (streamed, online softmax).
ROW_SHAPES = [(5, 1), (9, 24), (4, 500), (3, 3000), (2, 65536)]


def _kernels(target: str, dtypes=DTYPES, shapes=ROW_SHAPES):
    for family, make in sorted(oracle.FAMILIES.items()):
        for dtype in dtypes:
            if family == "pointwise":
                yield f"{family}-{dtype}", make(shape=(3, 5, 64), dtype=dtype)
                yield f"{family}-odd-{dtype}", make(shape=(3, 5, 7), dtype=dtype)
                continue
            for R, L in shapes:
                shape = (L, R) if family == "colsum" else (R, L)
                yield f"{family}-{dtype}-{R}x{L}", make(shape=shape, dtype=dtype)


def _extra_regions():
    """Reductions and ops the families above do not reach: argmax, prod/min, bool and integer
    reductions, integer power, special functions, a 0-d domain."""
    b = RegionBuilder("argmax")
    x = b.input((6, 300), "float16", "x")
    yield "argmax", b.build([b.op("ArgReduce", x, kind="argmax", axis=1),
                             b.op("Reduce", x, kind="prod", axes=(1,)),
                             b.op("Reduce", x, kind="min", axes=(1,))])
    b = RegionBuilder("anyall")
    m = b.input((6, 70), "bool", "m")
    yield "bool", b.build([b.op("Reduce", m, kind="and", axes=(1,)),
                           b.op("Reduce", m, kind="or", axes=(1,)),
                           b.op("Reduce", m, kind="sum", axes=(1,))])
    b = RegionBuilder("intops")
    p, q = b.input((64,), "int32", "p"), b.input((64,), "int32", "q")
    yield "int", b.build([b.op("Power", p, q), b.op("Remainder", p, q),
                          b.op("FloorDivide", p, q), b.op("Abs", p), b.op("Sign", p)])
    b = RegionBuilder("bitwise")  # a sliding-window mask's & (mlx-lm), shifts of narrow types
    u, v = b.input((64,), "uint8", "u"), b.input((64,), "uint8", "v")
    c, d = b.input((64,), "bool", "c"), b.input((64,), "bool", "d")
    i, j = b.input((64,), "int32", "i"), b.input((64,), "int32", "j")
    yield "bitwise", b.build([b.op("BitwiseBinary", u, v, op=op) for op in (
        "and", "or", "xor", "left_shift", "right_shift")] + [
        b.op("BitwiseBinary", c, d, op="and"), b.op("BitwiseBinary", c, d, op="xor"),
        b.op("BitwiseBinary", i, j, op="right_shift"), b.op("BitwiseBinary", i, j, op="left_shift")])
    b = RegionBuilder("pick")  # a take_along_axis beside whole rows: a row kernel, no reduction
    x, i = b.input((6, 300), "float32", "x"), b.input((6, 1), "int32", "i")
    yield "gather_beside_rows", b.build([b.op("GatherAxis", x, i, axis=1), b.op("Negative", x)])
    b = RegionBuilder("special")
    f = b.input((128,), "float32", "f")
    outs = [b.op(n, f) for n in ("Erf", "Expm1", "Log1p", "Sigmoid", "ArcTanh", "Round")]
    outs.append(b.op("LogAddExp", f, outs[0]))
    yield "special", b.build(outs)
    b = RegionBuilder("int64")  # 64-bit accumulators shuffle as two 32-bit halves
    w = b.input((6, 500), "int64", "w")
    yield "int64", b.build([b.op("Reduce", w, kind="sum", axes=(1,)),
                            b.op("Reduce", w, kind="max", axes=(1,))])
    # a column variance: streamed on NVIDIA chips, one pass with the mean (Welford, Chan)
    yield "channel_moments", oracle.channel_moments(shape=(3000, 37), dtype="bfloat16")
    b = RegionBuilder("scalar")
    s = b.input((), "float32", "s")
    yield "scalar", b.build([b.op("Exp", s)])


ALL_METAL = list(_kernels("metal")) + list(_extra_regions())


@pytest.mark.parametrize("name,region", ALL_METAL, ids=[n for n, _ in ALL_METAL])
def test_metal_kernels_type_check(name, region):
    kernel = lower(region, "metal")
    problems = metal_check.check(kernel)
    assert not problems, "\n".join(problems) + "\n" + kernel.source


def test_metal_check_rejects_broken_kernels():
    kernel = lower(oracle.softmax(shape=(4, 500)), "metal")
    assert metal_check.check(kernel) == []
    broken = {
        "undeclared name": kernel.source + "undeclared_name = 1;\n",
        "wrong type": kernel.source + "const float mt_bad = metal::exp(1.0f, 2.0f);\n",
        "lost address space": kernel.source.replace("<const device ", "<const "),
        "write to an input": kernel.source + "x[0] = 1.0f;\n",
    }
    for why, source in broken.items():
        problems = metal_check.check(dataclasses.replace(kernel, source=source))
        assert problems, f"a kernel with {why} passed the Metal check"


def test_metal_wrapper_is_mlx_own():
    """The checked text is MLX's: signature with address spaces and attributes it generates."""
    source = metal_check.wrapped_source(lower(oracle.cross_entropy(shape=(4, 32)), "metal"))
    assert "[[kernel]] void custom_kernel_mlxt_crossentropy_" in source
    assert "const device float* logits [[buffer(0)]]" in source
    assert "uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]" in source


needs_nvcc = pytest.mark.skipif(cuda_check.nvcc() is None, reason="nvcc is not installed")


@needs_nvcc
def test_cuda_kernels_compile():
    # one translation unit per kernel, as MLX compiles them; float32 and bfloat16 cover both
    # conversion paths (float16 differs from bfloat16 only in the intrinsic names)
    kernels = [lower(r, "cuda") for _, r in _kernels("cuda", ("float32", "bfloat16"),
                                                     [(9, 24), (3, 3000), (2, 65536)])]
    kernels += [lower(r, "cuda") for _, r in _extra_regions()]
    kernels.append(lower(oracle.rms_norm(shape=(3, 700), dtype="float16", gate=True), "cuda"))
    errors = cuda_check.compile_errors(kernels)
    assert not errors, errors
    # and one exactly as MLX compiles it: its own translation unit
    assert not cuda_check.compile_errors(kernels[:1], batch=False)


@needs_nvcc
def test_cuda_check_rejects_broken_kernels():
    kernel = lower(oracle.softmax(shape=(4, 500)), "cuda")
    for source in (kernel.source + "undeclared_name = 1;\n", kernel.source + "x[0] = 1.0f;\n"):
        assert cuda_check.compile_errors([dataclasses.replace(kernel, source=source)])


def test_rendering_is_deterministic_and_names_follow_source():
    a, b = lower(oracle.layer_norm(), "cuda"), lower(oracle.layer_norm(), "cuda")
    assert a == b
    streamed = default(oracle.layer_norm(), dialect_target("cuda"), on_chip=False)
    other = render(build(oracle.layer_norm(), streamed), "cuda")
    assert other.source != a.source and other.name != a.name  # MLX caches kernels by name


def _resident_blocks(usage: dict, dynamic_shared: int, threads: int, chip) -> int:
    """Blocks of ``threads`` one SM of ``chip`` holds with ptxas's ``usage``: registers allotted
    per warp in units of 256, shared memory with the 1 KB the driver reserves per block (CUDA C++
    Programming Guide, compute capability 9.0)."""
    per_warp = -(-usage["registers"] * 32 // 256) * 256
    by_registers = chip.registers_per_sm // (per_warp * -(-threads // 32))
    shared = usage["static_shared"] + dynamic_shared + 1024
    return min(by_registers, chip.shared_memory_per_sm_bytes // shared)


@needs_nvcc
def test_a_split_column_softmax_fits_two_threadgroups_an_sm():
    """The column softmax holding its column in registers takes an H100 SM to itself; with half of
    each lane's column in shared memory (`Schedule.staged_in_registers`, bounded for two) two
    share one, and neither spills."""
    from mlxtriton import hw
    from mlxtriton.codegen.builder import build
    from mlxtriton.codegen.render import render
    from mlxtriton.codegen.schedule import default
    from tests.codegen.targets import target
    from tests.codegen.test_schedule import split_column_softmax

    region, half = split_column_softmax()
    chip = hw.profile("h100")
    held = render(build(region, default(region, target("h100"))), "cuda")
    split = render(build(region, half), "cuda")
    usage = {k.name: cuda_check.resource_usage(k) for k in (held, split)}
    assert all(u["spilled"] == 0 for u in usage.values()), usage
    assert _resident_blocks(usage[held.name], 0, 512, chip) == 1, usage
    assert _resident_blocks(usage[split.name], dict(split.options)["shared_memory"], 512, chip) == 2, usage
