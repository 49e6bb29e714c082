"""Generation with mlx-lm models: key-value caches whose shapes stay still from step to step.

Public API layer. Imports mlx and mlx_lm (an optional dependency: ``pip install mlx-lm``), nothing
from mlxtriton's layers: the objects here speak mlx-lm's cache protocol, and mlxtriton's runtime
knows them only through the two ``__mlxtriton_*__`` hooks described below.

mlx-lm's caches keep the write position as a Python int and hand attention a slice whose length
grows by one token per step, so every decode step has new shapes and a traced or compiled model
rebuilds on every step. The caches here keep

- the write position ``offset`` as a 0-d int32 array (mlx-lm's models accept an array offset, as
  its ``BatchKVCache`` already uses), written with a dynamic slice update;
- a buffer whose capacity grows in buckets (``step`` tokens, or doubling), which attention reads
  whole under the boolean mask ``make_mask`` returns for every query length, one token included.

Every shape a call sees then depends only on the number of new tokens and the capacity, and one
build serves every decode step inside a bucket. Capacity decisions taken while a model runs
depend only on static facts (shapes, capacity, the number of new tokens ``N`` against the static
``headroom``), never on the offset's value; decisions that need the value are taken eagerly, before
a call, in ``__mlxtriton_prepare__``, from a host-side count of the tokens written.

The protocol with mlxtriton's runtime:

- ``__mlxtriton_counters__ = ("_host_offset",)``: Python ints that are not part of a trace's cache
  key; the runtime records how much a traced call changed them and adds the same amount on every
  later call that the same trace serves. Nothing traced depends on their values.
- ``__mlxtriton_prepare__()``: called on every cache before every call, outside any trace. Grows
  the buffer when fewer than ``headroom`` free slots remain (one rebuild per bucket), and brings a
  sliding-window buffer back to its steady capacity after a long prefill chunk.
- every other Python scalar attribute (``step``, ``headroom``, ``max_size``, ``bits``, ...) is part
  of the cache key.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Optional

import mlx.core as mx
import mlx.nn as nn

try:
    from mlx_lm.models import cache as _lm_cache
except ImportError as error:  # pragma: no cover - exercised only without mlx-lm
    raise ImportError("mlxtriton.lm needs mlx-lm: pip install mlx-lm") from error

__all__ = [
    "StaticKVCache", "StaticQuantizedKVCache", "StaticRotatingKVCache", "StaticBatchKVCache",
    "StaticBatchRotatingKVCache", "CacheList",
    "load_prompt_cache", "make_prompt_cache", "static_prompt_cache",
]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _pad_axis2(x: mx.array, capacity: int) -> mx.array:
    """``x`` with zeros appended along axis 2 up to ``capacity`` slots."""
    extra = capacity - x.shape[2]
    return mx.concatenate([x, mx.zeros((*x.shape[:2], extra, *x.shape[3:]), x.dtype)], axis=2)


def _write(buffer: mx.array, update: mx.array, start: mx.array) -> mx.array:
    """``buffer`` with ``update`` written along axis 2 from the dynamic position ``start``.

    A scatter along the axis rather than a dynamic slice update: on the GPU MLX runs the scatter
    as one kernel over the update's elements, where a slice update at an array position is two
    (the position's offset, then a copy whose grid spans the whole buffer:
    mlx/backend/cuda/slicing.cpp ``compute_dynamic_offset``, copy/copy_general_dynamic.cu). The
    buffer is donated in both forms, so neither copies it (evidence: benchmarks/results/
    decode_ab_h100.json, the 1B decode step with either write)."""
    n = update.shape[2]
    slots = start.reshape(1) if n == 1 else start + mx.arange(n, dtype=start.dtype)
    return mx.put_along_axis(buffer, slots.reshape(1, 1, n, *(1,) * (buffer.ndim - 3)), update, axis=2)


def _causal_mask(offset: mx.array, n: int, capacity: int, window: Optional[int]) -> mx.array:
    """(n, capacity) booleans: query ``i`` (position offset + i) sees slot ``j`` (position j)."""
    query = offset + mx.arange(n, dtype=mx.int32)[:, None]
    key = mx.arange(capacity, dtype=mx.int32)[None]
    mask = key <= query
    if window is not None:
        mask = mask & (key > query - window)
    return mask


class _ArrayOffsetCache(_lm_cache._BaseCache):
    """What the still-shaped caches share: the offset as an array beside its host-side count.

    Subclasses hold ``keys`` (None before the first write) and list their arrays in
    ``_buffers()``.
    """

    __mlxtriton_counters__ = ("_host_offset",)

    def __init__(self, headroom: int):
        if headroom < 1:
            raise ValueError(f"headroom must be positive (got {headroom})")
        self.headroom = headroom
        self.keys = None
        self.values = None
        self.offset = mx.array(0, mx.int32)
        self._host_offset = 0

    @property
    def capacity(self) -> int:
        """Slots allocated per sequence (0 before the first write)."""
        return 0 if self.empty() else self._buffers()[0].shape[2]

    def size(self) -> int:
        return self._host_offset

    def empty(self) -> bool:
        return self.keys is None

    # The last trim: (offset before, tokens trimmed, offset after). mlx-lm trims every layer's
    # cache by the same count in turn (speculative decoding), and caches that held one offset
    # array hold one again after it (`make_prompt_cache`).
    _last_trim: tuple = (None, 0, None)

    def trim(self, n: int) -> int:
        n = min(self._host_offset, n)
        self._host_offset -= n
        before, count, after = _ArrayOffsetCache._last_trim
        if self.offset is not before or n != count:
            after = self.offset - n
            _ArrayOffsetCache._last_trim = (self.offset, n, after)
        self.offset = after
        return n

    @property
    def nbytes(self) -> int:
        return 0 if self.empty() else sum(b.nbytes for b in self._buffers())

    def _allocate(self, keys: mx.array, values: mx.array, capacity: int) -> None:
        """Zeroed key and value buffers of ``capacity`` slots, shaped as ``keys`` and ``values``."""
        self.keys = mx.zeros((*keys.shape[:2], capacity, keys.shape[3]), keys.dtype)
        self.values = mx.zeros((*values.shape[:2], capacity, values.shape[3]), values.dtype)

    def _reserve(self, keys: mx.array, values: mx.array) -> int:
        """The buffers allocated, or resized (`_resize`), to the capacity a write of ``keys``
        plans (`_planned_capacity`), after the prepare hook; returns that capacity."""
        self.__mlxtriton_prepare__()
        capacity = self._planned_capacity(keys.shape[2])
        if self.empty():
            self._allocate(keys, values, capacity)
        elif capacity != self.capacity:
            self._resize(capacity)
        return capacity

    def _set_offset(self, offset) -> None:
        self.offset = mx.array(offset, mx.int32)
        self._host_offset = int(self.offset.item())

    def _pad_buffers(self, buffers: Any, capacity: int) -> Any:
        """One buffer (an array) or a quantized triple padded to ``capacity`` slots."""
        if isinstance(buffers, tuple):
            return tuple(_pad_axis2(b, capacity) for b in buffers)
        return _pad_axis2(buffers, capacity)


class _BucketedCache(_ArrayOffsetCache):
    """A linear buffer (position p in slot p) whose capacity grows in buckets."""

    def __init__(self, step: int, headroom: int, doubling: bool):
        if step < 1:
            raise ValueError(f"step must be positive (got {step})")
        super().__init__(headroom)
        self.step = step
        self.doubling = doubling

    def _capacity(self, needed: int) -> int:
        """The policy's capacity for at least ``needed`` tokens: a multiple of ``step``, or
        ``step`` times a power of two when doubling."""
        if not self.doubling:
            return _round_up(needed, self.step)
        capacity = self.step
        while capacity < needed:
            capacity *= 2
        return capacity

    def _planned_capacity(self, n: int) -> int:
        """The capacity a write of ``n`` tokens will leave: decided from static facts only."""
        if self.empty():
            return self._capacity(n + self.headroom)
        if n > self.headroom:  # a prefill chunk: grow by enough whatever the offset
            return self._capacity(self.capacity + n + self.headroom)
        return self.capacity  # __mlxtriton_prepare__ left at least headroom free slots

    def __mlxtriton_prepare__(self) -> None:
        if not self.empty() and self.capacity - self._host_offset < self.headroom:
            self._resize(self._capacity(self._host_offset + self.headroom))

    def _fill(self, keys: Any, values: Any) -> None:
        """Holds ``keys`` and ``values`` (positions 0, 1, ... in order along axis 2; arrays or
        quantized triples) as if written by earlier calls."""
        n = (keys[0] if isinstance(keys, tuple) else keys).shape[2]
        capacity = self._capacity(n + self.headroom)
        self.keys = self._pad_buffers(keys, capacity)
        self.values = self._pad_buffers(values, capacity)
        self._set_offset(n)

    def _buffers(self):
        return (self.keys, self.values)

    def _resize(self, capacity: int) -> None:
        self.keys = self._pad_buffers(self.keys, capacity)
        self.values = self._pad_buffers(self.values, capacity)

    def _append(self, keys: mx.array, values: mx.array, start: mx.array) -> None:
        """Writes ``keys`` and ``values`` from slot ``start`` (`_reserve` first)."""
        self._reserve(keys, values)
        self.keys = _write(self.keys, keys, start)
        self.values = _write(self.values, values, start)
        self._host_offset += keys.shape[2]

    def make_mask(self, N: int, return_array: bool = False, window_size: Optional[int] = None):
        """The mask over the whole buffer for ``N`` new tokens (always an array, N == 1 too)."""
        self.__mlxtriton_prepare__()
        return _causal_mask(self.offset, N, self._planned_capacity(N), window_size)

    def is_trimmable(self) -> bool:
        return True


class StaticKVCache(_BucketedCache):
    """mlx-lm's ``KVCache`` with a still shape: an array offset, a bucketed buffer read whole.

    Args:
        step: capacity grows in multiples of ``step`` tokens.
        headroom: free slots kept ahead of the offset before a call (writes of up to
            ``headroom`` tokens never change the capacity inside a call).
        doubling: grow to ``step`` times a power of two instead of the next multiple.

    Example:
        >>> cache = StaticKVCache()
        >>> keys = mx.ones((1, 2, 7, 16))  # batch, kv heads, tokens, head dimension
        >>> cache.make_mask(7).shape  # asked before the write, as models do
        (7, 256)
        >>> k, v = cache.update_and_fetch(keys, keys)
        >>> k.shape, cache.offset.item(), cache.make_mask(1).shape
        ((1, 2, 256, 16), 7, (1, 256))
    """

    def __init__(self, step: int = 256, headroom: int = 16, doubling: bool = False):
        super().__init__(step, headroom, doubling)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self._append(keys, values, self.offset)
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.step, self.headroom, self.doubling

    @state.setter
    def state(self, v):
        self.keys, self.values, offset, self.step, self.headroom, self.doubling = v
        self._set_offset(offset)

    def to_quantized(self, group_size: int = 64, bits: int = 4) -> "StaticQuantizedKVCache":
        """The same cache with its buffer quantized (what ``generate_step(kv_bits=...)`` asks)."""
        quantized = StaticQuantizedKVCache(group_size, bits, self.step, self.headroom,
                                           self.doubling)
        quantized.offset, quantized._host_offset = self.offset, self._host_offset
        if not self.empty():
            quantized.keys = mx.quantize(self.keys, group_size=group_size, bits=bits)
            quantized.values = mx.quantize(self.values, group_size=group_size, bits=bits)
        return quantized


    @classmethod
    def merge(cls, caches: list) -> "StaticBatchKVCache":
        """One batch cache holding these caches' sequences (what mlx-lm's ``BatchGenerator``
        asks each layer's cache of the sequences it batches)."""
        return StaticBatchKVCache.merge(caches)


