"""One view of an ONNX graph for every stage: producers, consumers, constants, attributes, slicing.

Each stage used to index graphs its own way (the checker by node position through Q/DQ steps, the
float passes and the compiler by node, the accuracy algorithms with plain dicts that missed what an
If/Loop body reads), with three attribute readers (one left strings as bytes) and three ways to
cut a sub-model (issue 17 item 3).  Here, once:

* :class:`GraphView`: the nodes in graph (topological) order; ``producer`` and ``consumers`` map a
  tensor to node *positions* (the index into ``nodes``, so a stage keeps per-node facts in plain
  lists); what an If/Loop/Scan body reads from the outer scope is a read by its node
  (:func:`node_reads`), as the ONNX scoping rules make it.  Data flow can also be
  asked *through* quantize/dequantize steps (``data_*``): a QDQ model then reads as the float
  model it came from, which is how the checker places it and the partitioner joins it.
* :func:`attr` / :func:`attr_values`: attribute values with strings decoded (``"NOTSET"``, never
  ``b"NOTSET"``).  The operator registry defines op facts from attributes, so the one decoder is
  written there (:func:`npuflow.operators.node_attr`) and is this module's ``attr``: the registry
  imports nothing of npuflow's graph code, and this module builds on the registry (which inputs
  carry data, which nodes are Q/DQ steps).
* :func:`slice_model`: the part of a model that computes some tensors from others;
  :func:`slice_nodes`: a model of a given node set (a partition's CPU or plugin part).
* a few in-place edits every rewrite needs (:func:`set_attr`, :func:`set_array`,
  :func:`remove_unused_initializers`, :func:`unique_name`).

Why not onnx-ir (a dependency, used to load models): the stages edit ``ModelProto`` in place and
must keep node and tensor names exactly, and a read index over the proto costs one pass over the
nodes where a round trip through the IR deserialises and serialises the whole model; onnx-ir also
records a body's outer-scope read as a use by the inner node (``Mul`` inside the branch), where
every stage here needs the If/Loop node itself (its placement, its schedule, its slice).
``onnx.utils.Extractor`` (the build's former ``output_nodes`` cut) drops what a branch reads for
the same reason, and needs a value_info per cut tensor.
"""

from __future__ import annotations

from functools import cached_property
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from . import qdq
from .errors import NpuflowError
from .model import MAX_IR_VERSION, tensor_elem_types, tensor_shapes
from .numerics import RoundMode
from .operators import DEQUANTIZE_OPS, NONDETERMINISTIC_OPS, QDQ_OPS, QUANTIZE_OPS, op_def
from .operators import node_attr as attr

__all__ = ["GraphView", "attr", "attr_values", "get_array", "initializers", "is_dequantize", "is_qdq", "node_reads",
           "outer_reads", "quantize_mode", "remove_unused_initializers", "rename_outer_reads", "set_array", "set_attr",
           "slice_model", "slice_nodes", "subgraphs", "unique_name"]

#: Domains of the standard Q/DQ steps (ONNX's, and ONNX Runtime's contrib ones); npuflow's
#: rounding-mode quantize functions are in :data:`npuflow.qdq.DOMAIN`.
STD_QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")

#: How many Q/DQ steps a chain may have before the view stops looking through it (a weight is
#: ``initializer -> Q -> DQ``; a tensor re-quantized a few times stays well below).
_MAX_QDQ_CHAIN = 16


def is_qdq(node: onnx.NodeProto) -> bool:
    """Q/DQ nodes: standard ones and npuflow's rounding-mode quantize functions (``npuflow.qdq``)."""
    if node.domain in STD_QDQ_DOMAINS and node.op_type in QDQ_OPS:
        return True
    return node.domain == qdq.DOMAIN and node.op_type.startswith(("Quantize_", "Dequantize_"))


