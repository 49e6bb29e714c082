"""Codegen layer: a fused region's body ``Graph`` as a ``Region``, one op per equation.

The graph IR names primitives and params as MLX does, and so does a Region, so the mapping is
direct. 0-d constants fold into the kernel as literals; other constants become extra inputs the
caller passes after the body's inputs. May import the graph layer and codegen.
"""

from __future__ import annotations

import mlx.core as mx

from mlxtriton.codegen.builder import RegionError
from mlxtriton.codegen.region import Input, Op, Region
from mlxtriton.graph import dtypes
from mlxtriton.graph.core import Graph, Var


def region_from_graph(body: Graph, name: str = "region") -> tuple[Region, tuple[mx.array, ...]]:
    """The Region of a fused body, and the constant arrays to pass after the body's inputs.

    Args:
        body: the ``body`` param of a ``Fused`` equation (or any graph of supported ops).
        name: a name stem for the kernel.

    Returns:
        ``(region, extra_inputs)``: the kernel takes ``body.inputs`` followed by
        ``extra_inputs`` (the non-scalar constants, in order).

    Raises:
        RegionError: an equation with several outputs (codegen supports none).

    Example:
        >>> import mlx.core as mx, mlxtriton
        >>> g = mlxtriton.trace(lambda x: mx.softmax(x * 2, axis=-1))(mx.ones((4, 8)))
        >>> region, extra = region_from_graph(g, "softmax")
        >>> [o.primitive for o in region.ops], len(extra)
        (['Constant', 'Broadcast', 'Multiply', 'Softmax'], 0)
    """
    index: dict[Var, int] = {}
    inputs = [Input(v.shape, v.dtype) for v in body.inputs]
    for k, v in enumerate(body.inputs):
        index[v] = k
    scalars, extra = [], []
    for v, array in body.constants:
        if v.shape == ():
            scalars.append((v, array))
        else:
            index[v] = len(inputs)
            inputs.append(Input(v.shape, v.dtype))
            extra.append(array)
    ops: list[Op] = []

    def define(v: Var) -> None:
        index[v] = len(inputs) + len(ops) - 1

    for v, array in scalars:
        value = dtypes.to_numpy(array).item()
        ops.append(Op("Constant", (), (("value", value), ("dtype", v.dtype))))
        define(v)
    for eqn in body.eqns:
        if len(eqn.outputs) != 1:
            raise RegionError(f"{eqn.primitive} has {len(eqn.outputs)} outputs; a kernel op has one")
        ops.append(Op(eqn.primitive, tuple(index[v] for v in eqn.inputs),
                      tuple(dict(eqn.params).items())))
        define(eqn.outputs[0])
    return Region(tuple(inputs), tuple(ops), tuple(index[v] for v in body.outputs), name), \
        tuple(extra)