class StaticQuantizedKVCache(_BucketedCache):
    """mlx-lm's ``QuantizedKVCache`` with a still shape (see ``StaticKVCache``).

    Keys and values are each a (packed, scales, biases) triple of buffers; ``bits`` and
    ``group_size`` route mlx-lm's attention to its quantized path.
    """

    def __init__(self, group_size: int = 64, bits: int = 8, step: int = 256,
                 headroom: int = 16, doubling: bool = False):
        super().__init__(step, headroom, doubling)
        self.group_size = group_size
        self.bits = bits

    def _buffers(self):
        return (*self.keys, *self.values)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.__mlxtriton_prepare__()
        n = keys.shape[2]
        capacity = self._planned_capacity(n)
        keys = mx.quantize(keys, group_size=self.group_size, bits=self.bits)
        values = mx.quantize(values, group_size=self.group_size, bits=self.bits)
        if self.empty():
            self.keys = tuple(mx.zeros((*k.shape[:2], capacity, k.shape[3]), k.dtype) for k in keys)
            self.values = tuple(mx.zeros((*v.shape[:2], capacity, v.shape[3]), v.dtype)
                                for v in values)
        elif capacity != self.capacity:
            self._resize(capacity)
        self.keys = tuple(_write(b, k, self.offset) for b, k in zip(self.keys, keys))
        self.values = tuple(_write(b, v, self.offset) for b, v in zip(self.values, values))
        self.offset = self.offset + n
        self._host_offset += n
        return self.keys, self.values

    @property
    def state(self):
        return (self.keys, self.values, self.offset, self.group_size, self.bits, self.step,
                self.headroom, self.doubling)

    @state.setter
    def state(self, v):
        (self.keys, self.values, offset, self.group_size, self.bits, self.step, self.headroom,
         self.doubling) = v
        self._set_offset(offset)


