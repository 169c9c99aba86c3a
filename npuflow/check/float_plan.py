"""The float model's neighbour rules for ops the quantizer quantizes only where integers flow.

``check`` of a float model places what the quantizer will quantize and ``compile`` lower, so the
ops the quantizer never quantizes on their own (``OpDef.quantized`` false: a ``Div`` by a
constant, ``Tanh``) and data movement (:mod:`.followers`) go where the quantizer's plan puts
them: each rule reads its neighbours' devices and only moves nodes to the CPU, and
:func:`.place._demote_until_stable` repeats them until nothing moves.
"""

from __future__ import annotations

import onnx

from ..graph import GraphView, subgraphs
from ..operators import (CHAIN_OPS, ELEMENTWISE_OPS, FOLLOWERS, REWRITTEN_OPS, STANDARD_DOMAINS, STEP_BOUND_OPS,
                         op_def)
from ..targets import Target
from .followers import drop_float_tail, float_tail_applies, follows_quantized
from .lowerable import MAX_CHAIN
from .partition import real_consumers, real_producer
from .report import CPU, NPU


def float_chain_ops_off_the_cpu(view: GraphView, device: list[str], reasons: list[list[str]],
                                 transparent: list[bool], fused: dict[int, int], candidates: list[int]) -> None:
    """In a float model, an op the quantizer never quantizes on its own
    (:attr:`npuflow.operators.OpDef.quantized` false: ``Div`` by a constant, ``Tanh``, ``Abs``...)
    runs in float on the CPU, as compile leaves it, unless it sits between quantized work: the
    compiler lowers such an op only as a table between the dequantize step of the op before it
    and the quantize step of the op after it, so it needs accelerator work on both sides.
    BatchNormalization is rewritten into a convolution before quantization (``REWRITTEN_OPS``), so
    it keeps its place.  Ops fused into a layer's chain follow their layer.

    ConvNeXt's GELU ``x * 0.5 * (1 + erf(x / 1.4142))`` after a bias ``Add`` cpu-int8 runs on the
    CPU: the ``Div`` was placed on the accelerator, and quantize and compile left it in float on
    the CPU (likewise a ``Div`` between quantized work and a CPU ``Erf``).  A demotion can take
    the accelerator side away from a neighbour, so the pass repeats until nothing moves.
    ``candidates``: :func:`float_chain_ops` and their :func:`chain_followers`."""
    moved = True
    while moved:
        moved = False
        for i in candidates:
            if device[i] != NPU:
                continue
            ins = view.data_inputs(i)
            bound = view.nodes[i].op_type in STEP_BOUND_OPS  # a Softmax: a quantize step on either side
            fed = bool(ins) and _fed_from_npu(view, transparent, device, ins[0], fused if bound else None)
            readers = real_consumers(view, transparent, i)
            # its table ends at one quantize step: every reader quantized, no float reader, no graph output;
            # a table runs on through one reader, not into a Softmax (which reads float from it)
            read = bool(readers) and all(device[c] == NPU for c in readers) and \
                not any(view.is_graph_output(o) for o in view.nodes[i].output if o) and \
                ((len(readers) == 1 and not bound and view.nodes[readers[0]].op_type not in STEP_BOUND_OPS)
                 or all(_quantizes(view, c, fused) for c in readers))
            if fed and read:
                continue
            device[i], moved = CPU, True
            op = view.nodes[i].op_type
            reasons[i].append(
                f"the quantizer quantizes {op} only between quantized ops, and its input comes from the CPU in float "
                "(or a graph input), so it runs in float on the CPU" if not fed else
                f"the quantizer quantizes {op} only between quantized ops, and no accelerator op reads its output (or "
                "a CPU op or the graph output reads it too), so it runs in float on the CPU")


def float_chain_ops(view: GraphView, transparent: list[bool], fused: dict[int, int]) -> set[int]:
    """The ops the quantizer never quantizes on its own (``OpDef.quantized`` false), outside any
    layer: the compiler lowers each only inside a table between two quantize steps."""
    return {i for i, node in enumerate(view.nodes)
            if not transparent[i] and i not in fused and i not in fused.values()
            and not op_def(node.op_type, node.domain).quantized
            and node.op_type not in FOLLOWERS and node.op_type not in REWRITTEN_OPS}


