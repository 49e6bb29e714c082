"""Graph layer: the one table of primitives that ``mx.export_function`` can report.

Each primitive is declared once, with its family and the names of its parameters, and a decoder
from MLX's positional ``state()`` (as the exporter reports it) to named, hashable params. The
collectives, which the exporter cannot report, are recorded by the tracer itself.
Rules other layers need (evaluate with MLX, with JAX, render in a kernel) live in their own tables,
keyed by primitive name. May import mlx and the graph layer's dtypes only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import mlx.core as mx

from mlxtriton.graph import dtypes


class Family(enum.Enum):
    UNARY = "unary"  # elementwise, one input, output shape == input shape
    BINARY = "binary"  # elementwise, two inputs of the output's shape (MLX broadcasts explicitly)
    TERNARY = "ternary"  # elementwise, three inputs (Select)
    REDUCE = "reduce"  # Reduce, ArgReduce, and the row-wise LogSumExp / Softmax over the last axis
    SCAN = "scan"
    MOVEMENT = "movement"  # views and copies that only move data
    INDEXING = "indexing"  # data-dependent indexing: gather, scatter, ...
    MATMUL = "matmul"
    CONVOLUTION = "convolution"
    FAST = "fast"  # mx.fast primitives (GPU streams); they decompose on the CPU stream
    RANDOM = "random"
    OPAQUE = "opaque"  # everything else: sorts, linear algebra, FFT, creation, custom kernels
    COLLECTIVE = "collective"  # mx.distributed: communicates with the other processes of a group
    FUSED = "fused"  # a region of the graph that runs as one generated kernel (graph/fused.py)


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive that mlxtriton's table does not declare, or that a layer cannot handle."""


# An output's abstract value as the decoder sees it: (shape, dtype name or mx.Dtype).
OutputAval = tuple[Sequence[int], Any]


@dataclass(frozen=True)
class Primitive:
    name: str
    family: Family
    params: tuple[str, ...] = ()
    # From the exporter's positional arguments to {param name: hashable value}; None: zip the
    # arguments with the params not taken from the outputs.
    decoder: Callable[[list], dict[str, Any]] | None = None
    # Params that MLX keeps out of state() but that the outputs determine (Arange's dtype, how many
    # of Depends' inputs pass through): {param name: fn(output avals) -> value}.
    # (A tuple of pairs rather than a dict keeps Primitive hashable.)
    from_outputs: tuple[tuple[str, Callable[[Sequence[OutputAval]], Any]], ...] = ()
    # The primitive can define several outputs (Split, DivMod, QRF, ...); its rules then return a
    # tuple exactly when the equation has more than one output.
    multiple_outputs: bool = False

    def decode(self, arguments: list, outputs: Sequence[OutputAval] | None = None) -> dict[str, Any]:
        """Named, hashable params from the exporter's ``arguments`` (and ``outputs`` when needed).

        Args:
            arguments: the ``"arguments"`` list of an exporter ``primitive`` entry.
            outputs: ``(shape, dtype)`` of each output, required by primitives whose params MLX
                does not report (``Arange``'s dtype, ``Depends``' output count, ...).

        Raises:
            ValueError: the arguments do not fit the declared layout, or outputs are missing.
        """
        if self.decoder is not None:
            named = self.decoder(list(arguments))
        else:
            taken = {k for k, _ in self.from_outputs}
            names = tuple(p for p in self.params if p not in taken)
            if len(arguments) != len(names):
                raise ValueError(
                    f"{self.name}: MLX reported {len(arguments)} arguments {arguments!r}, "
                    f"the table declares {len(names)} {names}"
                )
            named = dict(zip(names, arguments))
        if self.from_outputs:
            if outputs is None:
                raise ValueError(
                    f"{self.name}: params {sorted(k for k, _ in self.from_outputs)} come from the outputs; "
                    "pass outputs=[(shape, dtype), ...] to decode"
                )
            avals = tuple((tuple(int(d) for d in s), freeze(t)) for s, t in outputs)
            named.update({k: fn(avals) for k, fn in self.from_outputs})
        if set(named) != set(self.params):
            raise ValueError(f"{self.name}: decoded {sorted(named)}, the table declares {self.params}")
        return {k: freeze(v) for k, v in named.items()}

    def __repr__(self) -> str:
        return f"Primitive({self.name})"