class _Batch:
    """What the batch caches share: sequences left-padded to a common write slot (a 0-d int32
    array beside its host-side count ``_host_offset``), each sequence's position in ``offset`` (a
    (B,) int32 array, what RoPE reads), and mlx-lm's batch bookkeeping around them."""

    def _start_batch(self, left_padding) -> None:
        self.left_padding = mx.array(left_padding, mx.int32)
        self.offset = -self.left_padding
        self._set_slot(0)
        self._right_padding = None

    def _set_slot(self, slot: int) -> None:
        self.slot = mx.array(slot, mx.int32)
        self._host_offset = slot

    def _advance(self, n: int) -> None:
        self.slot = self.slot + n
        self.offset = self.offset + n

    def prepare(self, *, left_padding=None, lengths=None, right_padding=None) -> None:
        """As mlx-lm's: more left padding before the first write; right padding (prompts of
        different lengths written together) to move to the left in ``finalize``."""
        if left_padding is not None:
            if not self.empty():
                raise ValueError(f"left padding can only be added to an empty {type(self).__name__}")
            left_padding = mx.array(left_padding, mx.int32)
            self.left_padding = self.left_padding + left_padding
            self.offset = self.offset - left_padding
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding, mx.int32)

    def trim(self, n: int) -> int:
        n = min(self._host_offset, n)
        self._host_offset -= n
        self.slot = self.slot - n
        self.offset = self.offset - n
        return n

    def _keep_rows(self, batch_indices) -> None:
        """Keeps the given sequences' rows of every array."""
        if not isinstance(batch_indices, mx.array):
            batch_indices = mx.array(batch_indices, mx.int32)
        if not self.empty():
            self.keys = self.keys[batch_indices]
            self.values = self.values[batch_indices]
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]

    def _set_batch_state(self, slot) -> None:
        self._set_slot(int(mx.array(slot).item()))
        self._right_padding = None


