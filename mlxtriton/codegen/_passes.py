"""Codegen layer: passes over a row, what they read, and the rewrites and plans that depend on
where a row's inputs are: the reductions' online and two-pass forms, the fast exponential,
computed values kept in registers between passes, loads moved to the first pass, and the
registers they hold. May import the codegen IR.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mlxtriton.codegen import kernel_ir as K
from mlxtriton.codegen.kernel_ir import Ops, UOp, UPat, map_nodes
from mlxtriton.codegen._lower_ops import is_float


def _pass_roots(stores: list[UOp]) -> list[tuple[int, UOp]]:
    """(pass, value) for what each pass over the row computes: its reductions' arguments, and
    for the last pass the per-element stores."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    reduces = [u for u in root.toposort if u.op is Ops.REDUCE]
    final = max((r.reduce_pass for r in reduces), default=-1) + 1
    roots: list[tuple[int, UOp]] = [(r.reduce_pass, s) for r in reduces for s in r.src]
    roots += [(final, s) for st in stores if st.src[2].per_element or st.src[1].per_element
              for s in st.src[1:]]
    return roots


def _pass_values(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element values and the passes over the row that evaluate them. A KEEP's value is
    evaluated by the first pass that reads it; later passes read its registers."""
    roots = _pass_roots(stores)

    def walk(stop: Callable[[UOp, int], bool]) -> dict[UOp, set[int]]:
        out: dict[UOp, set[int]] = {}
        for p, r in roots:
            stack, seen = [r], set()
            while stack:
                u = stack.pop()
                if u in seen or not u.per_element:
                    continue
                seen.add(u)
                out.setdefault(u, set()).add(p)
                if not stop(u, p):
                    stack.extend(u.src)
        return out

    first = {u: min(p) for u, p in walk(lambda u, p: False).items() if u.op is Ops.KEEP}
    return walk(lambda u, p: u.op is Ops.KEEP and first[u] < p)


def pass_loads(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element LOADs and the passes over the row that read them."""
    return {u: p for u, p in _pass_values(stores).items() if u.op is Ops.LOAD}


def multi_pass_loads(stores: list[UOp]) -> dict[UOp, set[int]]:
    """Per-element LOADs several passes over the row read: what may stay on chip."""
    return {u: p for u, p in pass_loads(stores).items() if len(p) > 1}


def passes(stores: list[UOp]) -> int:
    """Passes over the row: one per reduction stage, and one more for per-element stores."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    reduces = [u for u in root.toposort if u.op is Ops.REDUCE]
    n = max((r.reduce_pass for r in reduces), default=-1) + 1
    if any(st.src[2].per_element or st.src[1].per_element for st in stores):
        n += 1
    return n


def _loads_under(u: UOp) -> set[UOp]:
    return {x for x in u.toposort if x.op is Ops.LOAD and x.per_element}


# Online softmax: in a streamed row, sum(exp(v - max(v))) becomes one pass with a running max
# ("sumexp" has exactly this value).
_ONLINE = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="sum", name="r", src=(UPat(Ops.EXP, src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", src=(UPat(name="v"),)))),)),)),
    lambda r, v: UOp(Ops.REDUCE, r.dtype, (v,), "sumexp")),))


def _centred_squares(r: UOp) -> UOp | None:
    """sum((v - c)^2) over a row, for a value ``c`` constant along it, as the one-pass "sqdev":
    sqdev(v) + L * (mean(v) - c)^2, which is sqdev(v) itself when ``c`` is the row's mean
    sum(v) * (1/L) (a variance: both terms then come from one pass over a streamed row)."""
    (x,) = r.src
    d = x.src[0] if x.op is Ops.SQUARE or (x.op is Ops.MUL and x.src[0] is x.src[1]) else None
    if r.dtype != "float32" or d is None or d.op is not Ops.SUB:
        return None
    v, c = d.src
    if v.dtype != "float32" or not v.per_element or c.per_element:
        return None
    L = next((u.arg[1] for u in v.toposort if u.op is Ops.SPECIAL and u.arg[0] == "col"), None)
    if L is None:
        return None
    sqdev = UOp(Ops.REDUCE, "float32", (v,), "sqdev")
    total = UOp(Ops.REDUCE, "float32", (v,), "sum")
    inverse = UOp.const("float32", float(np.float32(1.0 / L)))
    if c.op is Ops.MUL and total in c.src:
        k = c.src[1] if c.src[0] is total else c.src[0]
        if k.op is Ops.CONST and np.float32(k.arg) == np.float32(inverse.arg):
            return sqdev  # c is the row's mean
    shift = K.alu(Ops.SUB, K.alu(Ops.MUL, total, inverse), c)
    return K.alu(Ops.ADD, sqdev, K.alu(Ops.MUL, UOp.const("float32", L), K.alu(Ops.SQUARE, shift)))


def _expand_sumexp(r: UOp) -> UOp:
    # sum(exp(v - max(v))): the two-pass form of "sumexp", for rows resident in registers
    (v,) = r.src
    m = UOp(Ops.REDUCE, v.dtype, (v,), "max")
    return UOp(Ops.REDUCE, r.dtype, (K.alu(Ops.EXP, K.alu(Ops.SUB, v, m)),), "sum")


# Values costly enough to keep in registers rather than compute again in a later pass: a
# transcendental (a multi-function-unit op plus range reduction), or an IEEE division. A
# subtraction or a widening cast is one instruction: not worth the registers.
_COSTLY = K.GroupOp.FloatUnary | {Ops.DIV, Ops.POW, Ops.ATAN2, Ops.LOGADDEXP, Ops.REM}


def _costly(u: UOp) -> bool:
    return any(x.op in _COSTLY for x in u.toposort if x.per_element and x.op is not Ops.LOAD)


def _keep_candidates(stores: list[UOp]) -> list[UOp]:
    """Computed per-element values a later pass reads from an earlier one: for each pass, the
    shared values nearest its own work (not those only feeding other shared values)."""
    values = _pass_values(stores)
    roots = _pass_roots(stores)
    found: list[UOp] = []
    for q in sorted({p for p, _ in roots}):
        earlier = {u for u, p in values.items() if q in p and min(p) < q}
        needed = {r for p, r in roots if p == q and r in earlier}
        for u, p in values.items():
            if q in p and u not in earlier:
                needed |= {s for s in u.src if s in earlier}
        found += [u for u in needed if u not in found]
    order = {u: i for i, u in enumerate(UOp(Ops.KERNEL, "void", tuple(stores), None).toposort)}
    return sorted((u for u in found if u.op not in (Ops.LOAD, Ops.KEEP)
                   and not (u.op is Ops.CAST and u.src[0].op is Ops.LOAD) and _costly(u)),
                  key=order.__getitem__)


def _with_keeps(stores: list[UOp], kept: set[UOp]) -> list[UOp]:
    def fn(node: UOp, src: tuple[UOp, ...], done) -> UOp | None:
        if node not in kept:
            return None
        inner = node if src == node.src else (
            K.alu(node.op, *src, dtype=node.dtype) if node.op in K.GroupOp.Binary
            else UOp(node.op, node.dtype, src, node.arg))
        return UOp(Ops.KEEP, node.dtype, (inner,))

    return map_nodes(stores, fn)


def _peak_registers(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int]) -> int:
    """The most registers held between two passes by resident loads and kept values."""
    live: dict[int, int] = {}
    for u, p in _pass_values(stores).items():
        if len(p) > 1 and (u.op is Ops.KEEP or u in resident):
            for b in range(min(p), max(p)):
                live[b] = live.get(b, 0) + regs(u)
    return max(live.values(), default=0)


def held_registers(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int]) -> int:
    """Registers of every resident load and kept value together: the register arrays a thread
    declares, whether or not their passes overlap (NVRTC keeps them all)."""
    root = UOp(Ops.KERNEL, "void", tuple(stores), None)
    return sum(regs(u) for u in root.toposort if u.op is Ops.KEEP or u in resident)


def row_independent(u: UOp) -> bool:
    """A per-element load whose index does not depend on the row (a norm's weight)."""
    return not any(x.op is Ops.SPECIAL and x.arg[0] == "row" for x in u.src[1].toposort)


def write_pass_loads(stores: list[UOp]) -> list[UOp]:
    """Loads of the row (not a weight every row shares) that only the write pass reads, in
    parameter order: what a row kernel holding its rows in registers may load during its first
    pass instead (their latency then overlaps the row's own loads rather than following the
    reductions' barriers)."""
    if not any(st.src[2].per_element or st.src[1].per_element for st in stores):
        return []  # no write pass
    last = passes(stores) - 1
    if last == 0:
        return []  # one pass: nothing to load early
    return sorted((u for u, p in pass_loads(stores).items() if p == {last}
                   and not row_independent(u)), key=lambda u: u.src[0].arg.slot)


def prefetched_loads(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int],
                budget: int) -> set[UOp]:
    """`write_pass_loads` to load in the first pass, while they, the resident loads and kept
    values fit ``budget`` registers."""
    held = held_registers(stores, resident, regs)
    chosen: set[UOp] = set()
    for u in write_pass_loads(stores):
        if u not in resident and held + regs(u) <= budget:
            chosen.add(u)
            held += regs(u)
    return chosen


def keep_computed(stores: list[UOp], resident: set[UOp], regs: Callable[[UOp], int],
                   budget: int) -> list[UOp]:
    """Keep costly computed values in registers between passes (KEEP) while resident loads and
    kept values fit ``budget`` registers at every pass boundary (the compiler does not always
    find this itself: not through CUDA's inline-asm bfloat16 conversion, cuda_bf16.hpp)."""
    kept: set[UOp] = set()
    for u in _keep_candidates(stores):
        trial = _with_keeps(stores, kept | {u})
        if _peak_registers(trial, resident, regs) <= budget:
            kept.add(u)
    return _with_keeps(stores, kept) if kept else stores


# max(v - max(v)) is max(v) - max(v): 0 when the max is finite, NaN otherwise. max propagates
# NaN (an infinite max gives inf - inf somewhere), and a difference of floats rounds to 0 only
# when they are equal, so every other v - max(v) is negative. LogSumExp(x - max(x)), how MLX
# decomposes cross-entropy, then needs no pass of its own: 3 passes over the row become 2.
ALGEBRA = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="max", src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", name="m", src=(UPat(name="v"),)))),)),
    lambda v, m: K.alu(Ops.SUB, m, m) if is_float(m.dtype) else None),))