def freeze(value: Any) -> Any:
    """Make an exporter argument hashable: lists -> tuples, mx.Dtype -> dtype name."""
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    if isinstance(value, mx.Dtype):
        return dtypes.from_mx(value)
    if isinstance(value, dict):
        return tuple(sorted((k, freeze(v)) for k, v in value.items()))
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    raise TypeError(f"cannot freeze primitive argument {value!r} of type {type(value).__name__}")


PRIMITIVES: dict[str, Primitive] = {}


def declare(
    name: str,
    family: Family,
    params: tuple[str, ...] = (),
    decoder=None,
    *,
    from_outputs: Mapping[str, Callable] | None = None,
    multiple_outputs: bool = False,
) -> Primitive:
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name} declared twice")
    pairs = tuple((from_outputs or {}).items())
    prim = Primitive(name, family, tuple(params), decoder, pairs, multiple_outputs)
    PRIMITIVES[name] = prim
    return prim


def get(name: str) -> Primitive:
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise UnsupportedPrimitiveError(
            f"unsupported primitive {name!r}: mlxtriton's primitive table does not declare it"
        ) from None


def family(fam: Family) -> frozenset[str]:
    return frozenset(n for n, p in PRIMITIVES.items() if p.family is fam)


def multiple_outputs() -> frozenset[str]:
    """Primitives that can define several outputs (their rules may return tuples)."""
    return frozenset(n for n, p in PRIMITIVES.items() if p.multiple_outputs)


# ---------------------------------------------------------------------------------------------
# The table: every primitive MLX 0.32's exporter can serialize, and nothing else. The exporter
# looks a primitive up by its printed name in PrimitiveFactory (mlx/export.cpp), remapping
# Sum/Max/... -> Reduce, Rsqrt -> Sqrt, Log2/Log10 -> Log, CumSum/... -> Scan, BitwiseAnd/... ->
# BitwiseBinary, NaNEqual -> Equal; anything else fails at trace time with "Unable to get state
# for primitive X" (0.32.4, checked live): BitwiseInvert, Contiguous, SegmentedMM, QQMatmul,
# GatherQQMM, LUF, ToFP8/FromFP8, CrossEntropy, GatedDeltaUpdate, ScaledDotProductAttentionVJP,
# and Scan's LogAddExp (it prints "CumLogAddExp" but the factory key is "CumLogaddexp").
#
# Argument layouts follow each class's state() in mlx/primitives.h and mlx/fast_primitives.h, as
# the callback flattens them: tuples and pairs are spread into separate arguments, enums become
# ints, Dtype stays mx.Dtype, Shape becomes a tuple and std::vector<int> a list, nullptr and an
# empty std::optional are dropped. Each layout is checked by a live trace in
# tests/graph/test_op_table.py wherever the CPU build produces the primitive; the fast ops (which
# decompose on the CPU stream), Quantize(dequantize) and CUDA's CustomKernel were traced on the
# H200 and their argument lists are recorded there.

_U, _B = Family.UNARY, Family.BINARY


def _enum(*names: str) -> Callable[[int], str]:
    """Decode a C++ enum reported as its int value into a readable name."""

    def decode(value: int) -> str:
        if not 0 <= value < len(names):
            raise ValueError(f"enum value {value} out of range for {names}")
        return names[value]

    return decode


def _output_dtype(outputs) -> str:
    return outputs[0][1]


# mx.Dtype values the exporter reports in state() arrive frozen to names by Primitive.decode.

