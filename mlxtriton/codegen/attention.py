"""Codegen layer: the attention region's kernel (`mlxtriton.graph.attention`), written once for
both dialects. One threadgroup computes one query row of one head: its 32 SIMD groups (warps)
each walk every 32nd key with an online softmax, lanes splitting the head dimension, and then
merge their partial maxima, sums and outputs through threadgroup memory (the structure of MLX's
sdpa_vector, mlx/backend/cuda/scaled_dot_product_attention.cu, kernel_sdpav_1pass), reading a
boolean mask in place: a hidden key's k and v are never loaded. Over many keys the keys split
over several threadgroups a row, whose partial results a second kernel merges (MLX's
kernel_sdpav_2pass_1 and _2). May import the graph layer and codegen.
"""

from __future__ import annotations

import hashlib

from mlxtriton.codegen.dialects import DIALECTS, Dialect
from mlxtriton.codegen.kernel_ir import Ops
from mlxtriton.codegen.render import LoweredKernel, template_header
from mlxtriton.graph.attention import LANES, DecodeAttention

# The running maximum's start: the lowest finite float, as MLX's kernel starts, so that a SIMD
# group that meets no visible key merges as a factor exp(lowest - max) = 0, not inf - inf.
_LOWEST = "-3.402823466e+38f"


def _warp(d: Dialect, x: str, combine: str) -> list[str]:
    """Lines leaving in every lane of a SIMD group the ``combine`` ("{a} + {b}") of ``x`` over
    its 32 lanes, by butterfly shuffles (every lane gets the same value, in the same order)."""
    other = d.shuffle_xor.format(x=x, o="mt_o")
    return [f"for (int mt_o = {LANES // 2}; mt_o > 0; mt_o /= 2) {{",
            f"  {x} = {combine.format(a=x, b=other)};", "}"]


def _row_offsets(s: DecodeAttention) -> list[str]:
    """Lines giving query row ``mt_row``'s query index, head and batch, where its kv head's keys
    (``mt_k``) and values (``mt_v``) start for this lane, and its mask row (``mt_m``)."""
    sb, sh, si, _ = s.mask_strides
    e, ev = s.head_dim // LANES, s.value_dim // LANES
    return [
        f"const int mt_i = mt_row % {s.queries};",
        f"const int mt_h = (mt_row / {s.queries}) % {s.heads};",
        f"const int mt_b = mt_row / {s.queries * s.heads};",
        f"const size_t mt_kv = static_cast<size_t>(mt_b * {s.kv_heads} + mt_h / "
        f"{s.heads // s.kv_heads}) * {s.keys};",
        f"const size_t mt_k = mt_kv * {s.head_dim} + mt_lane * {e};",
        f"const size_t mt_v = mt_kv * {s.value_dim} + mt_lane * {ev};",
        f"const size_t mt_m = static_cast<size_t>(mt_b) * {sb} + mt_h * {sh} + mt_i * {si};",
    ]


def _query(s: DecodeAttention, d: Dialect) -> list[str]:
    """Lines declaring this lane's share of the output (``mt_out``) and loading its share of
    query row ``mt_row``, scaled, in float32 (``mt_q``)."""
    e, ev = s.head_dim // LANES, s.value_dim // LANES
    q = f"q[static_cast<size_t>(mt_row) * {s.head_dim} + mt_lane * {e} + mt_j]"
    return [f"float mt_q[{e}];", f"float mt_out[{ev}];",
            f"for (int mt_j = 0; mt_j < {e}; ++mt_j) mt_q[mt_j] = {d.cast(q, s.dtype, 'float32')} * "
            f"{s.scale:.9g}f;"]