def chain_followers(view: GraphView, transparent: list[bool], fused: dict[int, int], chain: set[int]) -> set[int]:
    """Elementwise followers (a ``Relu``) right after a float-chain op (:func:`float_chain_ops`, or
    another such follower): the compiler lowers them inside that op's table, so they go where the
    chain goes, not by the data-movement rule (cpu-int8 seed 1453: ``Mul -> Tanh -> Relu -> Mul``
    had Tanh and Relu on the CPU in check of the float model, in the integer program in compile);
    ``chain``: :func:`float_chain_ops`."""
    out: set[int] = set()
    for i, node in enumerate(view.nodes):  # topological: a follower of a follower sees it
        if transparent[i] or i in fused or node.op_type not in FOLLOWERS or node.op_type not in ELEMENTWISE_OPS:
            continue
        ins = view.data_inputs(i)
        p = real_producer(view, transparent, ins[0]) if ins else None
        if p is not None and (p in chain or p in out):
            out.add(i)
    return out


def _quantizes(view: GraphView, i: int, fused: dict[int, int]) -> bool:
    """Whether the quantizer quantizes node ``i`` on its own (or it is fused into a layer): a
    ``Tanh`` read by a ``Sigmoid`` and by another ``Tanh`` has one quantize step for the Sigmoid
    and a float reader, so no table ends at one step (seed 571: both Tanhs ACC in check of the
    float model, CPU in the quantized one and in compile).  A node others fuse into is a layer of
    its own: the ``Div`` that ends ``x * relu6(x + 3) / 6`` is a hard-swish (PP-OCR cls on
    bernoulli2 put the ``MaxPool`` after it on the CPU and split the BPU part in two)."""
    node = view.nodes[i]
    # a BatchNormalization no layer absorbs becomes a 1x1 depthwise Conv (placed on the accelerator only as one)
    return i in fused or i in fused.values() or op_def(node.op_type, node.domain).quantized or \
        (node.op_type in REWRITTEN_OPS and node.domain in STANDARD_DOMAINS)


def follow_quant_plan(view, device, reasons, transparent, fused, tgt: Target, chained: set[int],
                      kept_float: set[int]) -> None:
    """In a float model, data movement runs where the quantizer's plan puts it (:mod:`.followers`):
    fed from the CPU, a control-flow node or a graph input it stays in float, and on float-scale
    targets so does data movement no accelerator op reads (the float tail), so both run on the CPU.

    PP-OCRv4 rec's attention reshapes after a CPU Add fed DPU work and were placed on the DPU, yet
    quantized as float nodes the compiler leaves to the CPU; YOLOv8n's DFL reshapes before a CPU
    Softmax on bernoulli2 likewise.  Graph order is topological, so a chain of followers goes together.
    ``chained`` (:func:`chain_followers`) go with their float-chain op instead.

    A CPU target (``kind: cpu``) quantizes every quantizable node, wherever it runs (:mod:`npuflow.quant.placement`),
    so there data movement after a quantized CPU op is quantized too: a Conv1d net's ``GlobalAveragePool`` on a 3-D
    tensor stays on the CPU (only 2-D pooling is lowered), yet cpu-int8's quantizer quantizes its output, and the
    ``Flatten`` after it was placed on the CPU here but lowered by compile.  ``kept_float``: the nodes the
    quantizer keeps float wherever they run (a ``Log``'s cone, a mask's nodes), none of them quantized."""
    quantized_cpu = _quantized_cpu_nodes(view, transparent, device, fused) - kept_float if tgt.kind != "npu" else set()
    for i, node in enumerate(view.nodes):
        if device[i] != NPU or transparent[i] or i in fused or node.op_type not in FOLLOWERS or i in chained:
            continue
        ins = view.data_inputs(i)
        fed = bool(ins) and (_fed_from_npu(view, transparent, device, ins[0], fused)
                             or real_producer(view, transparent, ins[0]) in quantized_cpu)
        if not follows_quantized(node.op_type, fed):
            device[i] = CPU
            reasons[i].append("its input comes from the CPU in float (or from a graph input, control flow or an op the "
                              "quantizer quantizes only between quantized ops), and data movement is quantized only "
                              "after a quantized op, so it runs in float on the CPU")
    if not float_tail_applies(tgt):
        return
    # the quantizer's set: a Tanh or a Div by a constant on the accelerator is no quantized reader; on a
    # CPU target also the CPU nodes it quantizes (a conv with run-time weights reading a Reshape)
    npu = {i for i in range(len(view.nodes)) if device[i] == NPU and not transparent[i]
           and _quantizes(view, i, fused)}
    npu |= quantized_cpu
    tail = drop_float_tail(npu, lambda i: "" if i in fused else view.nodes[i].op_type,
                           lambda i: real_consumers(view, transparent, i))
    for i in sorted(tail):
        if device[i] != NPU:
            continue
        ins = view.data_inputs(i)
        p = real_producer(view, transparent, ins[0]) if ins else None
        if p is not None and p in npu and any(c in npu for c in _tail_readers(view, device, transparent, fused, i)):
            continue  # float in the plan, but between a dequantize step and an epilogue's quantize step
        device[i] = CPU
        reasons[i].append(f"no {tgt.device_label} op reads its output, and on a float-scale target the quantizer "
                          f"leaves such data movement (and a Sigmoid) in float (the float tail), so it runs on the CPU")