for _name in (
    "Abs", "ArcCos", "ArcCosh", "ArcSin", "ArcSinh", "ArcTan", "ArcTanh", "Ceil", "Conjugate",
    "Copy", "Cos", "Cosh", "Erf", "ErfInv", "Exp", "Expm1", "Floor", "Imag", "Log1p", "LogicalNot",
    "Negative", "Real", "Round", "Sigmoid", "Sign", "Sin", "Sinh", "Square", "StopGradient", "Tan",
    "Tanh",
):
    declare(_name, _U)

_LOG_BASE = _enum("two", "ten", "e")  # mlx::core::Log::Base
declare("Log", _U, ("base",), lambda a: {"base": _LOG_BASE(a[0])})
declare("Sqrt", _U, ("reciprocal",))  # Rsqrt is Sqrt(reciprocal=True)
declare("AsType", _U, ("dtype",))

for _name in (
    "Add", "ArcTan2", "Divide", "FloorDivide", "Greater", "GreaterEqual", "Less", "LessEqual",
    "LogAddExp", "LogicalAnd", "LogicalOr", "Maximum", "Minimum", "Multiply", "NotEqual", "Power",
    "Remainder", "Subtract",
):
    declare(_name, _B)

declare("Equal", _B, ("equal_nan",))  # NaNEqual (array_equal(equal_nan=True)) is Equal(True)
_BITWISE_OP = _enum("and", "or", "xor", "left_shift", "right_shift")  # BitwiseBinary::Op
declare("BitwiseBinary", _B, ("op",), lambda a: {"op": _BITWISE_OP(a[0])})
declare("DivMod", _B, multiple_outputs=True)  # elementwise, two outputs (quotient, remainder)

declare("Select", Family.TERNARY)

_REDUCE_KINDS = _enum("and", "or", "sum", "prod", "min", "max")  # Reduce::ReduceType
declare(
    "Reduce",
    Family.REDUCE,
    ("kind", "axes"),
    lambda a: {"kind": _REDUCE_KINDS(a[0]), "axes": tuple(a[1])},
)
_ARG_REDUCE_KINDS = _enum("argmin", "argmax")  # ArgReduce::ReduceType
declare(
    "ArgReduce",
    Family.REDUCE,
    ("kind", "axis"),
    lambda a: {"kind": _ARG_REDUCE_KINDS(a[0]), "axis": a[1]},
)
declare("LogSumExp", Family.REDUCE)  # over the last axis, kept as size 1
declare("Softmax", Family.REDUCE, ("precise",))  # over the last axis

_SCAN_KINDS = _enum("max", "min", "sum", "prod", "logaddexp")  # Scan::ReduceType
declare(
    "Scan",
    Family.SCAN,
    ("kind", "axis", "reverse", "inclusive"),
    lambda a: {"kind": _SCAN_KINDS(a[0]), "axis": a[1], "reverse": a[2], "inclusive": a[3]},
)

_M = Family.MOVEMENT
# A shapeless export adds the arrays x broadcasts against as extra inputs: (x, *shape_operands).
declare("Broadcast", _M, ("shape",))
# Shapeless export only: broadcast input 0 against the others, except on ignore_axes.
declare("BroadcastAxes", _M, ("ignore_axes",))
declare("Reshape", _M, ("shape",))  # may hold one -1 (shapeless export)
declare("Transpose", _M, ("axes",))
declare("Squeeze", _M, ("axes",))
declare("ExpandDims", _M, ("axes",))
declare("Flatten", _M, ("start_axis", "end_axis"))
declare("Unflatten", _M, ("axis", "shape"))
declare("Slice", _M, ("start", "stop", "strides"))  # Python slice semantics per axis
# The movements that keep every element's row-major index: a reshape, however written.
RESHAPES = frozenset({"Reshape", "ExpandDims", "Squeeze", "Flatten", "Unflatten"})


# The primitives that read affine- or otherwise-quantized weights.
QUANTIZED = frozenset({"QuantizedMatmul", "GatherQMM", "Quantize"})

# The primitives whose results are positions in their input (MLX's VJP of each is zero).
POSITIONS = frozenset({"ArgReduce", "ArgSort", "ArgPartition"})