def render_attention(spec: DecodeAttention, dialect: Dialect | str, keys_per_step: int = 1,
                     key_blocks: int = 1, block_simd_groups: int = 8) -> LoweredKernel:
    """The kernel of one attention region in ``dialect``: inputs q, k, v, mask (the array the mask
    broadcasts from), output o [batch, heads, queries, value_dim] in q's dtype, accumulated in
    float32.

    A row whose every key is hidden averages v over all keys, as MLX's SDPA does (its fallback
    fills hidden scores with the lowest finite value, so they tie): the threadgroup walks the keys
    a second time, each with score 0.

    Each SIMD group takes ``keys_per_step`` consecutive keys a step, their loads issued together
    before the scores they feed are reduced. One key a step is MLX's structure and the one timed
    on a GPU (benchmarks/results/decode_kernels_h100.json); more run in the Metal emulator's tests
    but have not been timed, so they are no default.

    ``key_blocks`` > 1 splits each row's keys over that many threadgroups of
    ``block_simd_groups`` SIMD groups, one key a step (`_split_keys`): the kernel returned
    writes partial results and its `LoweredKernel.then` merges them.

    Example:
        >>> from mlxtriton.graph.attention import DecodeAttention
        >>> spec = DecodeAttention(1, 32, 8, 1, 256, 64, 64, "bfloat16", 0.125, (1, 256))
        >>> k = render_attention(spec, "cuda")
        >>> k.grid, k.threadgroup, k.output_shapes
        ((32768, 1, 1), (1024, 1, 1), ((1, 32, 1, 64),))
    """
    d = DIALECTS[dialect] if isinstance(dialect, str) else dialect
    if key_blocks > 1:
        if keys_per_step != 1:
            raise ValueError("attention split over key blocks walks one key a step")
        return _split_keys(spec, d, key_blocks, block_simd_groups)
    s, u = spec, keys_per_step
    e, ev = s.head_dim // LANES, s.value_dim // LANES
    sk = s.mask_strides[3]
    fexp = d.code_for_op[(Ops.EXP, "float")]
    load = lambda x: d.cast(x, s.dtype, "float32")  # noqa: E731
    body = [
        f"// attention at decode: q [{s.batch}, {s.heads}, {s.queries}, {s.head_dim}], k and v over "
        f"{s.keys} keys of {s.kv_heads} kv heads, mask {list(s.mask_shape)}",
        f"const int mt_tid = static_cast<int>({d.thread_in_group});",
        f"const int mt_lane = mt_tid % {LANES};",
        f"const int mt_warp = mt_tid / {LANES};",
        f"const int mt_row = static_cast<int>({d.group_in_grid});",
        *_row_offsets(s),
        f"{d.shared} float mt_wmax[{LANES}];",
        f"{d.shared} float mt_wsum[{LANES}];",
        f"{d.shared} float mt_wout[{LANES * (LANES + 1)}];",
        *_query(s, d),
        "float mt_run = 0.0f, mt_factor = 0.0f, mt_total = 0.0f;",
        "for (int mt_pass = 0; mt_pass < 2; ++mt_pass) {",
        f"  mt_run = {_LOWEST};",
        "  float mt_sum = 0.0f;",
        f"  for (int mt_j = 0; mt_j < {ev}; ++mt_j) mt_out[mt_j] = 0.0f;",
        f"  for (int mt_first = mt_warp * {u}; mt_first < {s.keys}; mt_first += {LANES * u}) {{",
        f"    bool mt_shown[{u}];",
        f"    float mt_s[{u}];",
        "    bool mt_any = false;",
        f"    for (int mt_u = 0; mt_u < {u}; ++mt_u) {{",
        "      const int mt_key = mt_first + mt_u;",
        f"      mt_shown[mt_u] = mt_key < {s.keys} && "
        f"(mt_pass == 1 || mask[mt_m + static_cast<size_t>(mt_key) * {sk}]);",
        "      mt_any = mt_any || mt_shown[mt_u];",
        "      mt_s[mt_u] = 0.0f;",
        "    }",
        "    if (!mt_any) continue;  // the mask is the same in every lane: so is the branch",
        "    if (mt_pass == 0) {",
        f"      for (int mt_u = 0; mt_u < {u}; ++mt_u) {{",
        "        if (!mt_shown[mt_u]) continue;",
        f"        for (int mt_j = 0; mt_j < {e}; ++mt_j) mt_s[mt_u] += mt_q[mt_j] * "
        f"{load(f'k[mt_k + static_cast<size_t>(mt_first + mt_u) * {s.head_dim} + mt_j]')};",
        "      }",
        f"      for (int mt_u = 0; mt_u < {u}; ++mt_u) {{",
        "        if (!mt_shown[mt_u]) continue;",
        *("        " + ln for ln in _warp(d, "mt_s[mt_u]", "{a} + {b}")),
        "      }",
        "    }",
        "    float mt_new = mt_run;",
        f"    for (int mt_u = 0; mt_u < {u}; ++mt_u) if (mt_shown[mt_u]) mt_new = mt_max(mt_new, mt_s[mt_u]);",
        f"    const float mt_f = {fexp.format('mt_run - mt_new')};",
        "    mt_run = mt_new;",
        "    mt_sum *= mt_f;",
        f"    for (int mt_j = 0; mt_j < {ev}; ++mt_j) mt_out[mt_j] *= mt_f;",
        f"    for (int mt_u = 0; mt_u < {u}; ++mt_u) {{",
        "      if (!mt_shown[mt_u]) continue;",
        f"      const float mt_p = {fexp.format('mt_s[mt_u] - mt_new')};",
        "      mt_sum += mt_p;",
        f"      for (int mt_j = 0; mt_j < {ev}; ++mt_j) mt_out[mt_j] += mt_p * "
        f"{load(f'v[mt_v + static_cast<size_t>(mt_first + mt_u) * {s.value_dim} + mt_j]')};",
        "    }",
        "  }",
        "  if (mt_lane == 0) { mt_wmax[mt_warp] = mt_run; mt_wsum[mt_warp] = mt_sum; }",
        f"  {d.barrier}",
        "  // lane w of every SIMD group now speaks for SIMD group w",
        "  float mt_top = mt_wmax[mt_lane];",
        *("  " + ln for ln in _warp(d, "mt_top", "mt_max({a}, {b})")),
        f"  mt_factor = {fexp.format('mt_wmax[mt_lane] - mt_top')};",
        "  mt_total = mt_wsum[mt_lane] * mt_factor;",
        *("  " + ln for ln in _warp(d, "mt_total", "{a} + {b}")),
        "  // the same total in every thread: the whole threadgroup leaves, or walks again",
        "  if (mt_total != 0.0f) break;",
        f"  {d.barrier}",
        "}",
        "const float mt_scale = 1.0f / mt_total;",
        f"for (int mt_j = 0; mt_j < {ev}; ++mt_j) {{",
        f"  mt_wout[mt_lane * {LANES + 1} + mt_warp] = mt_out[mt_j];",
        f"  {d.barrier}",
        f"  float mt_acc = mt_wout[mt_warp * {LANES + 1} + mt_lane] * mt_factor;",
        *("  " + ln for ln in _warp(d, "mt_acc", "{a} + {b}")),
        "  if (mt_lane == 0) {",
        f"    o[static_cast<size_t>(mt_row) * {s.value_dim} + mt_warp * {ev} + mt_j] = "
        f"{d.cast('mt_acc * mt_scale', 'float32', s.dtype)};",
        "  }",
        f"  {d.barrier}",
        "}",
    ]
    return _lowered(d, "attention", body, LANES * LANES, s.batch * s.heads * s.queries,
                    ("q", "k", "v", "mask"), _input_shapes(s), (s.dtype, s.dtype, s.dtype, "bool"),
                    ("o",), ((s.batch, s.heads, s.queries, s.value_dim),), (s.dtype,))


