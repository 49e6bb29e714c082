"""Codegen layer: the projection region's kernel (`mlxtriton.graph.projection`), written once for
both dialects: ``y_i = x @ W_i^T`` for a few rows of x and one or more weights, dense or
affine-quantized, a bias vector added or not. Each SIMD group (warp) computes a few
consecutive output columns of one weight for every row of x: its lanes walk the weight rows in
16-byte vectors, ``unroll`` vectors a row issued before any is used, each x vector read once for
all of them, and the 32 lanes' partial sums meet by butterfly shuffles. A quantized lane's 16
bytes lie in one group: it sums x * q and x over them, then adds scale * the first + bias * the
second (MLX's affine packing, mlx/backend/cuda/quantized/qmm/qmv.cu, reads the same words), in
float32 throughout where MLX's kernel accumulates 4-bit products in the activations' dtype.
Several outputs are one grid over their concatenated columns, each SIMD group in one output. An
output may be an epilogue of its products: a SwiGLU gate (a SIMD group reads the same columns of
both weights) or a RoPE (a SIMD group reads the two weight rows of each of its pairs of lanes and
writes the rotated pair in the [B, heads, L, head_dim] layout). May import the graph layer and
codegen.
"""

from __future__ import annotations

import hashlib
import math

from mlxtriton.codegen.dialects import DIALECTS, Dialect
from mlxtriton.codegen.render import LoweredKernel, template_header
from mlxtriton.codegen.kernel_ir import Ops
from mlxtriton.graph.projection import VECTOR_BYTES, Projection, Result

LANES = 32


def _unpack(d: Dialect, dtype: str, word: str) -> list[str]:
    """The floats one 32-bit word of ``dtype`` values holds, first value first."""
    if dtype == "float32":
        return [d.float_from_bits.format(x=word)]
    if dtype == "bfloat16":  # a bfloat16 is the high half of the float it widens to
        return [d.float_from_bits.format(x=f"({word}) << 16"),
                d.float_from_bits.format(x=f"({word}) & 0xffff0000u")]
    return [d.half_from_bits.format(x=f"({word}) & 0xffffu"),
            d.half_from_bits.format(x=f"({word}) >> 16")]