class StaticBatchKVCache(_Batch, _BucketedCache):
    """mlx-lm's ``BatchKVCache`` (batched generation, ``batch_generate`` and ``BatchGenerator``)
    with a still shape.

    Sequences are left-justified by padding as in mlx-lm: sequence ``b``'s tokens end at the
    common write slot, its first ``left_padding[b]`` slots hold no token. The write slot is a
    0-d int32 array beside its host-side count, the buffer grows in buckets as ``StaticKVCache``'s
    does, ``offset`` is each sequence's position (a (B,) int32 array, what RoPE reads), and
    ``make_mask`` hides each sequence's padding. The batch operations mlx-lm's batching performs
    between calls (``prepare``, ``finalize``, ``filter``, ``extend``, ``extract``, ``merge``)
    run eagerly and keep the capacity a bucket; only a new batch size or bucket is a new build.

    Args:
        left_padding: the padding slots of each sequence.
        step, headroom, doubling: the bucket policy (see ``StaticKVCache``).
    """

    def __init__(self, left_padding: list[int], step: int = 256, headroom: int = 16,
                 doubling: bool = False):
        super().__init__(step, headroom, doubling)
        self._start_batch(left_padding)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self._append(keys, values, self.slot)
        self._advance(keys.shape[2])
        return self.keys, self.values

    def make_mask(self, N: int, return_array: bool = False, window_size: Optional[int] = None):
        """(B, 1, N, capacity) booleans: the causal mask over the buffer without each sequence's
        padding slots."""
        self.__mlxtriton_prepare__()
        causal = _causal_mask(self.slot, N, self._planned_capacity(N), window_size)
        keys = mx.arange(causal.shape[1], dtype=mx.int32)
        return causal[None, None] & (self.left_padding[:, None, None, None] <= keys)

    def finalize(self) -> None:
        """Rolls each right-padded sequence so its tokens end at the write slot (as mlx-lm's:
        the slots rolled in from the buffer's end become padding)."""
        if self._right_padding is not None:
            padding = self._right_padding
            self.keys = _lm_cache.dynamic_roll(self.keys, padding[:, None], axis=2)
            self.values = _lm_cache.dynamic_roll(self.values, padding[:, None], axis=2)
            self.offset = self.offset - padding
            self.left_padding = self.left_padding + padding
            self._right_padding = None

    def size(self) -> int:
        return self._host_offset

    def _shifted(self, shift: int, capacity: int) -> tuple[mx.array, mx.array]:
        """The buffers moved ``shift`` slots along axis 2 (left where negative), ``capacity``
        slots long."""
        out = []
        for b in self._buffers():
            if shift < 0:
                b = b[:, :, -shift:]
            elif shift > 0:
                b = mx.pad(b, [(0, 0), (0, 0), (shift, 0), (0, 0)])
            b = b[:, :, :capacity]
            out.append(_pad_axis2(b, capacity) if b.shape[2] < capacity else b)
        return out[0], out[1]

    def filter(self, batch_indices) -> None:
        """Keeps the given sequences, and drops the padding slots they all share."""
        self._keep_rows(batch_indices)
        shared = min(self.left_padding.tolist()) if self.left_padding.size else 0
        if shared > 0:
            if not self.empty():
                self.keys, self.values = self._shifted(-shared, self.capacity)
            self._host_offset -= shared
            self.slot = self.slot - shared
            self.left_padding = self.left_padding - shared

    def extend(self, other: "StaticBatchKVCache") -> None:
        """Appends ``other``'s sequences, both right-justified to the later write slot."""
        if not isinstance(other, StaticBatchKVCache):
            raise TypeError(f"a StaticBatchKVCache extends with another, not {type(other).__name__}")
        if self.empty() and other.empty():
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        slot = max(self._host_offset, other._host_offset)
        capacity = max(self.capacity, other.capacity, self._capacity(slot + self.headroom))
        parts = []
        for c in (self, other):
            shift = slot - c._host_offset
            if c.empty():
                like = (other if c is self else self)
                batch = c.offset.shape[0]
                k = mx.zeros((batch, *like.keys.shape[1:2], capacity, like.keys.shape[3]), like.keys.dtype)
                v = mx.zeros((batch, *like.values.shape[1:2], capacity, like.values.shape[3]),
                             like.values.dtype)
            else:
                k, v = c._shifted(shift, capacity)
            parts.append((k, v, c.offset, c.left_padding + shift))
        self.keys, self.values, self.offset, self.left_padding = map(mx.concatenate, zip(*parts))
        self._set_slot(slot)

    def extract(self, idx: int) -> StaticKVCache:
        """Sequence ``idx`` alone, in a ``StaticKVCache`` of the same bucket policy."""
        cache = StaticKVCache(self.step, self.headroom, self.doubling)
        padding = self.left_padding[idx].item()
        length = self._host_offset - padding
        if not self.empty() and length > 0:
            capacity = cache._capacity(length + self.headroom)
            cache.keys = _pad_axis2(self.keys[idx:idx + 1, :, padding:self._host_offset], capacity)
            cache.values = _pad_axis2(self.values[idx:idx + 1, :, padding:self._host_offset],
                                      capacity)
            cache._set_offset(length)
        return cache

    @classmethod
    def merge(cls, caches: list) -> "StaticBatchKVCache":
        """One batch cache of the given single-sequence caches (``StaticKVCache`` or mlx-lm's
        ``KVCache``), right-justified; the bucket policy of the first ``StaticKVCache``."""
        policy = next((c for c in caches if isinstance(c, _BucketedCache)), None)
        step, headroom, doubling = ((policy.step, policy.headroom, policy.doubling)
                                    if policy is not None else (256, 16, False))
        lengths = [c.size() for c in caches]
        longest = max(lengths)
        cache = cls([longest - n for n in lengths], step, headroom, doubling)
        if longest == 0:
            return cache
        full = [c for c in caches if c.size() > 0]
        kv_heads, dk = full[0].keys.shape[1], full[0].keys.shape[3]
        dv, dtype = full[0].values.shape[3], full[0].keys.dtype
        capacity = cache._capacity(longest + headroom)
        keys, values = [], []
        for n, c in zip(lengths, caches):
            if n == 0:
                keys.append(mx.zeros((1, kv_heads, capacity, dk), dtype))
                values.append(mx.zeros((1, kv_heads, capacity, dv), dtype))
                continue
            pad = [(0, 0), (0, 0), (longest - n, capacity - longest), (0, 0)]
            keys.append(mx.pad(c.keys[:, :, :n], pad))
            values.append(mx.pad(c.values[:, :, :n], pad))
        cache.keys = mx.concatenate(keys)
        cache.values = mx.concatenate(values)
        cache.offset = cache.offset + longest
        cache._set_slot(longest)
        return cache

    @property
    def state(self):
        return (self.keys, self.values, self.offset, self.left_padding, self.slot, self.step,
                self.headroom, self.doubling)

    @state.setter
    def state(self, v):
        (self.keys, self.values, self.offset, self.left_padding, slot, self.step, self.headroom,
         self.doubling) = v
        self._set_batch_state(slot)


