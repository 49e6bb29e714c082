"""Public API layer: the function -> function combinators (`rewrite`, `fuse`, `layout`, `cache`,
`optimize`) and the `kernel` decorator. Each returns a `Compiled` function; composing them unions
their passes, which always run in pipeline order (patterns -> fuse -> layout -> cache).
May import every layer.
"""

from __future__ import annotations

from typing import Any, Callable

from mlxtriton.runtime.compiled import PIPELINE, Compiled

_KERNEL_PASSES = tuple(p for p in PIPELINE if p != "patterns")


def _wrap(fn, passes, chip, static_argnums, static_argnames, single_kernel=False, autotune=None):
    def wrap(f: Callable) -> Compiled:
        return Compiled(f, frozenset(passes), chip=chip, static_argnums=static_argnums,
                        static_argnames=static_argnames, single_kernel=single_kernel,
                        autotune=autotune)

    return wrap if fn is None else wrap(fn)


def fuse(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=()):
    """Group a function's elementwise chains and row reductions into generated kernels.

    ``fuse(fn)`` returns a function with ``fn``'s signature and results. On Metal and CUDA each
    fused region runs as one generated kernel (rows streamed from memory unless `cache` keeps
    them on chip); on MLX's CPU backend it runs as MLX ops with the same numerics. The whole
    function runs under ``mx.compile``.

    Args:
        fn: an MLX function (``mx.*``, ``mlx.nn``, ``mx.fast``) or an ``mlx.nn.Module``.
        chip: the chip decisions follow: "auto" (detect; ``MLXTRITON_CHIP`` overrides), "m3",
            "m3-max", "h200", ...
        static_argnums, static_argnames: arguments that are not arrays.

    Example:
        >>> f = mlxtriton.fuse(lambda x: mx.softmax(x * 2.0, axis=-1))
        >>> f(mx.ones((4, 8))).shape
        (4, 8)
        >>> f.graph(mx.ones((4, 8))).primitive_counts()
        {'Fused': 1}
    """
    return _wrap(fn, {"fuse"}, chip, static_argnums, static_argnames)


def layout(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=()):
    """Decide how each fused region reads inputs that reach it through transposes, reshapes,
    broadcasts and slices: as index arithmetic (strided) or, where repeated uncoalesced reads
    would cost more than one copy, from a contiguous copy. Implies `fuse`.

    Example:
        >>> f = mlxtriton.layout(lambda x: mx.softmax(x.T, axis=-1))
        >>> print(f.explain(mx.ones((64, 32))))  # doctest: +ELLIPSIS
        traced: ...
    """
    return _wrap(fn, {"fuse", "layout"}, chip, static_argnums, static_argnames)


def cache(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=()):
    """On-chip ("M3") caching: keep a multi-pass row kernel's row in registers across passes
    where it fits the chip's on-chip budget (larger on Apple9+ with dynamic caching), else in
    threadgroup memory where that pays (streaming would read it three times or more, or twice
    and two threadgroups still fit a core), otherwise stream it with one extra read per pass. The decision is recorded in each region's
    ``schedule`` and shown by ``.lower()`` and ``.explain()``. Implies `fuse`.

    Example:
        >>> f = mlxtriton.cache(lambda x: mx.softmax(x, axis=-1), chip="m3")
        >>> f.graph(mx.ones((8, 1024))).eqns[0].params["schedule"].registers
        ('in0',)
    """
    return _wrap(fn, {"fuse", "cache"}, chip, static_argnums, static_argnames)


def rewrite(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=()):
    """Rewrite decomposed model code into the best MLX has, before any fusion: attention into
    ``mx.fast.scaled_dot_product_attention`` (grouped-query heads, additive or causal masks,
    float32 casts), RMSNorm / LayerNorm / RoPE into their fast ops, ``x @ W + b`` into
    ``mx.addmm``, batch-norm after a convolution folded into its weights, and the algebraic
    clean-ups these need (`mlxtriton.patterns`). ``.explain()`` lists which rule fired where,
    and for near misses why a rule did not match.

    Args:
        fn: an MLX function or ``mlx.nn.Module``.
        chip: "auto", a chip name or a profile.
        static_argnums, static_argnames: arguments that are not arrays.

    Example:
        >>> def attention(q, k, v):
        ...     return mx.softmax((q * 0.125) @ k.swapaxes(-1, -2), axis=-1) @ v
        >>> q = mx.ones((1, 8, 16, 64))
        >>> mlxtriton.rewrite(attention).graph(q, q, q).primitive_counts()
        {'ScaledDotProductAttention': 1}
    """
    return _wrap(fn, {"patterns"}, chip, static_argnums, static_argnames)


def optimize(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=(),
             autotune: bool | None = None):
    """Optimise a function or ``mlx.nn.Module`` with the chip's default pipeline
    (patterns -> fuse -> layout -> cache).

    Args:
        fn: an MLX function or module (a module's parameters are read at each call, so updating
            its weights needs no retrace).
        chip: "auto", a chip name ("m1", "m3-max", "m4", "h200", ...) or a profile.
        static_argnums, static_argnames: arguments that are not arrays.
        autotune: time each generated kernel's candidate schedules on this device the first
            time a call builds it, and keep the fastest (`mlxtriton.runtime.tuner`; winners are
            cached on disk for later processes; ``explain`` says which schedules came from it).
            None: the ``MLXTRITON_AUTOTUNE`` environment variable decides.

    Returns:
        A `Compiled` function: call it like ``fn``; ``.graph(*args)``, ``.lower(*args)``,
        ``.explain(*args)``, ``.trace(*args).lower(target)`` inspect it; ``.cache_info()``.

    Raises:
        UnknownChipError: an unknown chip name (the message lists the known ones).

    Example:
        >>> f = mlxtriton.optimize(lambda x, w: mx.fast.rms_norm(x, w, 1e-5), chip="m3")
        >>> f(mx.ones((2, 8)), mx.ones((8,))).shape
        (2, 8)
    """
    return _wrap(fn, PIPELINE, chip, static_argnums, static_argnames, autotune=autotune)


def kernel(fn: Callable | None = None, *, chip: Any = "auto", static_argnums=(), static_argnames=(),
           autotune: bool | None = None):
    """Make a plain MLX function exactly one generated kernel.

    The first call (or ``.lower()``) fails with `SingleKernelError` naming the equation that
    keeps the function from being one kernel, and why. Calling it returns MLX arrays like the
    original, on any backend (on the CPU the region runs as MLX ops). ``autotune`` as in
    `optimize`.

    Example:
        >>> @mlxtriton.kernel
        ... def rms_gate(x, w):
        ...     return mx.fast.rms_norm(x, w, 1e-5) * mx.sigmoid(x)
        >>> len(rms_gate.trace(mx.ones((4, 256)), mx.ones((256,))).lower("cuda"))
        1
    """
    # No pattern stage: rewriting into MLX's fast ops would take the kernel's work away from it.
    return _wrap(fn, _KERNEL_PASSES, chip, static_argnums, static_argnames, single_kernel=True,
                 autotune=autotune)