def _output(d: Dialect, s: Projection, result: Result, o: int, r_n: int, u_n: int,
            guard: str) -> list[str]:
    """Lines computing output ``o`` (``result``) for a SIMD group's ``r_n`` columns of the grid
    from ``mt_col`` on: the products it reads (one, or a gate's two: its rows are the gate's
    columns, then the same columns of the other weight; a RoPE's rows are the first lanes of its
    pairs, then the second), reduced across the lanes and written by one lane each."""
    m_n, k, e = s.rows, s.depth, s.chunk
    steps = k // e  # vectors in a weight row
    words = VECTOR_BYTES // 4
    quant = bool(s.bits)
    row_words = k * s.bits // 32 if quant else k * (4 if s.dtype == "float32" else 2) // 4
    vec = d.vector_type.format(T="uint32_t", N=words)
    lane_of = lambda v, i: d.vector_lane.format(v=v, l=i)  # noqa: E731
    space = d.global_space
    sources, rope = result.products, result.rope
    paired = len(sources) == 2 or rope is not None
    rows = r_n * (2 if paired else 1)  # weight rows a SIMD group reads

    def pick(name: str) -> str:  # the array of a row's product
        if len(sources) == 1:
            return f"{name}{sources[0]}"
        return f"(mt_r < {r_n} ? {name}{sources[0]} : {name}{sources[1]})"

    if rope is not None:
        column = _lane_of_pair(s, result, f"mt_col + mt_r % {r_n}", f"mt_r >= {r_n}")
    else:
        column = f"mt_col + mt_r % {r_n}" if paired else "mt_col + mt_r"
    lines = [
        f"float mt_acc[{rows}][{m_n}];",
        f"for (int mt_r = 0; mt_r < {rows}; ++mt_r) for (int mt_m = 0; mt_m < {m_n}; ++mt_m) "
        "mt_acc[mt_r][mt_m] = 0.0f;",
        f"for (int mt_c0 = mt_lane; mt_c0 < {steps}; mt_c0 += {LANES * u_n}) {{",
        f"  {vec} mt_v[{u_n}][{rows}];",
        *([f"  float mt_s[{u_n}][{rows}], mt_b[{u_n}][{rows}];"] if quant else []),
        f"  {d.unroll}",
        f"  for (int mt_u = 0; mt_u < {u_n}; ++mt_u) {{",
        f"    const int mt_c = mt_c0 + mt_u * {LANES};",
        f"    if ({guard}) {{",
        f"      {d.unroll}",
        f"      for (int mt_r = 0; mt_r < {rows}; ++mt_r) {{",
        f"        const size_t mt_row = static_cast<size_t>({column});",
        f"        mt_v[mt_u][mt_r] = reinterpret_cast<const {space}{vec}*>({pick('w')})"
        f"[mt_row * {row_words // words} + mt_c];",
    ]
    if quant:
        per_group = s.group_size // e
        g = f"mt_row * {k // s.group_size} + mt_c / {per_group}" if per_group > 1 else \
            f"mt_row * {k // s.group_size} + mt_c"
        scale, offset = f"{pick('s')}[{g}]", f"{pick('b')}[{g}]"
        lines += [f"        mt_s[mt_u][mt_r] = {d.cast(scale, s.dtype, 'float32')};",
                  f"        mt_b[mt_u][mt_r] = {d.cast(offset, s.dtype, 'float32')};"]
    lines += ["      }", "    }", "  }"]
    # x: the chunk's values of each row, 16 bytes at a time.
    x_item = 4 if s.dtype == "float32" else 2
    x_vectors = e * x_item // VECTOR_BYTES  # x vectors under one weight vector
    per_x_word = 4 // x_item
    lines += [
        f"  {d.unroll}",
        f"  for (int mt_u = 0; mt_u < {u_n}; ++mt_u) {{",
        f"    const int mt_c = mt_c0 + mt_u * {LANES};",
        f"    if ({guard}) {{",
        f"      {d.unroll}",
        f"      for (int mt_m = 0; mt_m < {m_n}; ++mt_m) {{",
        f"        float mt_xf[{e}];",
    ]
    for j in range(x_vectors):
        lines.append(f"        {{ const {vec} mt_xv = reinterpret_cast<const {space}{vec}*>(x)"
                     f"[(static_cast<size_t>(mt_m) * {steps} + mt_c) * {x_vectors} + {j}];")
        for i in range(words):
            for h, val in enumerate(_unpack(d, s.dtype, lane_of("mt_xv", i))):
                lines.append(f"          mt_xf[{(j * words + i) * per_x_word + h}] = {val};")
        lines.append("        }")
    if quant:
        # Each value q becomes the float 1 + q / 2^bits: its bits moved to the top of a
        # mantissa under the exponent of 1.0 (a shift and one three-input logic op), so that
        # sum(x * that) = sum(x) + sum(x * q) / 2^bits takes one fma a value.
        per_word = 32 // s.bits  # values in one weight word
        top = f"0x{((1 << s.bits) - 1) << (23 - s.bits):08x}u"
        lines += [
            "        float mt_xs = 0.0f;",
            f"        for (int mt_i = 0; mt_i < {e}; ++mt_i) mt_xs += mt_xf[mt_i];",
            f"        {d.unroll}",
            f"        for (int mt_r = 0; mt_r < {rows}; ++mt_r) {{",
            "          float mt_d = 0.0f;",
        ]
        for wi in range(words):
            lines.append(f"          {{ const uint32_t mt_q = {lane_of('mt_v[mt_u][mt_r]', wi)};")
            for j in range(per_word):
                shift = 23 - s.bits - s.bits * j
                moved = (f"(mt_q << {shift})" if shift > 0 else f"(mt_q >> {-shift})" if shift < 0
                         else "mt_q")
                value = d.float_from_bits.format(x=f"0x3f800000u | ({moved} & {top})")
                term = d.fma.format(a=f"mt_xf[{wi * per_word + j}]", b=value, c="mt_d")
                lines.append(f"            mt_d = {term};")
            lines.append("          }")
        lines += [f"          mt_acc[mt_r][mt_m] += mt_s[mt_u][mt_r] * {float(1 << s.bits)!r}f * "
                  "(mt_d - mt_xs) + mt_b[mt_u][mt_r] * mt_xs;",
                  "        }"]
    else:
        lines += [f"        {d.unroll}",
                  f"        for (int mt_r = 0; mt_r < {rows}; ++mt_r) {{",
                  "          float mt_d = mt_acc[mt_r][mt_m];"]
        for i in range(words):  # one x vector per weight vector, word for word
            for h, val in enumerate(_unpack(d, s.dtype, lane_of("mt_v[mt_u][mt_r]", i))):
                term = d.fma.format(a=f"mt_xf[{i * per_x_word + h}]", b=val, c="mt_d")
                lines.append(f"          mt_d = {term};")
        lines += ["          mt_acc[mt_r][mt_m] = mt_d;", "        }"]
    lines += ["      }", "    }", "  }", "}"]
    other = d.shuffle_xor.format(x="mt_acc[mt_r][mt_m]", o="mt_o")
    lines += [
        f"for (int mt_r = 0; mt_r < {rows}; ++mt_r) for (int mt_m = 0; mt_m < {m_n}; ++mt_m) {{",
        f"  for (int mt_o = {LANES // 2}; mt_o > 0; mt_o /= 2) mt_acc[mt_r][mt_m] += {other};",
    ]

    def value(i: int, acc: str, col: str = "mt_col + mt_r") -> str:
        """Product i's float32 sum plus its bias vector's term at column ``col``."""
        bias = f" + {d.cast(f'c{i}[{col}]', s.dtype, 'float32')}" if s.has_bias(i) else ""
        return f"{acc}{bias}"

    n = s.widths[sources[0]]
    store = f"y{o}[static_cast<size_t>(mt_m) * {n} + mt_col + mt_r]"
    if not paired:
        lines += [f"  if (mt_lane == (mt_r * {m_n} + mt_m) % {LANES}) "
                  f"{store} = {d.cast(value(sources[0], 'mt_acc[mt_r][mt_m]'), 'float32', s.dtype)};",
                  "}"]
        return lines

    def rounded(x: str) -> str:  # as MLX rounds a product to x's dtype
        return x if s.dtype == "float32" else d.cast(d.cast(x, "float32", s.dtype), s.dtype, "float32")

    lines += [
        "}",
        f"for (int mt_r = 0; mt_r < {r_n}; ++mt_r) for (int mt_m = 0; mt_m < {m_n}; ++mt_m) {{",
        f"  if (mt_lane == (mt_r * {m_n} + mt_m) % {LANES}) {{",
    ]
    if rope is None:  # silu(g) * u in float32
        g, u = sources
        return lines + [
            f"    const float mt_g = {rounded(value(g, 'mt_acc[mt_r][mt_m]'))};",
            f"    const float mt_u = {rounded(value(u, f'mt_acc[{r_n} + mt_r][mt_m]'))};",
            f"    {store} = {d.cast('mt_g * mt_sigmoid(mt_g) * mt_u', 'float32', s.dtype)};",
            "  }",
            "}",
        ]
    # RoPE as MLX's kernel computes it (mlx/backend/cuda/rope.cu; base^(-d) through exp where
    # it takes exp2): the angle in float32, each lane of the pair rounded to x's dtype first, as
    # the product MLX rotates is.
    (i,) = sources
    half = n // rope.heads // 2
    offset = (d.scalar_input.format(name=f"p{o}") if rope.offsets == () else
              f"p{o}[0]" if rope.offsets == (1,) else f"p{o}[mt_b]")
    lines += [
        "    const int mt_p = mt_col + mt_r;",
        f"    const int mt_j1 = {_lane_of_pair(s, result, 'mt_p', 'false')};",
        f"    const int mt_j2 = {_lane_of_pair(s, result, 'mt_p', 'true')};",
        f"    const float mt_x1 = {rounded(value(i, 'mt_acc[mt_r][mt_m]', 'mt_j1'))};",
        f"    const float mt_x2 = {rounded(value(i, f'mt_acc[{r_n} + mt_r][mt_m]', 'mt_j2'))};",
        f"    const int mt_b = mt_m / {rope.length};",
        f"    const int mt_pos = {offset} + mt_m % {rope.length};",
    ]
    if rope.base is None:
        inv_freq = f"1.0f / f{o}[mt_p % {half}]"
    else:
        exponent = f"static_cast<float>(mt_p % {half}) * {-math.log(rope.base) / half!r}f"
        inv_freq = d.code_for_op[(Ops.EXP, "float")].format(exponent)
    cos = d.code_for_op[(Ops.COS, "float")].format("mt_t")
    sin = d.code_for_op[(Ops.SIN, "float")].format("mt_t")
    # out[b, head, l, lane]: the transposed view's element of row m = b * length + l
    dim = n // rope.heads
    return lines + [
        f"    const float mt_t = {rope.scale!r}f * static_cast<float>(mt_pos) * ({inv_freq});",
        f"    const float mt_cos = {cos}, mt_sin = {sin};",
        f"    const size_t mt_o = (static_cast<size_t>(mt_b) * {rope.heads} + mt_j1 / {dim}) * "
        f"{rope.length * dim} + static_cast<size_t>(mt_m % {rope.length}) * {dim};",
        f"    y{o}[mt_o + mt_j1 % {dim}] = {d.cast('mt_x1 * mt_cos - mt_x2 * mt_sin', 'float32', s.dtype)};",
        f"    y{o}[mt_o + mt_j2 % {dim}] = {d.cast('mt_x1 * mt_sin + mt_x2 * mt_cos', 'float32', s.dtype)};",
        "  }",
        "}",
    ]