def _input_shapes(s: DecodeAttention) -> tuple:
    return ((s.batch, s.heads, s.queries, s.head_dim), (s.batch, s.kv_heads, s.keys, s.head_dim),
            (s.batch, s.kv_heads, s.keys, s.value_dim), s.mask_shape)


def _split_keys(s: DecodeAttention, d: Dialect, blocks: int, warps: int) -> LoweredKernel:
    """Attention over many keys in two kernels (MLX's kernel_sdpav_2pass_1 and _2). The first
    gives each query row ``blocks`` threadgroups of ``warps`` SIMD groups: SIMD group w of block
    b walks keys b * warps + w, then every ``blocks * warps``-th, with an online softmax; the
    block merges its SIMD groups and writes its maximum, sum and unnormalised output (float32).
    The second (`LoweredKernel.then`) merges a row's blocks, one thread per output element, and
    averages v over every key in a row whose every key is hidden (MLX's SDPA)."""
    e, ev, dv = s.head_dim // LANES, s.value_dim // LANES, s.value_dim
    sk = s.mask_strides[3]
    fexp = d.code_for_op[(Ops.EXP, "float")]
    load = lambda x: d.cast(x, s.dtype, "float32")  # noqa: E731
    threads = warps * LANES
    rows = s.batch * s.heads * s.queries
    partial = f"static_cast<size_t>(mt_row) * {blocks} + mt_blk"
    first = [
        f"// attention at decode, keys split over {blocks} blocks: q [{s.batch}, {s.heads}, "
        f"{s.queries}, {s.head_dim}], k and v over {s.keys} keys of {s.kv_heads} kv heads, "
        f"mask {list(s.mask_shape)}",
        f"const int mt_tid = static_cast<int>({d.thread_in_group});",
        f"const int mt_lane = mt_tid % {LANES};",
        f"const int mt_warp = mt_tid / {LANES};",
        f"const int mt_blk = static_cast<int>({d.group_in_grid}) % {blocks};",
        f"const int mt_row = static_cast<int>({d.group_in_grid}) / {blocks};",
        *_row_offsets(s),
        f"{d.shared} float mt_wmax[{warps}];",
        f"{d.shared} float mt_wsum[{warps}];",
        f"{d.shared} float mt_wout[{warps * dv}];",
        *_query(s, d),
        f"for (int mt_j = 0; mt_j < {ev}; ++mt_j) mt_out[mt_j] = 0.0f;",
        f"float mt_run = {_LOWEST}, mt_sum = 0.0f;",
        f"for (int mt_key = mt_blk * {warps} + mt_warp; mt_key < {s.keys}; mt_key += {blocks * warps}) {{",
        f"  if (!mask[mt_m + static_cast<size_t>(mt_key) * {sk}]) continue;  // the same in every lane",
        "  float mt_s = 0.0f;",
        f"  for (int mt_j = 0; mt_j < {e}; ++mt_j) mt_s += mt_q[mt_j] * "
        f"{load(f'k[mt_k + static_cast<size_t>(mt_key) * {s.head_dim} + mt_j]')};",
        *("  " + ln for ln in _warp(d, "mt_s", "{a} + {b}")),
        "  const float mt_new = mt_max(mt_run, mt_s);",
        f"  const float mt_f = {fexp.format('mt_run - mt_new')};",
        f"  const float mt_p = {fexp.format('mt_s - mt_new')};",
        "  mt_run = mt_new;",
        "  mt_sum = mt_sum * mt_f + mt_p;",
        f"  for (int mt_j = 0; mt_j < {ev}; ++mt_j) mt_out[mt_j] = mt_out[mt_j] * mt_f + mt_p * "
        f"{load(f'v[mt_v + static_cast<size_t>(mt_key) * {s.value_dim} + mt_j]')};",
        "}",
        "if (mt_lane == 0) { mt_wmax[mt_warp] = mt_run; mt_wsum[mt_warp] = mt_sum; }",
        f"for (int mt_j = 0; mt_j < {ev}; ++mt_j) "
        f"mt_wout[mt_warp * {dv} + mt_lane * {ev} + mt_j] = mt_out[mt_j];",
        d.barrier,
        f"float mt_top = {_LOWEST};",
        f"for (int mt_w = 0; mt_w < {warps}; ++mt_w) "
        "mt_top = mt_max(mt_top, static_cast<float>(mt_wmax[mt_w]));",
        f"for (int mt_c = mt_tid; mt_c < {dv}; mt_c += {threads}) {{",
        "  float mt_acc = 0.0f;",
        f"  for (int mt_w = 0; mt_w < {warps}; ++mt_w) mt_acc += mt_wout[mt_w * {dv} + mt_c] * "
        f"{fexp.format('mt_wmax[mt_w] - mt_top')};",
        f"  part[({partial}) * {dv} + mt_c] = mt_acc;",
        "}",
        "if (mt_tid == 0) {",
        "  float mt_total = 0.0f;",
        f"  for (int mt_w = 0; mt_w < {warps}; ++mt_w) mt_total += mt_wsum[mt_w] * "
        f"{fexp.format('mt_wmax[mt_w] - mt_top')};",
        f"  part_max[{partial}] = mt_top;",
        f"  part_sum[{partial}] = mt_total;",
        "}",
    ]
    merge_threads = -(-dv // LANES) * LANES
    second = [
        f"// attention at decode: the {blocks} key blocks of each query row merged",
        f"const int mt_c = static_cast<int>({d.thread_in_group});",
        f"const int mt_row = static_cast<int>({d.group_in_grid});",
        f"if (mt_c < {dv}) {{",
        f"  const size_t mt_p0 = static_cast<size_t>(mt_row) * {blocks};",
        f"  float mt_top = {_LOWEST};",
        f"  for (int mt_j = 0; mt_j < {blocks}; ++mt_j) "
        "mt_top = mt_max(mt_top, static_cast<float>(part_max[mt_p0 + mt_j]));",
        "  float mt_total = 0.0f, mt_acc = 0.0f;",
        f"  for (int mt_j = 0; mt_j < {blocks}; ++mt_j) {{",
        f"    const float mt_f = {fexp.format('part_max[mt_p0 + mt_j] - mt_top')};",
        "    mt_total += part_sum[mt_p0 + mt_j] * mt_f;",
        f"    mt_acc += part[(mt_p0 + mt_j) * {dv} + mt_c] * mt_f;",
        "  }",
        "  if (mt_total == 0.0f) {  // every key hidden: the mean of v over all keys",
        f"    const int mt_h = (mt_row / {s.queries}) % {s.heads};",
        f"    const int mt_b = mt_row / {s.queries * s.heads};",
        f"    const size_t mt_v = (static_cast<size_t>(mt_b * {s.kv_heads} + mt_h / "
        f"{s.heads // s.kv_heads}) * {s.keys}) * {dv} + mt_c;",
        "    mt_acc = 0.0f;",
        f"    for (int mt_key = 0; mt_key < {s.keys}; ++mt_key) "
        f"mt_acc += {load(f'v[mt_v + static_cast<size_t>(mt_key) * {dv}]')};",
        f"    mt_total = {float(s.keys)!r}f;",
        "  }",
        f"  o[static_cast<size_t>(mt_row) * {dv} + mt_c] = "
        f"{d.cast('mt_acc / mt_total', 'float32', s.dtype)};",
        "}",
    ]
    inputs = _input_shapes(s)
    in_dtypes = (s.dtype, s.dtype, s.dtype, "bool")
    partials = ((rows, blocks, dv), (rows, blocks), (rows, blocks))
    merge = _lowered(d, "attention_merge", second, merge_threads, rows,
                     ("v", "part", "part_max", "part_sum"), (inputs[2], *partials),
                     (s.dtype, "float32", "float32", "float32"), ("o",),
                     ((s.batch, s.heads, s.queries, dv),), (s.dtype,))
    return _lowered(d, "attention_part", first, threads, rows * blocks, ("q", "k", "v", "mask"), inputs,
                    in_dtypes, ("part", "part_max", "part_sum"), partials, ("float32",) * 3, then=merge)


def _lowered(d: Dialect, stem: str, body: list[str], threads: int, groups: int, inputs: tuple[str, ...],
             input_shapes: tuple, input_dtypes: tuple[str, ...], outputs: tuple[str, ...],
             output_shapes: tuple, output_dtypes: tuple[str, ...], then: LoweredKernel | None = None
             ) -> LoweredKernel:
    """One kernel of ``groups`` threadgroups of ``threads`` threads, named by a hash of its text."""
    source = "\n".join(body) + "\n"
    header = template_header(d, source) + d.launch_bounds.format(bound=threads)
    digest = hashlib.sha256((d.name + header + source).encode()).hexdigest()[:12]
    return LoweredKernel(
        target=d.name, name=f"mlxt_{stem}_{digest}", input_names=inputs, output_names=outputs,
        source=source, header=header, ensure_row_contiguous=True,
        grid=(groups * threads, 1, 1), threadgroup=(threads, 1, 1),
        output_shapes=output_shapes, output_dtypes=output_dtypes, input_shapes=input_shapes,
        input_dtypes=input_dtypes, options=d.constructor_options, then=then)


__all__ = ["render_attention"]