class StaticRotatingKVCache(_ArrayOffsetCache):
    """mlx-lm's ``RotatingKVCache`` (sliding-window attention, ``max_kv_size``) with a still shape.

    The first ``keep`` positions live in slots ``0 .. keep - 1`` forever; the others in a circular
    buffer after them: position ``p >= keep`` in slot ``keep + (p - keep) % (capacity - keep)``.
    The steady capacity is ``keep + max_size + headroom - 1``, enough for a write of up to
    ``headroom`` tokens to leave every query its last ``max_size`` positions. A longer write (a
    prefill chunk of ``N`` tokens) first re-lays the buffer out at ``keep + max_size + N - 1``
    slots; ``__mlxtriton_prepare__`` brings it back to the steady capacity before the next call.

    Each query sees what mlx-lm's rotating cache shows it: with ``keep=0`` the positions in
    ``(q - window, q]``; with kept tokens, a decoded token sees the kept positions and the last
    ``max_size - keep``, and a prefill chunk the mask mlx-lm builds over its trimmed buffer (a
    window of ``max_size``; once ``max_size`` tokens are cached, kept position ``k`` is seen by the
    chunk's first ``k + 1`` queries and the ``keep`` oldest positions of the window by none).

    Args:
        max_size: the window, in tokens.
        keep: tokens kept at the front (mlx-lm's ``max_kv_size`` caches keep 4).
        headroom: the longest write served without re-laying the buffer out.
    """

    def __init__(self, max_size: int, keep: int = 0, headroom: int = 16):
        if not 0 <= keep < max_size:
            raise ValueError(f"keep must be in [0, max_size) (got keep={keep}, max_size={max_size})")
        super().__init__(headroom)
        self.max_size = max_size
        self.keep = keep

    def _buffers(self):
        return (self.keys, self.values)

    def _planned_capacity(self, n: int) -> int:
        return self.keep + self.max_size + max(n, self.headroom) - 1

    def __mlxtriton_prepare__(self) -> None:
        steady = self._planned_capacity(1)
        if not self.empty() and self.capacity != steady:
            self._resize(steady)

    def _slot_positions(self, end: mx.array, capacity: int) -> mx.array:
        """The position each slot holds once ``end`` tokens are written (negative: none)."""
        keep, slots = self.keep, mx.arange(capacity, dtype=mx.int32)
        ring = end - keep - 1 - (end - keep - 1 - (slots - keep)) % (capacity - keep)
        if keep == 0:
            return ring
        return mx.where(slots < keep, mx.where(slots < end, slots, -1),
                        mx.where(ring >= 0, ring + keep, -1))

    def _slot_of(self, positions: mx.array, capacity: int) -> mx.array:
        """The slot holding each position in a buffer of ``capacity`` slots."""
        keep = self.keep
        ring = keep + (positions - keep) % (capacity - keep)
        return ring if keep == 0 else mx.where(positions < keep, mx.maximum(positions, 0), ring)

    def _resize(self, capacity: int) -> None:
        """Move the buffer to ``capacity`` slots, keeping the latest positions (array ops).

        A new slot whose position the old buffer no longer holds receives a stale entry; no query
        sees it: that position lies more than the old capacity (at least ``max_size``) behind the
        offset, outside every window.
        """
        self._gather(self._slot_of(self._slot_positions(self._index(), capacity), self.capacity))

    def _index(self) -> mx.array:
        """The write position: the next token's position (its slot modulo the capacity)."""
        return self.offset

    def _fill(self, keys: mx.array, values: mx.array, offset: int) -> None:
        """Holds the window mlx-lm's rotating cache keeps after ``offset`` tokens, in temporal
        order along axis 2 (the ``keep`` first positions, then the latest ones), as if written
        by earlier calls. Slots of positions it no longer holds stay zero: no query sees them."""
        held = keys.shape[2]
        kept = min(held, self.keep)
        capacity = self._planned_capacity(1)
        ring = min(held - kept, capacity - self.keep)  # the latest positions, as many as fit
        positions = list(range(kept)) + list(range(offset - ring, offset))
        keys = mx.concatenate([keys[..., :kept, :], keys[..., held - ring:, :]], axis=2)
        values = mx.concatenate([values[..., :kept, :], values[..., held - ring:, :]], axis=2)
        slots = self._slot_of(mx.array(positions, mx.int32), capacity)[None, None, :, None]
        self.keys = mx.put_along_axis(
            mx.zeros((*keys.shape[:2], capacity, keys.shape[3]), keys.dtype), slots, keys, axis=2)
        self.values = mx.put_along_axis(
            mx.zeros((*values.shape[:2], capacity, values.shape[3]), values.dtype), slots, values,
            axis=2)
        self._set_offset(offset)

    def _gather(self, slots: mx.array) -> None:
        """The buffers read at ``slots`` along axis 2 (one row of slots, or one per sequence)."""
        index = slots[None, None, :, None] if slots.ndim == 1 else slots[:, None, :, None]
        self.keys = mx.take_along_axis(self.keys, index, axis=2)
        self.values = mx.take_along_axis(self.values, index, axis=2)

    def _store(self, keys: mx.array, values: mx.array) -> None:
        """Writes ``keys`` and ``values`` from the write position, around the buffer's end."""
        capacity = self._reserve(keys, values)
        n = keys.shape[2]
        if n == 1:
            start = self._slot_of(self._index(), capacity)
            self.keys = _write(self.keys, keys, start)
            self.values = _write(self.values, values, start)
        else:  # the slots of a chunk may wrap around the end of the buffer
            slots = self._slot_of(self._index() + mx.arange(n, dtype=mx.int32), capacity)
            slots = slots[None, None, :, None]
            self.keys = mx.put_along_axis(self.keys, slots, keys, axis=2)
            self.values = mx.put_along_axis(self.values, slots, values, axis=2)
        self._host_offset += n

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self._store(keys, values)
        self.offset = self.offset + keys.shape[2]
        return self.keys, self.values

    def make_mask(self, N: int, return_array: bool = False, window_size: Optional[int] = None):
        window = window_size or self.max_size
        if window > self.max_size:
            raise ValueError(f"window_size {window_size} exceeds the cache's max_size "
                             f"{self.max_size}")
        if self.keep and window_size is not None:
            raise ValueError("StaticRotatingKVCache with kept tokens takes no window_size (mlx-lm's "
                             "models ask none of a max_kv_size cache)")
        self.__mlxtriton_prepare__()
        index = self._index()
        positions = self._slot_positions(index + N, self._planned_capacity(N))[None]
        query = index + mx.arange(N, dtype=mx.int32)[:, None]
        seen = (positions >= 0) & (positions <= query)
        if not self.keep:
            return seen & (positions > query - window)
        keep, size = self.keep, self.max_size
        if N == 1:  # the kept positions and the last max_size - keep
            return seen & ((positions < keep) | (positions > query - (size - keep)))
        # A chunk, over mlx-lm's buffer trimmed to its kept tokens and the last max_size - 1 - keep
        # once max_size tokens are cached: its mask is a window over buffer indices.
        window = seen & (positions > query - size)
        trimmed = index >= size
        oldest = index - (size - 1) + keep  # the oldest window position the trimmed buffer holds
        kept = (positions < keep) & (query - index <= positions)
        return mx.where(trimmed, kept | (window & (positions >= oldest)), window)

    @classmethod
    def merge(cls, caches: list) -> "StaticBatchRotatingKVCache":
        """One batch cache holding these caches' sequences (see ``StaticKVCache.merge``)."""
        return StaticBatchRotatingKVCache.merge(caches)

    def size(self) -> int:
        return min(self._host_offset, self.max_size)

    def is_trimmable(self) -> bool:
        return self._host_offset < self.max_size

    @property
    def state(self):
        return self.keys, self.values, self.offset, self.max_size, self.keep, self.headroom

    @state.setter
    def state(self, v):
        self.keys, self.values, offset, self.max_size, self.keep, self.headroom = v
        self._set_offset(offset)