def keeps_order(primitive: str, params: Mapping[str, Any], shape: Sequence[int]) -> bool:
    """Whether ``primitive`` on an input of ``shape`` keeps every element's row-major index: a
    reshape, or a transpose whose axes longer than one stay in order (permuting only size-1
    axes is a reshape)."""
    if primitive in RESHAPES:
        return True
    if primitive != "Transpose":
        return False
    moved = [a for a in params["axes"] if shape[a] != 1]
    return moved == sorted(moved)

_UPDATE_KINDS = _enum("max", "min", "sum", "prod", "none")  # SliceUpdate / Scatter ReduceType
declare(
    "SliceUpdate",
    _M,
    ("kind", "start", "stop", "strides"),
    lambda a: {"kind": _UPDATE_KINDS(a[0]), "start": a[1], "stop": a[2], "strides": a[3]},
)
declare("Concatenate", _M, ("axis",))
declare("Split", _M, ("indices", "axis"), multiple_outputs=True)
declare("Pad", _M, ("axes", "low_pad", "high_pad"))  # inputs: (x, 0-d pad value)
declare("AsStrided", _M, ("shape", "strides", "offset"))
declare("View", _M, ("dtype",))  # reinterpret bytes; the last axis scales with the itemsize ratio
declare("Full", _M)  # a contiguous copy of its (already broadcast and cast) input

_I = Family.INDEXING
declare("Gather", _I, ("axes", "slice_sizes"))  # inputs: (x, *indices), one per axis in axes
declare("GatherAxis", _I, ("axis",))  # take_along_axis; inputs: (x, indices)
declare(
    "Scatter",
    _I,
    ("kind", "axes"),
    lambda a: {"kind": _UPDATE_KINDS(a[0]), "axes": tuple(a[1])},
)  # inputs: (x, *indices, updates)
_SCATTER_AXIS_KINDS = _enum("sum", "none")  # ScatterAxis::ReduceType
declare(
    "ScatterAxis",
    _I,
    ("kind", "axis"),
    lambda a: {"kind": _SCATTER_AXIS_KINDS(a[0]), "axis": a[1]},
)  # inputs: (x, indices, updates)
declare("MaskedScatter", _I)  # inputs: (x, mask, src) with a leading batch axis on all three
declare("DynamicSlice", _I, ("axes", "slice_size"))  # inputs: (x, start); slice_size is full rank
declare("DynamicSliceUpdate", _I, ("axes",))  # inputs: (x, update, start)

_QUANTIZATION_MODE = _enum("affine", "mxfp4", "mxfp8", "nvfp4")  # mlx::core::QuantizationMode
declare("Matmul", Family.MATMUL)
declare("AddMM", Family.MATMUL, ("alpha", "beta"))  # inputs: (a, b, c): alpha * a @ b + beta * c
# inputs: (a, b, [mask_out], [mask_lhs, mask_rhs]); the operand masks come as a pair or not at all.
declare("BlockMaskedMM", Family.MATMUL, ("block_size",))
declare("GatherMM", Family.MATMUL, ("left_sorted", "right_sorted"))  # (a, b, lhs_idx, rhs_idx)
declare(
    "QuantizedMatmul",
    Family.MATMUL,
    ("group_size", "bits", "mode", "transpose"),
    lambda a: {"group_size": a[0], "bits": a[1], "mode": _QUANTIZATION_MODE(a[2]), "transpose": a[3]},
)  # inputs: (x, w, scales, [biases: affine only])
declare(
    "GatherQMM",
    Family.MATMUL,
    ("group_size", "bits", "mode", "transpose", "left_sorted", "right_sorted"),
    lambda a: {
        "group_size": a[0], "bits": a[1], "mode": _QUANTIZATION_MODE(a[2]), "transpose": a[3],
        "left_sorted": a[4], "right_sorted": a[5],
    },
)  # inputs: (x, w, scales, [biases], lhs_idx, rhs_idx)