# sumexp(v - max v) is sumexp(v): v - max v - max(v - max v) is v - max v when the max is finite,
# and both are NaN otherwise. On a streamed row the statistic and the max are then one online
# pass over memory instead of two (MLX's cross-entropy, logsumexp(x - max x), over long rows).
# Rows resident in registers keep the two passes over registers, cheaper than the online
# rescaling (benchmarks/results/forward_online_h200.json), and take the simpler
# exponent.
_SHIFTED_SUMEXP = K.PatternMatcher(((
    UPat(Ops.REDUCE, arg="sumexp", name="r", src=(UPat(Ops.SUB, src=(
        UPat(name="v"), UPat(Ops.REDUCE, arg="max", src=(UPat(name="v"),)))),)),
    lambda r, v: UOp(Ops.REDUCE, r.dtype, (v,), "sumexp")),))


def _sign_bound(u: UOp, want: int, depth: int = 8) -> bool:
    """Whether ``u`` is provably <= 0 (``want`` -1) or >= 0 (``want`` 1), or NaN."""
    if depth == 0 or not is_float(u.dtype):
        return False
    op, src = u.op, u.src
    if op is Ops.CONST:
        return isinstance(u.arg, (int, float)) and (u.arg * want >= 0 or u.arg != u.arg)
    if op is Ops.SUB:
        a, b = src
        if a is b:
            return True  # 0, or NaN
        if want < 0 and b.op is Ops.REDUCE and b.arg == "max" and b.src[0] is a:
            return True  # v - max(v): the row's max is no smaller than any of its elements
        return _sign_bound(a, want, depth - 1) and _sign_bound(b, -want, depth - 1)
    if op is Ops.ADD:
        return all(_sign_bound(x, want, depth - 1) for x in src)
    if op in (Ops.MUL, Ops.DIV):
        a, b = src
        return ((_sign_bound(a, want, depth - 1) and _sign_bound(b, 1, depth - 1))
                or (_sign_bound(a, -want, depth - 1) and _sign_bound(b, -1, depth - 1)))
    if op is Ops.NEG:
        return _sign_bound(src[0], -want, depth - 1)
    if op is Ops.WHERE:
        return all(_sign_bound(x, want, depth - 1) for x in src[1:])
    if op is Ops.KEEP or (op is Ops.CAST and is_float(src[0].dtype)):
        return _sign_bound(src[0], want, depth - 1)
    if want > 0:
        return op in (Ops.ABS, Ops.SQUARE, Ops.EXP, Ops.EXP_SHIFTED, Ops.SQRT) or (
            op is Ops.MAX and any(_sign_bound(x, 1, depth - 1) for x in src))
    return op is Ops.MIN and any(_sign_bound(x, -1, depth - 1) for x in src)