def quantize_mode(node: onnx.NodeProto) -> tuple[RoundMode, str | None] | None:
    """``(tie rule, dtype or None)`` when ``node`` is a quantize step an integer program can
    write (``QuantizeLinear``, or an ``ai.npuflow:Quantize_<mode>_<dtype>`` function of
    :mod:`npuflow.qdq` whose name parses), else ``None``.  Narrower than :func:`is_qdq`, which
    data flow looks through: this is what the compiler lowers, and what the checker asks
    through :class:`npuflow.check.quant_facts.QuantFacts`."""
    if node.op_type in QUANTIZE_OPS and node.domain in STD_QDQ_DOMAINS:
        return RoundMode.HALF_EVEN, None
    if node.domain == qdq.DOMAIN:
        return qdq.parse_function_name(node.op_type)
    return None


def is_dequantize(node: onnx.NodeProto) -> bool:
    """A ``DequantizeLinear`` step (the integer tensor an integer program reads)."""
    return node.op_type in DEQUANTIZE_OPS and node.domain in STD_QDQ_DOMAINS


def attr_values(node: onnx.NodeProto) -> dict:
    """Every attribute's value, strings decoded (:func:`attr`)."""
    return {a.name: attr(node, a.name) for a in node.attribute}


# --- scopes: what a node reads, its bodies included ---------------------------------------


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds as attributes (If branches, Loop and Scan bodies)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _defined_in(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph defines itself, which shadow outer-scope names of the same spelling."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names |= {t.values.name for t in graph.sparse_initializer}
    return names | {o for n in graph.node for o in n.output if o}


def outer_reads(node: onnx.NodeProto) -> list[str]:
    """Outer-scope tensors that ``node``'s subgraphs read (at any depth), in first-read order.

    ONNX lets a branch or loop body read any tensor of the enclosing graphs by name, without
    listing it as a node input; whoever cuts, rewires or schedules a graph must count these reads.
    """
    reads: list[str] = []
    for graph in subgraphs(node):
        local = _defined_in(graph)
        inner_reads = [t for inner in graph.node for t in node_reads(inner)] + [o.name for o in graph.output]
        reads += [t for t in dict.fromkeys(inner_reads) if t not in local and t not in reads]
    return reads


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every tensor ``node`` reads: its inputs, then the outer-scope reads of its subgraphs."""
    names = [t for t in node.input if t]
    return names + [t for t in outer_reads(node) if t not in names]


def rename_outer_reads(node: onnx.NodeProto, mapping: Mapping[str, str]) -> None:
    """Make ``node``'s subgraphs read ``mapping[t]`` wherever they read outer-scope tensor ``t``."""
    for graph in subgraphs(node):
        local = _defined_in(graph)
        inner_map = {k: v for k, v in mapping.items() if k not in local}
        if not inner_map:
            continue
        for inner in graph.node:
            for k, t in enumerate(inner.input):
                if t in inner_map:
                    inner.input[k] = inner_map[t]
            rename_outer_reads(inner, inner_map)
        for out in graph.output:  # a body may return an outer tensor as it is (outputs are positional)
            if out.name in inner_map:
                out.name = inner_map[out.name]


def _graph_of(model: onnx.ModelProto | onnx.GraphProto) -> onnx.GraphProto:
    return model.graph if isinstance(model, onnx.ModelProto) else model


class GraphView:
    """Index of a (normalised, topologically sorted) graph, computed once: rebuild after edits.

    Built from a model (shapes and element types available) or from a bare graph (a float pass
    rewriting ``model.graph``; :attr:`shapes` then reads the graph's own value infos).
    """

    def __init__(self, model: onnx.ModelProto | onnx.GraphProto) -> None:
        self.model = model if isinstance(model, onnx.ModelProto) else None
        self.graph = _graph_of(model)
        self.nodes: list[onnx.NodeProto] = list(self.graph.node)
        self.inits: dict[str, onnx.TensorProto] = {t.name: t for t in self.graph.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for t in node_reads(n):  # what an If/Loop body reads from this graph is read by its node
                self.consumers.setdefault(t, []).append(i)
        self.graph_inputs: list[str] = [i.name for i in self.graph.input if i.name not in self.inits]
        self.graph_outputs: list[str] = [o.name for o in self.graph.output]
        self._outputs = set(self.graph_outputs)
        self._position = {id(n): i for i, n in enumerate(self.nodes)}
        self._consts: dict[str, np.ndarray] = {}

    # --- nodes ----------------------------------------------------------------------------
    def position(self, node: onnx.NodeProto) -> int:
        """The node's index in :attr:`nodes` (a topological order)."""
        return self._position[id(node)]

    def position_of(self, name: str) -> int:
        """The index of the node called ``name`` (a loaded model's node names are unique): for a
        stage that refers to nodes by name, as the compiler's integer ops do."""
        return self._by_name[name]

    @cached_property
    def _by_name(self) -> dict[str, int]:
        return {n.name: i for i, n in enumerate(self.nodes)}

    def producer_node(self, tensor: str) -> onnx.NodeProto | None:
        p = self.producer.get(tensor)
        return self.nodes[p] if p is not None else None

    def consumer_nodes(self, tensor: str) -> list[onnx.NodeProto]:
        return [self.nodes[c] for c in self.consumers.get(tensor, ())]

    def only_consumer(self, tensor: str) -> onnx.NodeProto | None:
        """The single reader of ``tensor`` when it has exactly one and is not a graph output
        (the condition for rewriting the pair as one node)."""
        users = self.consumers.get(tensor, ())
        if len(users) != 1 or tensor in self._outputs:
            return None
        return self.nodes[users[0]]

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self._outputs

    def reads(self, i: int) -> list[str]:
        """Every tensor node ``i`` reads: its inputs and, for If/Loop/Scan, what its bodies read
        from the outer scope (a branch computing on a feature map is data flow, not shape arithmetic)."""
        return node_reads(self.nodes[i])

    @cached_property
    def names(self) -> list[str]:
        return [n.name for n in self.nodes]

    # --- constants and shapes -------------------------------------------------------------
    def const(self, tensor: str) -> np.ndarray | None:
        """Value of an initializer (read once, shared: copy before changing it), else ``None``."""
        if tensor in self._consts:
            return self._consts[tensor]
        t = self.inits.get(tensor) if tensor else None
        if t is None:
            return None
        arr = self._consts[tensor] = numpy_helper.to_array(t)
        return arr

    def scalar(self, tensor: str) -> float | None:
        """A one-element numeric constant's value, else ``None``."""
        v = self.const(tensor)
        if v is None or v.size != 1 or v.dtype.kind not in "fiu":
            return None
        return float(v.reshape(()))

    @cached_property
    def shapes(self) -> dict[str, list[int]]:
        """Every tensor with a fully static declared shape (initializers included)."""
        return tensor_shapes(self.graph)

    @cached_property
    def elem_types(self) -> dict[str, int]:
        return tensor_elem_types(self.graph)

    def shape(self, tensor: str) -> list[int] | None:
        """A declared static shape, else the shape of the constant (through Q/DQ) it is."""
        if tensor in self.shapes:
            return self.shapes[tensor]
        arr = self.value(tensor)
        return list(arr.shape) if arr is not None else None

    def elem_type(self, tensor: str) -> int | None:
        return self.elem_types.get(tensor)

    # --- data flow through Q/DQ steps -----------------------------------------------------
    @cached_property
    def qdq(self) -> list[bool]:
        """Per node: whether it is a Q/DQ step (:func:`is_qdq`)."""
        return [is_qdq(n) for n in self.nodes]

    def data_source(self, tensor: str) -> str:
        """The tensor before any Q/DQ chain (``tensor`` itself when no Q/DQ node makes it)."""
        for _ in range(_MAX_QDQ_CHAIN):
            p = self.producer.get(tensor)
            if p is None or not self.qdq[p]:
                return tensor
            tensor = self.nodes[p].input[0]
        return tensor

    def is_const(self, tensor: str) -> bool:
        """An initializer, or an initializer seen through Q/DQ nodes (a quantized weight)."""
        return bool(tensor) and self.data_source(tensor) in self.inits

    def value(self, tensor: str) -> np.ndarray | None:
        """Value of a constant (through Q/DQ: the stored integers, which have the right shape)."""
        return self.const(self.data_source(tensor)) if tensor else None

    def data_producer(self, tensor: str) -> int | None:
        """The node that computes ``tensor``, looking through Q/DQ nodes."""
        return self.producer.get(self.data_source(tensor))

    def data_inputs(self, i: int) -> list[str]:
        """Tensors node ``i`` reads that carry feature-map data (not shapes, not weights), the
        outer-scope reads of its subgraphs included."""
        n = self.nodes[i]
        # the registry's parameter inputs (shapes, indices, bounds) never join subgraphs
        names = [n.input[k] for k in op_def(n.op_type, n.domain).data_inputs(n)]
        names += outer_reads(n)
        return [t for t in dict.fromkeys(names) if t and not self.is_const(t)]

    def data_consumers(self, tensor: str) -> list[int]:
        """Nodes that use ``tensor``, looking through Q/DQ nodes."""
        out: list[int] = []
        stack = [tensor]
        while stack:
            t = stack.pop()
            for c in self.consumers.get(t, []):
                if self.qdq[c]:
                    stack.extend(o for o in self.nodes[c].output if o)
                elif c not in out:
                    out.append(c)
        return out

    def reaches_output(self, tensor: str) -> bool:
        """Whether ``tensor`` (or a Q/DQ copy of it) is a graph output."""
        stack = [tensor]
        while stack:
            t = stack.pop()
            if t in self._outputs:
                return True
            stack.extend(o for c in self.consumers.get(t, []) if self.qdq[c] for o in self.nodes[c].output)
        return False


# --- slicing --------------------------------------------------------------------------------


def slice_model(model: onnx.ModelProto, outputs: Sequence[str], inputs: Iterable[str] | None = None) -> onnx.ModelProto:
    """A new model of the nodes that compute ``outputs`` (its graph outputs, in that order).

    The walk back stops at the model's graph inputs and at ``inputs``: tensors the caller will
    feed (a calibration run's captured activations, a partition's boundary), which become graph
    inputs of the slice after the model's own.  A node with subgraphs also depends on every
    outer tensor its bodies read, so a branch never loses an initializer.  The model is built as
    :func:`slice_nodes` builds one.
    """
    view = GraphView(model)
    fed = set(inputs or ()) - set(outputs) - set(view.inits)
    for name in [*outputs, *fed]:
        if name not in view.producer and name not in view.inits and name not in view.graph_inputs:
            raise NpuflowError("NPF_MODEL_UNKNOWN_TENSOR", name=name)
    needed: set[str] = set()
    keep: set[int] = set()
    stack = list(outputs)
    while stack:
        t = stack.pop()
        if t in needed:
            continue
        needed.add(t)
        p = view.producer.get(t)
        if p is not None and t not in fed and p not in keep:
            keep.add(p)
            stack.extend(view.reads(p))
    own = [t for t in view.graph_inputs if t in needed and t not in fed]
    return _part_model(view, [n for i, n in enumerate(view.nodes) if i in keep], [*own, *sorted(fed & needed)],
                       list(outputs), view.graph.name)


def slice_nodes(source: onnx.ModelProto | GraphView, nodes: Sequence[onnx.NodeProto], *,
                inputs: Sequence[str] | None = None, outputs: Sequence[str] | None = None,
                name: str | None = None) -> onnx.ModelProto:
    """A new model of exactly ``nodes`` (in the order given): a partition's CPU or plugin part.

    ``inputs`` default to what the nodes read (their bodies' outer-scope reads included) that
    none of them makes and no initializer holds, in first-read order; ``outputs`` to what they
    make that a node outside them reads or the model outputs (when nothing is, the last node's
    first output, so a dead-end part still runs when timed).  A partitioner that knows its
    boundaries passes them.  ``source`` is the model or a view of it (a caller cutting many parts
    indexes the model once).
    """
    view = source if isinstance(source, GraphView) else GraphView(source)
    made = {o for n in nodes for o in n.output if o}
    if inputs is None:
        read = dict.fromkeys(t for n in nodes for t in node_reads(n))
        inputs = [t for t in read if t not in made and t not in view.inits]
    if outputs is None:
        inside = {id(n) for n in nodes}
        outputs = [o for n in nodes for o in n.output if o and (view.is_graph_output(o) or any(
            id(view.nodes[c]) not in inside for c in view.consumers.get(o, ())))] or [nodes[-1].output[0]]
    return _part_model(view, nodes, list(inputs), list(outputs), name or f"{view.graph.name}_part")


def _part_model(view: GraphView, nodes: Sequence[onnx.NodeProto], inputs: list[str], outputs: list[str],
                name: str) -> onnx.ModelProto:
    """``nodes`` as a model of their own: the initializers they (and their bodies) read, the
    model's declared value infos (an undeclared input or output gets its element type, no shape),
    its functions, opsets and metadata (stored probe values feed a part as they fed the model),
    and its IR version capped at what ONNX Runtime reads (:data:`npuflow.model.MAX_IR_VERSION`)."""
    model = view.model
    g = view.graph
    declared = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}

    def value_info(t: str) -> onnx.ValueInfoProto:
        if t in declared:
            return declared[t]
        return helper.make_tensor_value_info(t, view.elem_types.get(t, onnx.TensorProto.FLOAT), None)

    used = {t for n in nodes for t in node_reads(n)} | set(outputs)
    inner = {o for n in nodes for o in n.output if o} | used
    io = set(inputs) | set(outputs)
    graph = helper.make_graph(
        list(nodes), name, [value_info(t) for t in inputs], [value_info(t) for t in outputs],
        [t for t in g.initializer if t.name in used],
        value_info=[vi for vi in g.value_info if vi.name in inner and vi.name not in io],
    )
    out = helper.make_model(graph, opset_imports=model.opset_import, functions=model.functions,
                            ir_version=min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION))
    out.metadata_props.extend(model.metadata_props)
    return out