def _lane_of_pair(s: Projection, result: Result, pair: str, second: str) -> str:
    """The column of product ``result`` holding the first lane (``second`` false) or the second
    lane of RoPE pair ``pair`` (of its head's head_dim / 2 pairs, heads one after another)."""
    rope = result.rope
    half = s.widths[result.products[0]] // rope.heads // 2
    if rope.traditional:  # lanes 2i and 2i + 1
        return f"(2 * ({pair}) + ({second} ? 1 : 0))"
    return f"(({pair}) / {half} * {2 * half} + ({pair}) % {half} + ({second} ? {half} : 0))"


def render_projection(spec: Projection, dialect: Dialect | str, columns_per_simd_group: int = 2,
                      simd_groups: int = 4, unroll: int = 2) -> LoweredKernel:
    """The kernel of one projection region in ``dialect``: inputs x [rows, depth], each weight
    (w, or w, scales, biases; then its bias vector where it adds one), then each RoPE output's
    offset (and frequencies); outputs y_o of ``spec.outputs`` (`Projection.shape`) in x's dtype,
    accumulated in float32.

    Args:
        columns_per_simd_group: Columns of the grid one SIMD group computes (it must divide every
            output's `Projection.columns`).
        simd_groups: SIMD groups of one threadgroup.
        unroll: 16-byte vectors of each weight row a lane loads before it uses the first.

    Example:
        >>> from mlxtriton.graph.projection import Projection
        >>> k = render_projection(Projection((1,), 2048, (2048, 512, 512), "bfloat16"), "cuda")
        >>> k.grid, k.threadgroup, k.output_shapes
        ((49152, 1, 1), (128, 1, 1), ((1, 2048), (1, 512), (1, 512)))
    """
    d = DIALECTS[dialect] if isinstance(dialect, str) else dialect
    s, r_n, u_n = spec, columns_per_simd_group, unroll
    if any(w % r_n for w in s.columns):
        raise ValueError(f"{r_n} columns a SIMD group do not divide the widths {list(s.columns)}")
    m_n, k = s.rows, s.depth
    steps = k // s.chunk  # vectors in a weight row
    quant = bool(s.bits)
    threads = simd_groups * LANES
    total = sum(s.units(r) for r in s.outputs)
    groups = -(-total // (simd_groups * r_n))
    names = ["x"]
    for i in range(len(s.widths)):
        names += [f"w{i}", f"s{i}", f"b{i}"] if quant else [f"w{i}"]
        names += [f"c{i}"] if s.has_bias(i) else []
    for o, r in enumerate(s.outputs):  # a RoPE's offsets and frequencies
        names += ([f"p{o}"] + ([f"f{o}"] if r.rope.base is None else [])) if r.rope else []
    body = [
        f"// projection of {m_n} row(s) of {k}: {', '.join(map(str, s.widths))} columns"
        + (f", {s.bits}-bit weights in groups of {s.group_size}" if quant else ""),
        f"const int mt_lane = static_cast<int>({d.thread_in_group}) % {LANES};",
        f"int mt_col = (static_cast<int>({d.group_in_grid}) * {simd_groups} + "
        f"static_cast<int>({d.thread_in_group}) / {LANES}) * {r_n};",
        f"if (mt_col >= {total}) return;",
    ]
    # A lane's vector mt_c lies in the row unless the row's vectors end within this step.
    guard = "true" if steps % (LANES * u_n) == 0 else f"mt_c < {steps}"
    start = 0
    for o, r in enumerate(s.outputs):
        n = s.units(r)
        cond = f"if (mt_col < {start + n}) " if o < len(s.outputs) - 1 else ""
        body.append(f"{'else ' if o else ''}{cond}{{")
        body.append(f"  mt_col -= {start};" if start else "  // the first output's columns")
        body += ["  " + line for line in _output(d, s, r, o, r_n, u_n, guard)]
        body.append("}")
        start += n
    in_shapes = [(*s.lead, k)]
    in_dtypes = [s.dtype]
    for i, n in enumerate(s.widths):
        if quant:
            in_shapes += [(n, k * s.bits // 32), (n, k // s.group_size), (n, k // s.group_size)]
            in_dtypes += ["uint32", s.dtype, s.dtype]
        else:
            in_shapes.append((n, k))
            in_dtypes.append(s.dtype)
        if s.has_bias(i):
            in_shapes.append((n,))
            in_dtypes.append(s.dtype)
    for r in s.outputs:
        if r.rope:
            in_shapes.append(r.rope.offsets)
            in_dtypes += ["int32"]
            if r.rope.base is None:
                in_shapes.append((s.widths[r.products[0]] // r.rope.heads // 2,))
                in_dtypes.append("float32")
    source = "\n".join(body) + "\n"
    header = template_header(d, source) + d.launch_bounds.format(bound=threads)
    digest = hashlib.sha256((d.name + header + source).encode()).hexdigest()[:12]
    return LoweredKernel(
        target=d.name, name=f"mlxt_projection_{digest}", input_names=tuple(names),
        output_names=tuple(f"y{o}" for o in range(len(s.outputs))), source=source, header=header,
        ensure_row_contiguous=True, grid=(groups * threads, 1, 1), threadgroup=(threads, 1, 1),
        output_shapes=tuple(s.shape(r) for r in s.outputs),
        output_dtypes=(s.dtype,) * len(s.outputs),
        input_shapes=tuple(in_shapes), input_dtypes=tuple(in_dtypes), options=d.constructor_options)


__all__ = ["render_projection"]