declare(
    "Convolution",
    Family.CONVOLUTION,
    ("strides", "padding_lo", "padding_hi", "kernel_dilation", "input_dilation", "groups", "flip"),
)  # inputs: (x [N, *spatial, C_in], w [C_out, *spatial, C_in / groups])

_F = Family.FAST
# RMSNorm/LayerNorm state is (nullptr, eps): the exporter drops the nullptr (the fallback closure).
# Without a weight (bias), MLX passes a 0-d one (zero) so the input count never varies.
declare("RMSNorm", _F, ("eps",))  # inputs: (x, w)
declare("RMSNormVJP", _F, ("eps",), multiple_outputs=True)  # (x, w, g) -> (dx, dw)
declare("LayerNorm", _F, ("eps",))  # inputs: (x, w, b)
declare("LayerNormVJP", _F, ("eps",), multiple_outputs=True)  # (x, w, b, g) -> (dx, dw, db)


def _rope(a: list) -> dict:
    # (nullptr, dims, traditional, base, scale, forward); base is a float in 0.32 (1.0 when the
    # call passed freqs as a third input) but an optional one in the public API, so a layout that
    # dropped it is accepted as base=None.
    if len(a) == 5:
        dims, traditional, base, scale, forward = a
    elif len(a) == 4:
        (dims, traditional, scale, forward), base = a, None
    else:
        raise ValueError(f"RoPE: expected 4 or 5 arguments, got {a!r}")
    return {"dims": dims, "traditional": traditional, "base": base, "scale": scale, "forward": forward}


declare("RoPE", _F, ("dims", "traditional", "base", "scale", "forward"), _rope)  # (x, offset, [freqs])


def _sdpa(a: list) -> dict:
    # (nullptr, scale, do_causal, has_sinks, output_logsumexp, force_fused); force_fused is new in
    # 0.32 and treated as False when absent.
    if len(a) not in (4, 5):
        raise ValueError(f"ScaledDotProductAttention: expected 4 or 5 arguments, got {a!r}")
    scale, do_causal, has_sinks, output_logsumexp = a[:4]
    force_fused = a[4] if len(a) == 5 else False
    return {
        "scale": scale, "do_causal": do_causal, "has_sinks": has_sinks,
        "output_logsumexp": output_logsumexp, "force_fused": force_fused,
    }


# inputs: (q, k, v, [mask broadcast to (B, Hq, Lq, Lk)], [sinks]); outputs: out, [logsumexp].
declare(
    "ScaledDotProductAttention",
    _F,
    ("scale", "do_causal", "has_sinks", "output_logsumexp", "force_fused"),
    _sdpa,
    multiple_outputs=True,
)

declare("RandomBits", Family.RANDOM, ("shape", "width"))  # input: key(s) of shape (..., 2) uint32

_O = Family.OPAQUE
declare("Arange", _O, ("start", "stop", "step", "dtype"), from_outputs={"dtype": _output_dtype})
declare("ArgSort", _O, ("axis",))
declare("Sort", _O, ("axis",))
declare("ArgPartition", _O, ("kth", "axis"))
declare("Partition", _O, ("kth", "axis"))
declare("SearchSorted", _O, ("right",))  # inputs: (sorted 1-D, values)
declare("FFT", _O, ("axes", "inverse", "real", "odd_out"))
declare("Hadamard", _O, ("scale",))  # along the last axis
declare("QRF", _O, multiple_outputs=True)
declare("SVD", _O, ("compute_uv",), multiple_outputs=True)  # (U, S, Vt) or S alone
declare("Inverse", _O, ("tri", "upper"))
declare("Cholesky", _O, ("upper",))
declare("Eig", _O, ("compute_eigenvectors",), multiple_outputs=True)
declare("Eigh", _O, ("uplo", "compute_eigenvectors"), multiple_outputs=True)
declare(
    "Quantize",
    _O,
    ("group_size", "bits", "mode", "dequantize", "dtype"),
    lambda a: {"group_size": a[0], "bits": a[1], "mode": _QUANTIZATION_MODE(a[2]), "dequantize": a[3]},
    from_outputs={"dtype": _output_dtype},  # the dequantized dtype (packed uint32 when quantizing)
    multiple_outputs=True,
)
declare("NumberOfElements", _O, ("axes", "inverted", "dtype"))  # shapeless export only
# mx.depends(inputs, dependencies): passes the first num_outputs inputs through.
declare("Depends", _O, ("num_outputs",), from_outputs={"num_outputs": len}, multiple_outputs=True)

