"""Patterns layer: per-channel affine maps after a convolution (batch-norm in inference mode)
fold into its weights and bias (issue 5, rule 5). May import mlx and mlxtriton.graph.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Var

from mlxtriton.patterns.pattern import P
from mlxtriton.patterns.rewrite import Match, Miss, Rules

# Batch-norm in inference mode is (conv(x, w) - mean) * rsqrt(var + eps) * gamma + beta with
# statistics that do not depend on the batch: each step is a per-output-channel shift or scale,
# conv(x, w) * s == conv(x, w * s), and conv(x, w) + b is the canonical biased convolution.
# Three small rules fold any such chain into the weights and one bias add; with constant weights
# and statistics the new weights are computed at optimize time (constant folding). Weights that are
# arguments (an nn.Module under mlxtriton.optimize reads its parameters at each call) are not
# scaled per call: shifts still fold into the bias, and the scale stays in the fused epilogue.
# The bias add and a ReLU after it are elementwise: the fuse stage makes one kernel of them.
# A scale computed from the convolution's own output (batch statistics: batch-norm in training
# mode) is left alone.


def _channels(m: Match, v: Var, conv: Var) -> Var | Miss | None:
    """``v`` as a [C] vector of the convolution's output channels (a scalar is broadcast), a Miss
    when it is one but computed from the convolution's output, None when it is no channel vector."""
    c = conv.shape[-1]
    e = m.graph.producer(v)
    src = e.inputs[0] if e is not None and e.primitive == "Broadcast" else v
    if src.ndim > conv.ndim or (src.ndim and (src.shape[-1] not in (1, c) or any(s != 1 for s in src.shape[:-1]))):
        return None
    if src.dtype not in dtypes.FLOATING:
        return None
    if m.values.depends_on(src, conv):
        return Miss("the per-channel statistics are computed from the convolution's output (batch "
                    "statistics: batch-norm in training mode), left alone")
    if src.size == c and src.ndim:
        return m.reshape(src, (c,))
    return m.add("Broadcast", [m.reshape(src, ())], shape=(c,))


def _weights_foldable(m: Match) -> Miss | None:
    w = m["w"]
    if m.values.is_constant(w):
        return None
    # Scaling argument weights on every call costs a pass over the weights, where the per-channel
    # scale in the fused epilogue after the convolution costs nothing extra (it is one kernel
    # with the bias add and the ReLU). Folding is worth it where it happens once.
    return Miss(f"the weights {w.type_str()} are arguments, not constants: the per-channel scale "
                "stays in the fused epilogue rather than scaling the weights on every call")


def _finite_nonzero(m: Match, s: Var) -> Miss | None:
    # conv(x, w) * s == conv(x, w * s) needs every s finite and nonzero: an overflowing
    # convolution times 0 is NaN, while the zeroed filter gives 0.
    value = m.values.value(s) if m.values.is_constant(s) else None
    if value is None:
        return Miss("the per-channel scale is not known at optimize time, so it cannot be shown "
                    "finite and nonzero (folding 0 or inf into the weights changes overflows)")
    value = value.astype(mx.float32)
    if not mx.all(mx.isfinite(value) & (value != 0)).item():
        return Miss("a per-channel scale is 0 or not finite: folded into the weights it would "
                    "change what an overflowing convolution gives")
    return None


def _conv(m: Match, w: Var) -> Var:
    return m.add("Convolution", [m["inp"], w], **m.eqn("conv").params)


def _bias_add(m: Match, y: Var, bias: Var) -> Var:
    return m.add("Add", [y, m.add("Broadcast", [m.astype(bias, y.dtype)], shape=y.shape)])


def conv_scale(m: Match):  # (conv(x, w) [+ b]) * s -> conv(x, w * s) [+ b * s]
    conv, out = m["conv"], m.root.outputs[0]
    if out.dtype != conv.dtype:
        return None
    s = _channels(m, m["s"], conv)
    if not isinstance(s, Var):
        return s
    bias = None
    if "bias" in m:
        bias = _channels(m, m["bias"], conv)
        if not isinstance(bias, Var):
            return bias
    if (miss := _weights_foldable(m)) is not None:
        return miss
    if (miss := _finite_nonzero(m, m["s"])) is not None:
        return miss
    w = m["w"]
    per_filter = m.add("Broadcast", [m.reshape(m.astype(s, w.dtype), (w.shape[0],) + (1,) * (w.ndim - 1))],
                       shape=w.shape)
    y = _conv(m, m.fold(m.add("Multiply", [w, per_filter])))
    if bias is not None:
        y = _bias_add(m, y, m.fold(m.add("Multiply", [bias, m.astype(s, bias.dtype)])))
    m.detail = f"per-channel scale folded into the convolution's weights {w.type_str()} at optimize time"
    return y


def conv_shift(m: Match):  # conv(x, w) [+ b] - t -> conv(x, w) + (b - t)
    conv, out = m["conv"], m.root.outputs[0]
    if out.dtype != conv.dtype:
        return None
    t = _channels(m, m["t"], conv)
    if not isinstance(t, Var):
        return t
    if "bias" in m:
        bias = _channels(m, m["bias"], conv)
        if not isinstance(bias, Var):
            return bias
        shift = m.add("Subtract", [bias, m.astype(t, bias.dtype)])
    else:
        shift = m.add("Negative", [t])
    m.detail = "per-channel shift folded into the convolution's bias"
    return _bias_add(m, m["conv"], m.fold(shift))


def conv_bias_sum(m: Match):  # conv(x, w) + b1 + b2 -> conv(x, w) + (b1 + b2)
    conv, out = m["conv"], m.root.outputs[0]
    if out.dtype != conv.dtype:
        return None
    b1, b2 = _channels(m, m["bias"], conv), _channels(m, m["bias2"], conv)
    if not isinstance(b1, Var) or not isinstance(b2, Var):
        return b1 if isinstance(b1, Miss) else (b2 if isinstance(b2, Miss) else None)
    m.detail = "two per-channel biases summed into one"
    return _bias_add(m, m["conv"], m.fold(m.add("Add", [b1, m.astype(b2, b1.dtype)])))


_conv_pat = P("Convolution", P.var("inp"), P.var("w"), name="conv")
_biased = P("Add", _conv_pat, P.var("bias"))

CONV = Rules(
    [
        (P("Multiply", _biased | _conv_pat, P.var("s")), conv_scale),
        (P("Subtract", _biased | _conv_pat, P.var("t")), conv_shift),
        (P("Add", _biased, P.var("bias2")), conv_bias_sum),
    ],
    group="conv",
)
