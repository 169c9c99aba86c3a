"""A one-hot's matrix product in a joined graph as a row lookup: ``Gather`` of a table made at load.

Magika (issue 19) reads a file's 2048 bytes as a one-hot over 257 values (``Equal`` of the bytes
against an ``arange``), its quantize step is a ``Where`` of two codes
(``executors._quantized_booleans_as_select``) and its first Dense a fused run's float ``Gemm`` of
those codes: ``Cast`` of 526k codes to float, then 2048 x 257 x 64 products (on B4096 the ``Cast``
alone was 8.9 % of the joined graph's op time).  A row of codes holds the hot code at one of 257
places and the cold code elsewhere, so the product's row is one of 258 (each value, and none of
them) that ``numerics.one_hot_rows`` computes once, bit for bit what the ``Gemm`` makes (its proof;
where it cannot prove that, the graph stays).  ``Gather`` of the row by the value gives it, and the
fused run's requantisation after the ``Gemm`` reads the same float32 values.  On cpu-int8 the Dense
is ONNX Runtime's channels-last ``QLinearConv`` 1x1 of the codes as 2048 pixels of 257 channels; its
table is that ``QLinearConv`` itself run once at load on the 258 possible pixels: each output code is
its pixel's exact integer sum requantised on its own channel's constants, whatever the other pixels.

Only in a joined graph (``runtime/joined.py``, after its kernel check): apart, the one-hot is one
part's output and the product another's input.  A value outside the ``arange`` (none hot) reads the
table's last row: ``Clip`` to one below and one past the range, which ``Gather`` reads as that row.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..graph import GraphView, attr
from ..ort_session import open_session

#: The products whose rows of one-hot codes :func:`as_row_lookup` reads as a table.
_PRODUCTS = {("", "Gemm"), ("", "MatMul"), ("ai.onnx", "Gemm"), ("ai.onnx", "MatMul"), ("com.microsoft", "QLinearConv")}


def as_row_lookup(model: onnx.ModelProto, external: dict[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with each one-hot ``Gemm``/``MatMul`` (module docstring) as a ``Gather`` of its rows,
    a new model (``model`` itself where there is none); the weights it no longer reads leave ``external``."""
    found = [m for m in (_match(GraphView(model), node, external) for node in model.graph.node
                         if (node.domain, node.op_type) in _PRODUCTS) if m]
    if not found:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    chains: set[str] = set()
    read: set[str] = set()  # what the replaced nodes read: constants that may go with them
    for product, chain, a, start, table, shape in found:
        out = product.output[0]
        at = next(i for i, n in enumerate(graph.node) if list(n.output) == [out])
        consts = {f"{out}/rows": table, f"{out}/flat": np.array([-1], np.int64), f"{out}/start": start,
                  f"{out}/below": np.array(-1, start.dtype), f"{out}/past": np.array(len(table) - 1, start.dtype)}
        nodes = [helper.make_node("Reshape", [a, f"{out}/flat"], [f"{out}/values"])]
        if start:  # the arange's first value reads row 0
            nodes.append(helper.make_node("Sub", [f"{out}/values", f"{out}/start"], [f"{out}/offset"]))
        else:
            del consts[f"{out}/start"]
        nodes += [helper.make_node("Clip", [nodes[-1].output[0], f"{out}/below", f"{out}/past"], [f"{out}/index"]),
                  helper.make_node("Gather", [f"{out}/rows", f"{out}/index"], [out if shape is None else f"{out}/2d"],
                                   axis=0)]
        if shape is not None:  # a channels-last 1x1 convolution's rows: back to its output's shape
            consts[f"{out}/shape"] = shape
            nodes.append(helper.make_node("Reshape", [f"{out}/2d", f"{out}/shape"], [out]))
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        for k, node in enumerate(nodes):
            node.name = f"{out}/row_lookup{k}"
        graph.node.pop(at)
        for k, node in enumerate(nodes):
            graph.node.insert(at + k, node)
        chains.update(n.name for n in chain)
        read.update(t for n in (product, *chain) for t in n.input)
    _drop_unread(model, chains, read, external)
    return model


def _match(view: GraphView, product: onnx.NodeProto, external: dict[str, np.ndarray]) -> tuple | None:
    """``(product, the nodes before it, the one-hot's values, the arange's start, the table, the product's
    output shape for a ``Reshape`` after the ``Gather`` or None)`` where ``product`` reads the one-hot's
    codes as rows and computes exactly as a table; else None.  A float ``Gemm``/``MatMul`` reads them through
    ``Cast(float) -> Reshape([rows, n])`` (table: ``numerics.one_hot_rows``, proven); ONNX Runtime's
    channels-last ``QLinearConv`` 1x1 (cpu-int8) through ``Reshape([1, rows, 1, n])``, its table its own run on
    the ``n + 1`` possible rows (integer sums, exact; each output's requantisation its own)."""
    convolution = product.domain == "com.microsoft"
    chain = []
    tensor = product.input[0]
    for op in ("Reshape", "Where", "Equal") if convolution else ("Reshape", "Cast", "Where", "Equal"):
        node = view.producer_node(tensor)
        if node is None or node.op_type != op or node.domain not in ("", "ai.onnx"):
            return None
        chain.append(node)
        tensor = node.input[0]
    reshape, where, equal = chain[0], chain[-2], chain[-1]
    shape = view.const(reshape.input[1])
    hot, cold = view.const(where.input[1]), view.const(where.input[2])
    if shape is None or hot is None or cold is None or hot.size != 1 or cold.size != 1 or (
            not convolution and (attr(chain[1], "to") != TensorProto.FLOAT or shape.size != 2)):
        return None
    values, arange = next(((a, view.const(c)) for a, c in (equal.input, equal.input[::-1])
                           if view.const(c) is not None and view.const(a) is None), (None, None))
    if arange is None or arange.dtype.kind not in "iu" or arange.size < 2 or arange.shape[-1] != arange.size \
            or not np.array_equal(arange.ravel(), arange.ravel()[0] + np.arange(arange.size)) \
            or int(shape[-1]) != arange.size or not _last_axis_one(view, values, arange.ndim):
        return None
    start = np.array(arange.ravel()[0])
    if convolution:
        table = _convolved_rows(view, product, shape, hot, cold, external)
        return None if table is None else (product, chain, values, start, table,
                                           np.array([1, -1, 1, table.shape[1]], np.int64))
    weights, bias = _operands(view, product, external)
    if weights is None or weights.shape[0] != arange.size:
        return None
    table = nm.one_hot_rows(weights, bias, float(hot.reshape(())), float(cold.reshape(())))
    return None if table is None else (product, chain, values, start, table, None)


