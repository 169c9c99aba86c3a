"""One-element constants written at their node's rank, for ONNX Runtime's fast broadcast.

ONNX Runtime's CPU kernels of the broadcasting elementwise ops (``Add``, ``Div``, comparisons, ...)
take a slow path, one element per inner call, when one operand is a one-element tensor of lower
rank and the output's last dimension is 1: onnxruntime 1.32, one thread, ``Div`` of a float
``[1, 256, 512, 1]`` tensor by a 0-d constant 1.18 ms, by the same value shaped ``[1, 1, 1, 1]``
34 µs, and by the 0-d constant on ``[1, 256, 512]`` 33 µs.  Such tensors are what a 1-D
convolution written as a 2-D one over ``[N, C, L, 1]`` makes (Magika's TensorFlow export), and each
quantize step's ``Div``, ``GreaterOrEqual`` and ``Add`` on them (``qdq.make_quantize_function``,
inlined) and each code offset of a fused run read such a constant: Magika on
DPUCZDX8G_ISA1_B4096 spent about a third of its frame there (benchmarks/results/runtime_corpus_s34.md).

:func:`full_rank_constants` gives each such operand a copy shaped ``[1] * rank``.  Broadcasting a
one-element tensor of any rank up to the output's gives the same values and the same output shape,
so every output is bit for bit what it was; only the kernel's loop changes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ..operators import BROADCAST_ELEMENTWISE_OPS, FOLDING_PRODUCERS


def full_rank_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each one-element constant operand of a broadcasting elementwise node whose
    output has rank >= 2 and last dimension 1 replaced by a ``[1] * rank`` copy (module docstring).

    Returns ``model`` itself where nothing changes; else a copy whose model-local functions are
    inlined (their quantize steps hold such constants) and whose rewritten nodes read new
    initialisers.  Output ranks come from ONNX shape inference, so a node after an op it cannot
    infer (ONNX Runtime's contrib kernels) keeps its constants."""
    if not len(model.functions) and not any(n.op_type in BROADCAST_ELEMENTWISE_OPS for n in model.graph.node):
        return model
    work = onnx.inliner.inline_local_functions(model) if len(model.functions) else model
    graph = work.graph
    inits = {t.name: t for t in graph.initializer if _size(t.dims) == 1}
    consts = {n.output[0]: n.attribute[0].t for n in graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"
              and _size(n.attribute[0].t.dims) == 1}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    shapes = _output_shapes(work)
    # (node index, input index, the constant or None for a computed one-element tensor, rank)
    edits: list[tuple[int, int, onnx.TensorProto | None, int]] = []
    for index, node in enumerate(graph.node):
        if node.op_type not in BROADCAST_ELEMENTWISE_OPS or node.domain not in ("", "ai.onnx"):
            continue
        shape = shapes.get(node.output[0])
        if shape is None or len(shape) < 2 or shape[-1] != 1 \
                or any(producer.get(i) in FOLDING_PRODUCERS for i in node.input):
            continue
        for k, name in enumerate(node.input):
            tensor = inits.get(name) or consts.get(name)
            known = shapes.get(name)
            if tensor is not None and len(tensor.dims) < len(shape):
                edits.append((index, k, tensor, len(shape)))
            elif tensor is None and known is not None and len(known) < len(shape) and all(d == 1 for d in known):
                edits.append((index, k, None, len(shape)))  # computed (a zero point's Cast): reshaped in the graph
    if not edits:
        return model
    if work is model:
        work = onnx.ModelProto.FromString(model.SerializeToString())
    made: dict[tuple[str, int], str] = {}
    before: dict[int, list[onnx.NodeProto]] = {}  # node index -> the Reshape nodes to put before it
    for index, k, tensor, rank in edits:
        node = work.graph.node[index]
        key = (node.input[k], rank)
        if key not in made:
            made[key] = f"{node.input[k]}__rank{rank}"
            if tensor is not None:
                array = numpy_helper.to_array(tensor).reshape((1,) * rank)
                work.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), made[key]))
            else:
                shape_name = f"{made[key]}__shape"
                work.graph.initializer.append(numpy_helper.from_array(np.ones(rank, np.int64), shape_name))
                before.setdefault(index, []).append(onnx.helper.make_node(
                    "Reshape", [node.input[k], shape_name], [made[key]], name=made[key]))
        node.input[k] = made[key]
    if before:
        nodes = [m for i, n in enumerate(work.graph.node) for m in [*before.get(i, []), n]]
        del work.graph.node[:]
        work.graph.node.extend(nodes)
    return work


def _size(dims) -> int:
    return int(np.prod(list(dims), dtype=np.int64))


def _output_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Each tensor's inferred shape (known dimensions as ints, unknown ones as -1); none where ONNX
    shape inference refuses the graph (the rewrite is then skipped: a speed-up only, never needed)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        return {}
    out = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    return out