class StaticBatchRotatingKVCache(_Batch, StaticRotatingKVCache):
    """mlx-lm's ``BatchRotatingKVCache`` (batched generation with sliding-window layers) with a
    still shape.

    One circular buffer for the batch, indexed by a common write index ``slot`` (a 0-d int32
    array beside its host-side count): index ``j`` lives in slot ``j % capacity``. Sequence ``b``'s
    tokens are the indices from ``left_padding[b]`` on; ``offset`` holds each sequence's position
    (a (B,) int32 array, what RoPE reads). Each query sees the indices of its window that belong
    to its sequence. Right-padded prompts (mlx-lm's ``prepare(lengths=..., right_padding=...)``)
    are written without evicting anything until ``finalize`` moves each sequence's tokens to end
    at the write index; the next call brings the buffer back to its steady capacity.
    """

    def __init__(self, max_size: int, left_padding: list[int], keep: int = 0, headroom: int = 16):
        if keep != 0:
            raise ValueError(f"StaticBatchRotatingKVCache keeps no tokens (got keep={keep}), as "
                             "mlx-lm's BatchRotatingKVCache")
        super().__init__(max_size, keep, headroom)
        self._start_batch(left_padding)

    def _index(self) -> mx.array:
        return self.slot

    def _planned_capacity(self, n: int) -> int:
        if self._right_padding is not None and not self.empty():
            return self.capacity + n  # right-padded prompts: nothing is evicted before finalize
        return super()._planned_capacity(n)

    def __mlxtriton_prepare__(self) -> None:
        if self._right_padding is None:
            super().__mlxtriton_prepare__()

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self._store(keys, values)
        self._advance(keys.shape[2])
        return self.keys, self.values

    def make_mask(self, N: int, return_array: bool = False, window_size: Optional[int] = None):
        """(B, 1, N, capacity) booleans: each sequence's window over the buffer."""
        mask = super().make_mask(N, window_size=window_size)
        positions = self._slot_positions(self.slot + N, mask.shape[-1])
        return mask[None, None] & (self.left_padding[:, None, None, None] <= positions)

    def _shifted(self, shift) -> None:
        """Moves each sequence ``shift`` indices later (a (B,) array, or one int for all): the
        slot of index ``j`` receives what index ``j - shift`` held."""
        indices = self._slot_positions(self.slot, self.capacity)
        if isinstance(shift, mx.array) and shift.ndim == 1:
            indices = indices[None] - shift[:, None]
        else:
            indices = indices - shift
        self._gather(indices % self.capacity)

    def finalize(self) -> None:
        """Moves each right-padded sequence's tokens to end at the write index."""
        if self._right_padding is not None:
            padding = self._right_padding
            self._shifted(padding)
            self.offset = self.offset - padding
            self.left_padding = self.left_padding + padding
            self._right_padding = None

    def filter(self, batch_indices) -> None:
        """Keeps the given sequences."""
        self._keep_rows(batch_indices)

    def _steady(self) -> None:
        if self._right_padding is not None:
            raise ValueError("finalize() the StaticBatchRotatingKVCache before batching it further")
        self.__mlxtriton_prepare__()

    def extend(self, other: "StaticBatchRotatingKVCache") -> None:
        """Appends ``other``'s sequences, both moved to the later write index."""
        if not isinstance(other, StaticBatchRotatingKVCache) or other.max_size != self.max_size:
            raise TypeError("a StaticBatchRotatingKVCache extends with another of the same max_size")
        if self.empty() and other.empty():
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            return
        slot = max(self._host_offset, other._host_offset)
        for c in (self, other):
            if not c.empty():
                c._steady()
        parts = []
        for c in (self, other):
            if c.empty():
                like = other if c is self else self
                zeros = [mx.zeros((c.offset.shape[0], *b.shape[1:]), b.dtype) for b in like._buffers()]
                parts.append((*zeros, c.offset, c.left_padding + slot))
                continue
            shift = slot - c._host_offset
            c.slot = mx.array(slot, mx.int32)  # index j - shift moves to index j
            c._shifted(shift)
            parts.append((c.keys, c.values, c.offset, c.left_padding + shift))
        self.keys, self.values, self.offset, self.left_padding = map(mx.concatenate, zip(*parts))
        self._set_slot(slot)

    def extract(self, idx: int) -> StaticRotatingKVCache:
        """Sequence ``idx`` alone, in a ``StaticRotatingKVCache`` (position ``p`` in slot
        ``p % capacity``)."""
        self._steady()
        cache = StaticRotatingKVCache(self.max_size, 0, self.headroom)
        padding = self.left_padding[idx].item()
        offset = self.offset[idx].item()
        if self.empty() or self._host_offset <= padding:
            return cache
        # index j holds position j - slot + offset: position p is in slot (p + slot - offset)
        positions = self._slot_positions(mx.array(offset, mx.int32), self.capacity)
        slots = (positions + self._host_offset - offset) % self.capacity
        cache.keys = mx.take(self.keys[idx:idx + 1], slots, axis=2)
        cache.values = mx.take(self.values[idx:idx + 1], slots, axis=2)
        cache._set_offset(offset)
        return cache

    @classmethod
    def merge(cls, caches: list) -> "StaticBatchRotatingKVCache":
        """One batch cache of single-sequence ``StaticRotatingKVCache``s (or empty mlx-lm
        ``RotatingKVCache``s) of one ``max_size``, at a common write index."""
        if any(c.max_size != caches[0].max_size or c.keep for c in caches):
            raise ValueError("StaticBatchRotatingKVCache merges caches of one max_size that keep "
                             "no tokens only")
        for c in caches:
            if not isinstance(c, StaticRotatingKVCache) and not c.empty():
                raise TypeError(f"StaticBatchRotatingKVCache merges StaticRotatingKVCache, not a "
                                f"non-empty {type(c).__name__}")
        headroom = next((c.headroom for c in caches if isinstance(c, StaticRotatingKVCache)), 16)
        kept = [c.size() for c in caches]
        slot = max(kept)
        cache = cls(caches[0].max_size, [slot - n for n in kept], 0, headroom)
        if slot == 0:
            return cache
        full = [c for c in caches if c.size() > 0]
        for c in full:
            c.__mlxtriton_prepare__()
        capacity = full[0].capacity
        indices = cache._slot_positions(mx.array(slot, mx.int32), capacity)
        keys, values, offsets = [], [], []
        for n, c in zip(kept, caches):
            if n == 0:
                keys.append(mx.zeros((1, *full[0].keys.shape[1:]), full[0].keys.dtype))
                values.append(mx.zeros((1, *full[0].values.shape[1:]), full[0].values.dtype))
                offsets.append(0)
                continue
            # index j of the batch holds this sequence's position j - slot + its offset
            offset = c._host_offset
            slots = (indices - slot + offset) % c.capacity
            keys.append(mx.take(c.keys, slots, axis=2))
            values.append(mx.take(c.values, slots, axis=2))
            offsets.append(offset)
        cache.keys, cache.values = mx.concatenate(keys), mx.concatenate(values)
        cache.offset = mx.array(offsets, mx.int32)
        cache._set_slot(slot)
        return cache

    @property
    def state(self):
        return (self.keys, self.values, self.offset, self.left_padding, self.slot, self.max_size,
                self.keep, self.headroom)

    @state.setter
    def state(self, v):
        (self.keys, self.values, self.offset, self.left_padding, slot, self.max_size, self.keep,
         self.headroom) = v
        self._set_batch_state(slot)


