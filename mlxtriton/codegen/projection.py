"""Codegen layer: the projection region's kernel (`mlxtriton.graph.projection`), written once for
both dialects: ``y_i = x @ W_i^T`` for a few rows of x and one or more weights, dense or
affine-quantized, a bias vector added or not. Each SIMD group (warp) computes a few
consecutive output columns of one weight for every row of x: its lanes walk the weight rows in
16-byte vectors, ``unroll`` vectors a row issued before any is used, each x vector read once for
all of them, and the 32 lanes' partial sums meet by butterfly shuffles. A quantized lane's 16
bytes lie in one group: it sums x * q and x over them, then adds scale * the first + bias * the
second (MLX's affine packing, mlx/backend/cuda/quantized/qmm/qmv.cu, reads the same words), in
float32 throughout where MLX's kernel accumulates 4-bit products in the activations' dtype.
Several weights are one grid over their concatenated columns, each SIMD group in one weight.
May import the graph layer and codegen.
"""

from __future__ import annotations

import hashlib

from mlxtriton.codegen.dialects import DIALECTS, Dialect
from mlxtriton.codegen.render import LoweredKernel, template_header
from mlxtriton.graph.projection import VECTOR_BYTES, Projection

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


def render_projection(spec: Projection, dialect: Dialect | str, columns_per_simd_group: int = 2,
                      simd_groups: int = 4, unroll: int = 2) -> LoweredKernel:
    """The kernel of one projection region in ``dialect``: inputs x [rows, depth] then each
    weight (w, or w, scales, biases; then its bias vector where it adds one), outputs y_i [rows,
    widths[i]] in x's dtype, accumulated in float32.

    Args:
        columns_per_simd_group: Output columns one SIMD group computes (it must divide every width).
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
    if any(w % r_n for w in s.widths):
        raise ValueError(f"{r_n} columns a SIMD group do not divide the widths {list(s.widths)}")
    m_n, k, e = s.rows, s.depth, s.chunk
    steps = k // e  # vectors in a weight row
    words = VECTOR_BYTES // 4
    quant = bool(s.bits)
    row_words = k * s.bits // 32 if quant else k * (4 if s.dtype == "float32" else 2) // 4
    vec = d.vector_type.format(T="uint32_t", N=words)
    lane_of = lambda v, i: d.vector_lane.format(v=v, l=i)  # noqa: E731
    space = d.global_space
    threads = simd_groups * LANES
    total = sum(s.widths)
    groups = -(-total // (simd_groups * r_n))
    names = ["x"]
    for i in range(len(s.widths)):
        names += [f"w{i}", f"s{i}", f"b{i}"] if quant else [f"w{i}"]
        names += [f"c{i}"] if s.has_bias(i) else []
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
    # The products of one weight, {W} {S} {B} {Y} naming its arrays, {N} its width and {BIAS}
    # its bias vector's term.
    core = [
        f"float mt_acc[{r_n}][{m_n}];",
        f"for (int mt_r = 0; mt_r < {r_n}; ++mt_r) for (int mt_m = 0; mt_m < {m_n}; ++mt_m) "
        "mt_acc[mt_r][mt_m] = 0.0f;",
        f"for (int mt_c0 = mt_lane; mt_c0 < {steps}; mt_c0 += {LANES * u_n}) {{",
        f"  {vec} mt_v[{u_n}][{r_n}];",
        *([f"  float mt_s[{u_n}][{r_n}], mt_b[{u_n}][{r_n}];"] if quant else []),
        f"  {d.unroll}",
        f"  for (int mt_u = 0; mt_u < {u_n}; ++mt_u) {{",
        f"    const int mt_c = mt_c0 + mt_u * {LANES};",
        f"    if ({guard}) {{",
        f"      {d.unroll}",
        f"      for (int mt_r = 0; mt_r < {r_n}; ++mt_r) {{",
        f"        const size_t mt_row = static_cast<size_t>(mt_col + mt_r);",
        f"        mt_v[mt_u][mt_r] = reinterpret_cast<const {space}{vec}*>({{W}})"
        f"[mt_row * {row_words // words} + mt_c];",
    ]
    if quant:
        per_group = s.group_size // e
        g = f"mt_row * {k // s.group_size} + mt_c / {per_group}" if per_group > 1 else \
            f"mt_row * {k // s.group_size} + mt_c"
        core += [f"        mt_s[mt_u][mt_r] = {d.cast(f'{{S}}[{g}]', s.dtype, 'float32')};",
                 f"        mt_b[mt_u][mt_r] = {d.cast(f'{{B}}[{g}]', s.dtype, 'float32')};"]
    core += ["      }", "    }", "  }"]
    # x: the chunk's values of each row, 16 bytes at a time.
    x_item = 4 if s.dtype == "float32" else 2
    x_vectors = e * x_item // VECTOR_BYTES  # x vectors under one weight vector
    per_x_word = 4 // x_item
    core += [
        f"  {d.unroll}",
        f"  for (int mt_u = 0; mt_u < {u_n}; ++mt_u) {{",
        f"    const int mt_c = mt_c0 + mt_u * {LANES};",
        f"    if ({guard}) {{",
        f"      {d.unroll}",
        f"      for (int mt_m = 0; mt_m < {m_n}; ++mt_m) {{",
        f"        float mt_xf[{e}];",
    ]
    for j in range(x_vectors):
        core.append(f"        {{ const {vec} mt_xv = reinterpret_cast<const {space}{vec}*>(x)"
                    f"[(static_cast<size_t>(mt_m) * {steps} + mt_c) * {x_vectors} + {j}];")
        for i in range(words):
            for h, val in enumerate(_unpack(d, s.dtype, lane_of("mt_xv", i))):
                core.append(f"          mt_xf[{(j * words + i) * per_x_word + h}] = {val};")
        core.append("        }")
    if quant:
        # Each value q becomes the float 1 + q / 2^bits: its bits moved to the top of a
        # mantissa under the exponent of 1.0 (a shift and one three-input logic op), so that
        # sum(x * that) = sum(x) + sum(x * q) / 2^bits takes one fma a value.
        per_word = 32 // s.bits  # values in one weight word
        top = f"0x{((1 << s.bits) - 1) << (23 - s.bits):08x}u"
        core += [
            "        float mt_xs = 0.0f;",
            f"        for (int mt_i = 0; mt_i < {e}; ++mt_i) mt_xs += mt_xf[mt_i];",
            f"        {d.unroll}",
            f"        for (int mt_r = 0; mt_r < {r_n}; ++mt_r) {{",
            "          float mt_d = 0.0f;",
        ]
        for wi in range(words):
            core.append(f"          {{ const uint32_t mt_q = {lane_of('mt_v[mt_u][mt_r]', wi)};")
            for j in range(per_word):
                shift = 23 - s.bits - s.bits * j
                moved = (f"(mt_q << {shift})" if shift > 0 else f"(mt_q >> {-shift})" if shift < 0
                         else "mt_q")
                value = d.float_from_bits.format(x=f"0x3f800000u | ({moved} & {top})")
                term = d.fma.format(a=f"mt_xf[{wi * per_word + j}]", b=value, c="mt_d")
                core.append(f"            mt_d = {term};")
            core.append("          }")
        core += [f"          mt_acc[mt_r][mt_m] += mt_s[mt_u][mt_r] * {float(1 << s.bits)!r}f * "
                 "(mt_d - mt_xs) + mt_b[mt_u][mt_r] * mt_xs;",
                 "        }"]
    else:
        core += [f"        {d.unroll}",
                 f"        for (int mt_r = 0; mt_r < {r_n}; ++mt_r) {{",
                 "          float mt_d = mt_acc[mt_r][mt_m];"]
        for i in range(words):  # one x vector per weight vector, word for word
            for h, val in enumerate(_unpack(d, s.dtype, lane_of("mt_v[mt_u][mt_r]", i))):
                term = d.fma.format(a=f"mt_xf[{i * per_x_word + h}]", b=val, c="mt_d")
                core.append(f"          mt_d = {term};")
        core += ["          mt_acc[mt_r][mt_m] = mt_d;", "        }"]
    core += ["      }", "    }", "  }", "}"]
    other = d.shuffle_xor.format(x="mt_acc[mt_r][mt_m]", o="mt_o")
    core += [
        f"for (int mt_r = 0; mt_r < {r_n}; ++mt_r) for (int mt_m = 0; mt_m < {m_n}; ++mt_m) {{",
        f"  for (int mt_o = {LANES // 2}; mt_o > 0; mt_o /= 2) mt_acc[mt_r][mt_m] += {other};",
        f"  if (mt_lane == (mt_r * {m_n} + mt_m) % {LANES}) "
        f"{{Y}}[static_cast<size_t>(mt_m) * {{N}} + mt_col + mt_r] = "
        f"{d.cast('mt_acc[mt_r][mt_m]{BIAS}', 'float32', s.dtype)};",
        "}",
    ]
    start = 0
    for i, n in enumerate(s.widths):
        bias = f" + {d.cast(f'c{i}[mt_col + mt_r]', s.dtype, 'float32')}" if s.has_bias(i) else ""
        names_of = {"{W}": f"w{i}", "{S}": f"s{i}", "{B}": f"b{i}", "{Y}": f"y{i}", "{N}": str(n),
                    "{BIAS}": bias}
        cond = f"if (mt_col < {start + n}) " if i < len(s.widths) - 1 else ""
        body.append(f"{'else ' if i else ''}{cond}{{")
        body.append(f"  mt_col -= {start};" if start else "  // the first weight's columns")
        for line in core:
            for key, name in names_of.items():
                line = line.replace(key, name)
            body.append("  " + line)
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
    source = "\n".join(body) + "\n"
    header = template_header(d, source) + d.launch_bounds.format(bound=threads)
    digest = hashlib.sha256((d.name + header + source).encode()).hexdigest()[:12]
    return LoweredKernel(
        target=d.name, name=f"mlxt_projection_{digest}", input_names=tuple(names),
        output_names=tuple(f"y{i}" for i in range(len(s.widths))), source=source, header=header,
        ensure_row_contiguous=True, grid=(groups * threads, 1, 1), threadgroup=(threads, 1, 1),
        output_shapes=tuple((*s.lead, n) for n in s.widths), output_dtypes=(s.dtype,) * len(s.widths),
        input_shapes=tuple(in_shapes), input_dtypes=tuple(in_dtypes), options=d.constructor_options)


__all__ = ["render_projection"]