# exp of a value that cannot exceed 0 (x - max(x), a softmax's or logsumexp's exponent) is the
# dialect's fast exponential, as in MLX's own softmax and logsumexp kernels: its error is a few
# ulp near 0 and grows only where the result is tiny.
FAST_EXP = K.PatternMatcher(((
    UPat(Ops.EXP, name="e"),
    lambda e: UOp(Ops.EXP_SHIFTED, e.dtype, e.src) if _sign_bound(e.src[0], -1) else None),))


def rewrite_reduces(stores: list[UOp], resident: set[UOp], centred: bool = False) -> list[UOp]:
    """The reductions in the form that suits where their loads are: in registers, a softmax's
    sum is two passes over them; streamed, one online pass with the max, and with ``centred`` (a
    column walk, which keeps nothing on chip) a variance's centred sum of squares one pass with
    the mean (`_centred_squares`)."""
    def fix(node: UOp) -> UOp | None:
        if node.op is not Ops.REDUCE:
            return None
        if node.arg == "sumexp" and _loads_under(node.src[0]) <= resident:
            # its loads are in registers: the extra pass is free (and exp(x - max x), not
            # exp((x - m) - (m - m)), one subtraction per element less)
            return _expand_sumexp(_SHIFTED_SUMEXP.rewrite(node) or node)
        if node.arg == "sumexp":
            return _SHIFTED_SUMEXP.rewrite(node)  # streamed: one pass with the max
        if node.arg == "sum" and not _loads_under(node) <= resident:
            # streamed: save a pass over memory
            return _ONLINE.rewrite(node) or (_centred_squares(node) if centred else None)
        return None

    pm = K.PatternMatcher(((UPat(Ops.REDUCE, name="node"), fix),)) + ALGEBRA
    root = K.graph_rewrite(UOp(Ops.KERNEL, "void", tuple(stores), None), pm)
    return list(root.src)
