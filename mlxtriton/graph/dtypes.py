"""Graph layer: the dtypes of graph values, named by string, and conversions to MLX and NumPy.

Graph IR stores a dtype as its MLX name (``"float32"``, ``"bfloat16"``, ...) so that vars stay
hashable, picklable and printable. May import mlx and numpy only.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

# name -> (mx.Dtype, short name used by the printer)
_TABLE: dict[str, tuple[mx.Dtype, str]] = {
    "bool": (mx.bool_, "bool"),
    "uint8": (mx.uint8, "u8"),
    "uint16": (mx.uint16, "u16"),
    "uint32": (mx.uint32, "u32"),
    "uint64": (mx.uint64, "u64"),
    "int8": (mx.int8, "i8"),
    "int16": (mx.int16, "i16"),
    "int32": (mx.int32, "i32"),
    "int64": (mx.int64, "i64"),
    "float16": (mx.float16, "f16"),
    "bfloat16": (mx.bfloat16, "bf16"),
    "float32": (mx.float32, "f32"),
    "float64": (mx.float64, "f64"),
    "complex64": (mx.complex64, "c64"),
}

DTYPES: tuple[str, ...] = tuple(_TABLE)
FLOATING = frozenset({"float16", "bfloat16", "float32", "float64"})
INTEGER = frozenset({"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64"})
SIGNED = frozenset({"int8", "int16", "int32", "int64"})
INEXACT = FLOATING | {"complex64"}

FROM_MX = {mx_dtype: name for name, (mx_dtype, _) in _TABLE.items()}


def from_mx(dtype: mx.Dtype) -> str:
    """The graph name of an MLX dtype."""
    try:
        return FROM_MX[dtype]
    except KeyError:
        raise TypeError(f"unsupported MLX dtype {dtype}") from None


def to_mx(name: str) -> mx.Dtype:
    """The MLX dtype of a graph dtype name."""
    return _TABLE[check(name)][0]


def short(name: str) -> str:
    """The printer's short name: ``f32``, ``bf16``, ``i32``."""
    return _TABLE[name][1]


def check(name: str) -> str:
    if name not in _TABLE:
        raise TypeError(f"unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return name


def itemsize(name: str) -> int:
    return to_mx(name).size


def to_numpy(array: mx.array) -> np.ndarray:
    """An exact NumPy copy of an MLX array; bfloat16 becomes float32 (exact widening)."""
    if array.dtype == mx.bfloat16:
        array = array.astype(mx.float32)
    return np.array(array, copy=True)


def array_digest(array: mx.array) -> bytes:
    """A digest of an array's dtype, shape and bytes: equal constants digest equal."""
    import hashlib

    if array.dtype == mx.bfloat16:
        raw = np.array(array.view(mx.uint16))
    else:
        raw = np.array(array)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{from_mx(array.dtype)}{tuple(array.shape)}".encode())
    h.update(np.ascontiguousarray(raw).tobytes())
    return h.digest()