def _convolved_rows(view: GraphView, conv: onnx.NodeProto, shape: np.ndarray, hot: np.ndarray, cold: np.ndarray,
                    external: dict[str, np.ndarray]) -> np.ndarray | None:
    """The ``[n + 1, N]`` codes ``conv`` (channels-last ``QLinearConv`` 1x1 of constants but its input) makes
    for each one-hot row and the all-cold one, by ONNX Runtime's own kernel; None where it is not such."""
    n = int(shape[-1])
    plain = set(attr(conv, "strides") or [1]) == {1} and set(attr(conv, "dilations") or [1]) == {1} \
        and set(attr(conv, "pads") or [0]) == {0} and attr(conv, "group", 1) == 1 \
        and attr(conv, "auto_pad", "NOTSET") == "NOTSET"
    if attr(conv, "channels_last", 0) != 1 or list(attr(conv, "kernel_shape") or []) != [1, 1] or not plain \
            or len(conv.input) < 8 or shape.size != 4 or list(shape[[0, 2]]) != [1, 1] or (shape == 0).any():
        return None
    consts = {name: _constant(view, name, external) for name in conv.input[1:] if name}
    if any(value is None for value in consts.values()):
        return None
    rows = np.full((n + 1, n), cold.reshape(()), hot.dtype)
    rows[np.arange(n), np.arange(n)] = hot.reshape(())
    node = helper.make_node(conv.op_type, ["rows", *conv.input[1:]], ["codes"], domain=conv.domain)
    node.attribute.extend(conv.attribute)
    graph = helper.make_graph(
        [node], "rows", [helper.make_tensor_value_info("rows", helper.np_dtype_to_tensor_dtype(hot.dtype), None)],
        [helper.make_tensor_value_info("codes", helper.np_dtype_to_tensor_dtype(consts[conv.input[7]].dtype), None)],
        [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(conv.domain, 1)])
    codes = open_session(model, level="basic", threads=1).run(None, {"rows": rows[None, :, None, :]})[0]
    return codes.reshape(n + 1, -1)


def _last_axis_one(view: GraphView, values: str, rank: int) -> bool:
    """Whether ``values`` (the one-hot's input) is a ``Reshape`` to a constant shape of at least
    ``rank`` axes, the last 1: each of its values then makes one row of the one-hot, in order."""
    node = view.producer_node(values)
    shape = view.const(node.input[1]) if node is not None and node.op_type == "Reshape" else None
    return shape is not None and shape.ndim == 1 and shape.size >= rank and int(shape[-1]) == 1


def _operands(view: GraphView, product: onnx.NodeProto,
              external: dict[str, np.ndarray]) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The product's constant weights as ``[n, N]`` float32 and its bias as ``[N]`` (None: none), or
    ``(None, None)`` where it is not ``rows @ weights + bias`` of constants."""
    weights = _constant(view, product.input[1], external)
    if weights is None or weights.dtype != np.float32 or weights.ndim != 2:
        return None, None
    if product.op_type == "MatMul":
        return weights, None
    bias = _constant(view, product.input[2], external) if len(product.input) > 2 and product.input[2] else None
    if attr(product, "transA", 0) or attr(product, "alpha", 1.0) != 1.0 or attr(product, "beta", 1.0) != 1.0 \
            or (len(product.input) > 2 and product.input[2] and bias is None):
        return None, None
    weights = weights.T if attr(product, "transB", 0) else weights
    if bias is not None and bias.size not in (1, weights.shape[1]):
        return None, None
    return weights, None if bias is None else np.broadcast_to(bias.reshape(-1), (weights.shape[1],))


def _constant(view: GraphView, name: str, external: dict[str, np.ndarray]) -> np.ndarray | None:
    """Constant ``name``'s value (from ``external`` where the graph declares it external), else None."""
    if name in external:
        return np.asarray(external[name])
    init = view.inits.get(name)
    return None if init is None or init.data_location == TensorProto.EXTERNAL else view.const(name)


def _drop_unread(model: onnx.ModelProto, names: set[str], read: set[str], external: dict[str, np.ndarray]) -> None:
    """Remove the nodes called ``names`` that nothing reads any more (a one-hot also read elsewhere
    stays), then the constants of ``read`` nothing reads now, in place."""
    while True:
        view = GraphView(model.graph)
        dead = [n for n in view.nodes if n.name in names and not any(
            view.consumer_nodes(o) or view.is_graph_output(o) for o in n.output)]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    view = GraphView(model.graph)
    for init in [t for t in model.graph.initializer
                 if t.name in read and not view.consumer_nodes(t.name) and not view.is_graph_output(t.name)]:
        model.graph.initializer.remove(init)
        external.pop(init.name, None)