class CacheList(_lm_cache.CacheList):
    """mlx-lm's ``CacheList`` (one layer's several caches) that prepares the caches it holds.

    It keeps them in a list where mlx-lm keeps a tuple: mlxtriton's runtime writes a traced call's
    results back into objects reached through lists, and not yet through tuples.
    """

    def __init__(self, *caches):
        super().__init__()
        self.caches = list(caches)

    def __mlxtriton_prepare__(self) -> None:
        for c in self.caches:
            prepare = getattr(c, "__mlxtriton_prepare__", None)
            if prepare is not None:
                prepare()

    @property
    def state(self):
        return [(c.state, type(c).__name__) for c in self.caches]

    @state.setter
    def state(self, v):
        self.caches = [_cache_class(name).from_state(s) for s, name in v]


_CLASSES = {
    cls.__name__: cls
    for cls in (StaticKVCache, StaticQuantizedKVCache, StaticRotatingKVCache,
                StaticBatchKVCache, StaticBatchRotatingKVCache, CacheList,
                _lm_cache.ArraysCache, _lm_cache.KVCache, _lm_cache.RotatingKVCache,
                _lm_cache.QuantizedKVCache)
}


def _to_static(cache: Any, step: int, headroom: int, doubling: bool) -> Any:
    """The still-shaped counterpart of one of mlx-lm's caches, holding the tokens it holds."""
    name = type(cache).__name__
    if isinstance(cache, _ArrayOffsetCache):
        return copy.copy(cache)  # still-shaped already; its arrays are immutable: shared
    if isinstance(cache, _lm_cache.CacheList):
        return CacheList(*(_to_static(c, step, headroom, doubling) for c in cache.caches))
    if type(cache) in (_lm_cache.KVCache, _lm_cache.ConcatenateKVCache):
        static = StaticKVCache(step, headroom, doubling)
        if not cache.empty():
            n = cache.offset
            static._fill(cache.keys[..., :n, :], cache.values[..., :n, :])
        return static
    if type(cache) is _lm_cache.QuantizedKVCache:
        static = StaticQuantizedKVCache(cache.group_size, cache.bits, step, headroom, doubling)
        if not cache.empty():
            n = cache.offset
            static._fill(tuple(b[..., :n, :] for b in cache.keys),
                         tuple(b[..., :n, :] for b in cache.values))
        return static
    if type(cache) is _lm_cache.RotatingKVCache:
        static = StaticRotatingKVCache(cache.max_size, cache.keep, headroom)
        if not cache.empty():
            static._fill(cache._temporal_order(cache.keys), cache._temporal_order(cache.values),
                         cache.offset)
        return static
    if type(cache) is _lm_cache.ArraysCache:
        # Recurrent states, their shapes fixed once the first call has set them: kept, in a new
        # cache whose list of states the calls rebind without touching the original's.
        kept = copy.copy(cache)
        kept.cache = list(cache.cache)
        return kept
    if type(cache) is _lm_cache.ChunkedKVCache:
        raise TypeError(
            "mlxtriton.lm has no still-shaped counterpart of mlx-lm's ChunkedKVCache: llama4 builds "
            "its chunk mask from the cache's positions as Python ints (mlx_lm/models/llama4.py), "
            "so its shapes change every step whatever the cache; use mlx-lm's own caches")
    if isinstance(cache, (_lm_cache.BatchKVCache, _lm_cache.BatchRotatingKVCache)):
        raise TypeError(
            f"mlxtriton.lm does not convert mlx-lm's {name}: convert each sequence's cache and "
            f"batch them with StaticKVCache.merge / StaticRotatingKVCache.merge")
    raise TypeError(f"mlxtriton.lm has no still-shaped counterpart of mlx-lm's {name}")


def _share_offsets(caches: list[Any]) -> list[Any]:
    """Caches at one position hold one offset array: an optimized call reads it once, adds each
    write's length once for all layers, and leaves them holding one array again
    (`mlxtriton.state.Snapshot.aliases`); eager calls simply rebind each cache's own."""
    shared: dict[int, mx.array] = {}
    for c in _offset_caches(caches):
        c.offset = shared.setdefault(c._host_offset, c.offset)
    return caches