_MATH_MODE = _enum("safe", "relaxed", "fast")  # mlx::core::MathMode


def _custom_kernel(a: list) -> dict:
    # (name, source, grid (3 ints), threadgroup (3 ints), shape_infos, ensure_row_contiguous,
    #  [init_value: an optional float, dropped when empty], scalar_arguments, is_precompiled,
    #  shared_memory, compile_options (the math mode as an int)). 0.32.4 drops init_value even
    # when a metal_kernel call sets it (checked live), so it usually decodes as None.
    if len(a) == 15:
        init_value = a[10]
        rest = a[11:]
    elif len(a) == 14:
        init_value = None
        rest = a[10:]
    else:
        raise ValueError(f"CustomKernel: expected 14 or 15 arguments, got {len(a)}")
    scalar_arguments, is_precompiled, shared_memory, math_mode = rest
    return {
        "kernel_name": a[0], "source": a[1], "grid": tuple(a[2:5]), "threadgroup": tuple(a[5:8]),
        "shape_infos": tuple(tuple(s) for s in a[8]), "ensure_row_contiguous": a[9],
        "init_value": init_value, "scalar_arguments": tuple(scalar_arguments),
        "is_precompiled": is_precompiled, "shared_memory": shared_memory,
        "math_mode": _MATH_MODE(math_mode),
    }


declare(
    "CustomKernel",
    _O,
    (
        "kernel_name", "source", "grid", "threadgroup", "shape_infos", "ensure_row_contiguous",
        "init_value", "scalar_arguments", "is_precompiled", "shared_memory", "math_mode",
        "output_shapes", "output_dtypes",
    ),
    _custom_kernel,
    from_outputs={
        "output_shapes": lambda outs: tuple(s for s, _ in outs),
        "output_dtypes": lambda outs: tuple(t for _, t in outs),
    },
    multiple_outputs=True,
)

# ---------------------------------------------------------------------------------------------
# Collectives (mx.distributed, mlx/distributed/primitives.h). MLX 0.32's exporter cannot report
# them: its factory cuts "Sum AllReduce" at the space, maps "Sum" to Reduce and reads the AllReduce
# through Reduce's state() (std::bad_array_new_length), and has no entry for AllGather, Send or
# Recv. The tracer records them through stand-ins instead (mlxtriton/_collectives.py) and builds
# these equations itself. Each names its group by its size and this process's rank in it; a group
# of one never appears (MLX returns the input itself). Results depend on the other processes'
# values, and each equation is one communication: passes never merge, fold or reorder them.

_C = Family.COLLECTIVE
declare("AllReduce", _C, ("kind", "size", "rank"))  # kind: sum, max or min over the group
declare("AllGather", _C, ("size", "rank"))  # concatenated along axis 0 in rank order (0-d: (size,))
declare("ReduceScatter", _C, ("kind", "size", "rank"))  # kind: sum; this rank's part of axis 0
declare("Send", _C, ("dst", "size", "rank"))  # sends its input to rank dst; outputs the input
declare("Recv", _C, ("src", "shape", "dtype", "size", "rank"))  # no inputs: receives from rank src
# mlx.nn's sum_gradients(group): the identity, whose VJP all-sums the cotangent over the group.
# MLX builds it as an mx.custom_function (CustomTransforms, which the exporter cannot report
# either); the sharded linear layers ("all-to-sharded") apply it to their input.
declare("SumGradients", _C, ("size", "rank"))