def _quantized_cpu_nodes(view: GraphView, transparent: list[bool], device: list[str], fused: dict[int, int]) -> set[int]:
    """The CPU nodes a CPU target's quantizer quantizes (:func:`npuflow.quant.plan` without an
    ``allowed`` set): a quantizable op with float data, data movement only after a quantized op
    (accelerator work or another such node); never a control-flow node."""
    out: set[int] = set()
    elem = view.elem_types
    for i, node in enumerate(view.nodes):  # topological: a follower sees its producer
        if device[i] != CPU or transparent[i] or subgraphs(node) or not op_def(node.op_type, node.domain).quantized:
            continue
        if any(elem.get(t, onnx.TensorProto.FLOAT) != onnx.TensorProto.FLOAT for t in [*view.data_inputs(i), *node.output] if t):
            continue
        ins = view.data_inputs(i)
        p = real_producer(view, transparent, ins[0]) if ins else None
        if follows_quantized(node.op_type, p is not None and (p in out or _fed_from_npu(view, transparent, device, ins[0], fused))):
            out.add(i)
    return out


def _tail_readers(view: GraphView, device: list[str], transparent: list[bool], fused: dict[int, int], i: int,
                  depth: int = 0) -> list[int]:
    """The readers of node ``i``, a node of the quantizer's float tail, looking through an accelerator
    op the quantizer quantizes only between quantized ops when the compiler fuses it into the
    epilogue of ``i`` (:func:`_epilogue_op`).  The plan leaves ``i`` float, but when the op before it
    is quantized ``DQ -> Slice -> Div(c) -> Q`` is one integer op, so a quantized op after the Div
    keeps the Slice on the accelerator (cpu-int8 and bernoulli2 ``AveragePool -> Slice -> Div ->
    Sub``, seed 1687: Slice and Div on the CPU in check of the float model, in the integer program in
    compile); fed from another tail node it has no dequantize step (``Concat(x, x) -> MaxPool ->
    Div -> Conv``, seed 1723: all float).
    A Div no quantized op reads (the graph output), a ``Tanh`` (a table, lowered only on a
    dequantize step: ``Sigmoid -> Slice -> Tanh -> Conv``, seed 162) and a Div beside other readers
    of ``i`` (a ``Split`` also read by an ``Erf`` and the graph output, seed 427: no epilogue) still
    leave ``i`` in the tail."""
    readers = real_consumers(view, transparent, i)
    outputs = [o for o in view.nodes[i].output if o]
    # the epilogue is a function of the one output alone: its only reader, no graph output
    if len(readers) == 1 and len(outputs) == 1 and not view.is_graph_output(outputs[0]) and depth < MAX_CHAIN:
        c = readers[0]
        if device[c] == NPU and not _quantizes(view, c, fused) and _epilogue_op(view, c):
            return _tail_readers(view, device, transparent, fused, c, depth + 1)
    return readers


def _epilogue_op(view: GraphView, i: int) -> bool:
    """Whether node ``i`` is one the compiler fuses into the epilogue of the op before it
    (:func:`.lowerable.chain_to_quantize`): a chain op of one tensor and float scalar constants."""
    node = view.nodes[i]
    consts = [t for t in node.input if t and view.is_const(t)]
    return node.op_type in CHAIN_OPS and len(view.data_inputs(i)) == 1 and \
        all((v := view.value(t)) is not None and v.size == 1 and v.dtype.kind == "f" for t in consts)


def _fed_from_npu(view: GraphView, transparent: list[bool], device: list[str], tensor: str,
                  quantized_only: dict[int, int] | None = None) -> bool:
    """Whether ``tensor`` comes from accelerator work (looking through followers); a control-flow
    node's output never does, whatever its placement (its branches run in ONNX Runtime).  With
    ``quantized_only`` (the fused nodes, which are their layer's output), from accelerator work
    the quantizer quantizes on its own: a ``Tanh`` or a ``Div`` by a constant (``OpDef.quantized``
    false) runs on the accelerator only as a table between quantize steps others place, so a
    follower after it stays float (bernoulli2: ``Conv -> Tanh -> Resize -> Sigmoid``); a ``Div``
    the float passes fold into the ``Conv`` before it is that ``Conv``."""
    p = real_producer(view, transparent, tensor)
    return p is not None and not subgraphs(view.nodes[p]) and device[p] == NPU and \
        (quantized_only is None or _quantizes(view, p, quantized_only))