def static_prompt_cache(prompt_cache: list[Any], *, step: int = 256, headroom: int = 16,
                        doubling: bool = False) -> list[Any]:
    """The still-shaped counterpart of an mlx-lm prompt cache, the tokens it holds included.

    For a cache mlx-lm built (``mlx_lm.models.cache.make_prompt_cache``, ``load_prompt_cache``,
    a ``generate`` call's): each ``KVCache`` becomes a ``StaticKVCache``, each
    ``QuantizedKVCache`` a ``StaticQuantizedKVCache`` and each ``RotatingKVCache`` a
    ``StaticRotatingKVCache`` holding the same tokens at the same positions; recurrent-state
    caches (``ArraysCache``) and still-shaped caches are kept. Generation then goes on from it as
    it would from the original. The original caches are left as they were.

    Args:
        prompt_cache: one cache per layer, as mlx-lm's models take.
        step, headroom, doubling: the bucket policy of the growing caches (``StaticKVCache``).

    Raises:
        TypeError: a cache kind without a still-shaped counterpart (named).

    Example:
        >>> from mlx_lm.models import cache as lm_cache, llama
        >>> model = llama.Model(llama.ModelArgs(
        ...     model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        ...     num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=100))
        >>> cache = lm_cache.make_prompt_cache(model)
        >>> logits = model(mx.array([[1, 2, 3]]), cache=cache)  # mlx-lm's caches, 3 tokens
        >>> static = static_prompt_cache(cache)
        >>> type(static[0]).__name__, static[0].offset.item(), static[0].capacity
        ('StaticKVCache', 3, 256)
    """
    return _share_offsets([_to_static(c, step, headroom, doubling) for c in prompt_cache])


def load_prompt_cache(file_name: str, return_metadata: bool = False, *, step: int = 256,
                      headroom: int = 16, doubling: bool = False):
    """A prompt cache saved by ``mlx_lm.models.cache.save_prompt_cache``, as still-shaped caches.

    Reads files saved from mlx-lm's caches (``mlx_lm.cache_prompt`` writes them) and from
    mlxtriton.lm's, which mlx-lm's own ``load_prompt_cache`` cannot read (it knows its own
    classes only); mlx-lm's caches are converted as `static_prompt_cache` converts them.

    Args:
        file_name: the ``.safetensors`` file.
        return_metadata: also return the metadata saved with the cache.
        step, headroom, doubling: the bucket policy of converted caches.

    Returns:
        The caches (and the metadata dict when ``return_metadata``).
    """
    from mlx.utils import tree_unflatten

    arrays, metadata = mx.load(file_name, return_metadata=True)
    user_metadata, classes, scalars = tree_unflatten(list(metadata.items()))
    for place, kind in scalars[1:]:  # mlx-lm's encoding of the states' Python values
        value = arrays[place]
        if kind == "scalar":
            arrays[place] = value.item()
        elif kind == "string":
            arrays[place] = "".join(chr(i) for i in value.tolist())
        elif kind == "none":
            arrays[place] = None
        else:
            raise ValueError(f"load_prompt_cache: {file_name} holds a value of unknown kind "
                             f"{kind!r}")
    states = tree_unflatten(list(arrays.items()))
    cache = [_cache_class(name).from_state(state) for name, state in zip(classes, states)]
    cache = static_prompt_cache(cache, step=step, headroom=headroom, doubling=doubling)
    return (cache, user_metadata) if return_metadata else cache


def _cache_class(name: str) -> type:
    """A cache class by the name ``save_prompt_cache`` recorded: mlxtriton.lm's or mlx-lm's."""
    cls = _CLASSES.get(name) or getattr(_lm_cache, name, None)
    if not isinstance(cls, type) or not issubclass(cls, _lm_cache._BaseCache):
        raise ValueError(f"load_prompt_cache: no cache class named {name!r} in mlxtriton.lm or "
                         f"mlx_lm.models.cache")
    return cls


def make_prompt_cache(model: nn.Module, max_kv_size: Optional[int] = None, *, step: int = 256,
                      headroom: int = 16, doubling: bool = False) -> list[Any]:
    """The model's cache for generation, as mlx-lm builds it, with still-shaped caches.

    Mirrors ``mlx_lm.models.cache.make_prompt_cache``: the model's own ``make_cache()`` when it
    has one, else one ``KVCache`` per layer (a ``RotatingKVCache`` of ``max_kv_size`` tokens when
    given). Each key-value cache becomes its still-shaped counterpart; recurrent-state caches
    (``ArraysCache``) are kept, their shapes being fixed once set.

    Args:
        model: an mlx-lm model.
        max_kv_size: as in mlx-lm: each layer's cache a ``StaticRotatingKVCache`` of
            ``max_kv_size`` tokens keeping the first 4.
        step, headroom, doubling: the bucket policy of the growing caches (``StaticKVCache``).

    Returns:
        One cache per layer, for ``model(tokens, cache=...)`` or ``generate_step(...,
        prompt_cache=...)``.

    Raises:
        TypeError: a cache kind without a still-shaped counterpart (named).

    Example:
        >>> from mlx_lm.generate import generate_step
        >>> from mlx_lm.models import llama
        >>> model = llama.Model(llama.ModelArgs(
        ...     model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        ...     num_attention_heads=4, rms_norm_eps=1e-5, vocab_size=100))
        >>> cache = make_prompt_cache(model)
        >>> logits = model(mx.array([[1, 2, 3]]), cache=cache)  # a prefill of three tokens
        >>> cache[0].offset.item(), cache[0].capacity
        (3, 256)
        >>> steps = generate_step(mx.array([4, 5]), model, max_tokens=4, prompt_cache=cache)
        >>> len([token for token, _ in steps])
        4
    """
    return static_prompt_cache(_lm_cache.make_prompt_cache(model, max_kv_size=max_kv_size),
                               step=step, headroom=headroom, doubling=doubling)


def _offset_caches(caches) -> Iterator[_ArrayOffsetCache]:
    for c in caches:
        if isinstance(c, (CacheList, _lm_cache.CacheList)):
            yield from _offset_caches(c.caches)
        elif isinstance(c, _ArrayOffsetCache) and not isinstance(c, _Batch):
            yield c