# --- edits ----------------------------------------------------------------------------------


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or add) attribute ``name`` of ``node``."""
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def insert_nodes(model: onnx.ModelProto, anchor: str, new: Sequence[onnx.NodeProto], after: bool = False) -> None:
    """Insert ``new`` before (``after``: after) the node called ``anchor``, keeping the order
    topological.  The node list is rebuilt: nodes held from before are detached copies, so look
    a node up again by name to edit it."""
    nodes = list(model.graph.node)
    at = next(k for k, n in enumerate(nodes) if n.name == anchor) + int(after)
    nodes[at:at] = new
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def initializers(model: onnx.ModelProto | onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in _graph_of(model).initializer}


def get_array(model: onnx.ModelProto | onnx.GraphProto, name: str) -> np.ndarray:
    """An initializer as a numpy array (a copy, free to change)."""
    for t in _graph_of(model).initializer:
        if t.name == name:
            return numpy_helper.to_array(t).copy()
    raise KeyError(name)


def set_array(model: onnx.ModelProto | onnx.GraphProto, name: str, value: np.ndarray, *, add: bool = False) -> None:
    """Replace initializer ``name``'s data in place, keeping its name and dtype; with ``add``, a
    missing one is appended (as ``value``'s dtype), else a missing name is a ``KeyError``.

    A new shape drops the ``value_info`` entry some exporters write for an initializer (tf2onnx:
    Magika's ``[1, 214]`` bias made ``[214]`` by a pass), which shape inference would otherwise
    reject as a rank clash."""
    graph = _graph_of(model)
    for t in graph.initializer:
        if t.name == name:
            dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
            old_dims = list(t.dims)
            t.CopyFrom(numpy_helper.from_array(np.asarray(value).astype(dtype), name))
            if list(t.dims) != old_dims:
                kept = [vi for vi in graph.value_info if vi.name != name]
                if len(kept) != len(graph.value_info):
                    del graph.value_info[:]
                    graph.value_info.extend(kept)
            return
    if not add:
        raise KeyError(name)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))


def with_nodes(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto],
               added: Iterable[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """A copy of ``model`` whose graph runs ``nodes`` (in that order) with ``added`` constants beside its own:
    the last step of a rewrite that lists each node's replacement."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(added)
    return out


def remove_unused_initializers(graph: onnx.GraphProto) -> None:
    """Drop initializers no node (nor any body) reads and no output names."""
    used = {i for n in graph.node for i in node_reads(n)} | {o.name for o in graph.output}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def rewrite_until_done(model: onnx.ModelProto, step: Callable[[onnx.GraphProto], bool]) -> onnx.ModelProto:
    """A copy of ``model`` with ``step`` (one rewrite of its graph; False when nothing is left to
    rewrite) applied until it is done, then the initializers nothing reads any more dropped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    while step(out.graph):
        pass
    remove_unused_initializers(out.graph)
    return out


def unique_name(graph: onnx.GraphProto, base: str, reserved: set[str] | None = None) -> str:
    """``base`` or ``base_<k>``: a tensor name not used anywhere in ``graph``; ``reserved``: names
    already handed out for nodes not yet in the graph (the new name is added to it)."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {
        o for n in graph.node for o in n.output} | (reserved or set())
    name, k = base, 1
    while name in taken:
        name = f"{base}_{k}"
        k += 1
    if reserved is not None:
        reserved.add(name)
    return name


def fold_node(node: onnx.NodeProto, consts: Mapping[str, np.ndarray], shapes: Mapping[str, Sequence[int]],
              opset: int, max_elements: int) -> list[np.ndarray] | None:
    """The outputs of one node whose inputs are all in ``consts`` (a ``Shape`` also of a tensor in
    ``shapes``), run by ONNX's reference evaluator; None where it cannot run, is random or reads a
    subgraph, or an output exceeds ``max_elements`` values (data, not shape arithmetic)."""
    from onnx.reference import ReferenceEvaluator  # slow to import; only where a node is folded

    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC_OPS or not node.output:
        return None
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    if node.op_type == "Shape" and node.input[0] in shapes:
        shape = np.asarray(shapes[node.input[0]], dtype=np.int64)
        attrs = attr_values(node)
        start, end = attrs.get("start", 0), attrs.get("end", None)
        return [shape[start:end]]
    inputs = [i for i in node.input if i]
    if not inputs and node.op_type != "Constant":
        return None
    if any(i not in consts for i in inputs):
        return None
    feeds = {i: consts[i] for i in inputs}
    g = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(np.asarray(v).dtype), np.shape(v))
         for i, v in feeds.items()],
        [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output],
    )
    try:
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        outs = ReferenceEvaluator(m).run(None, feeds)
    except Exception:  # noqa: BLE001  (anything the reference evaluator cannot run simply stays a node)
        return None
    if any(np.asarray(o).size > max_elements for o in outs):
        return None
    return [np.asarray(o) for o in outs]


def small_constants(model: onnx.ModelProto, opset: int, max_elements: int = 4096) -> dict[str, np.ndarray]:
    """The values of the model's small constants, the model unchanged: initializers and the outputs
    of nodes computing from them only (:func:`fold_node`), each of at most ``max_elements`` values.

    Why: an export's shape inputs (an ``Expand``'s shape, a ``Tile``'s repeats) are often chains of
    small nodes rather than stored values; the loader reads them before anything is folded.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if int(np.prod(t.dims)) <= max_elements}
    for node in model.graph.node:
        if all(i in consts for i in node.input if i) and (value := fold_node(node, consts, {}, opset, max_elements)):
            consts.update(zip(node.output, value))
    return consts
