"""Refusing a malformed ONNX model with a coded error before any stage works on it.

:func:`validate` (IR version, UTF-8 text, unique tensor names, outputs made, known operator
domains, then ``onnx.checker``'s full check) and :func:`check_tensor_sizes` (no tensor beyond
:func:`max_tensor_elements`) are what :func:`npuflow.model.load` runs on every model; they live
apart from the loading and normalising steps so each can be read on its own.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .errors import NpuflowError
from .value_info import static_shape

#: Oldest IR version accepted on input: the first with ``opset_import`` (ONNX 1.1).
MIN_IR_VERSION = 3
#: Environment variable bounding the elements of one tensor (:func:`check_tensor_sizes`).
MAX_ELEMENTS_ENV = "NPUFLOW_MAX_TENSOR_ELEMENTS"
DEFAULT_MAX_ELEMENTS = 1 << 31


def validate(proto: onnx.ModelProto) -> None:
    """Refuse a malformed model with a coded error before any stage works on it.

    The IR version and unique tensor names first (clear messages naming the tensor and its two
    writers), then ``onnx.checker``'s full check: node specs and attribute types against the
    operator schemas, topological order (a node reading a tensor nobody makes), initializer data
    against the declared shapes, graph outputs that no node makes, and strict shape inference.
    One rule of the checker is relaxed: it requires a shape on every graph output, which exporters
    and hand-built models often leave out and ONNX Runtime does not need (shape inference fills it
    in); such outputs are left out of the checked copy, and :func:`_check_outputs_made` checks
    instead that some node makes them.  The full check accepts every real model tried (PP-OCRv4
    det/rec/cls, YOLOv8n, silero-vad, EfficientNet-Lite0, the MNIST CNN) and the QDQ models ONNX
    Runtime's quantizer, NNCF, Brevitas and npuflow write.
    """
    if not MIN_IR_VERSION <= proto.ir_version <= onnx.IR_VERSION:
        raise NpuflowError("NPF_MODEL_IR_VERSION", found=proto.ir_version, low=MIN_IR_VERSION, high=onnx.IR_VERSION)
    _check_text(proto)
    _check_unique_names(proto.graph)
    _check_outputs_made(proto.graph)
    _check_known_domains(proto)
    try:
        onnx.checker.check_model(_checkable(proto), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError, RuntimeError) as exc:
        raise NpuflowError("NPF_MODEL_INVALID", reason=_checker_reason(exc)) from None


def _check_text(message: Message, where: str = "model") -> None:
    """Every string field must be UTF-8 text: protobuf hands invalid UTF-8 in ONNX's proto2
    string fields (names, op types, producer, metadata) over as ``bytes``, which onnx-ir and every
    later stage trip over.  Walks the whole message (nodes, subgraphs, functions)."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            bad = next((v for v in values if isinstance(v, bytes)), None)
            if bad is not None:
                raise NpuflowError("NPF_MODEL_INVALID", reason=f"{where}.{field.name} {bad[:80]!r} is not UTF-8 text")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for k, item in enumerate(values):
                name = getattr(item, "name", "")
                label = f"{field.name}[{name!r}]" if isinstance(name, str) and name else f"{field.name}[{k}]"
                _check_text(item, f"{where}.{label}")


def _checkable(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto``, or a copy without the graph outputs that declare no shape (see :func:`validate`)."""
    def shapeless(vi: onnx.ValueInfoProto) -> bool:
        tensor = vi.type.HasField("tensor_type")
        return not vi.HasField("type") or (tensor and not vi.type.tensor_type.HasField("shape"))

    if not any(shapeless(o) for o in proto.graph.output):
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    keep = [o for o in out.graph.output if not shapeless(o)]
    del out.graph.output[:]
    out.graph.output.extend(keep)
    return out


#: Operator domains ONNX Runtime implements: the standard ones and its contrib ops.
KNOWN_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


def _check_known_domains(proto: onnx.ModelProto) -> None:
    """Name every unregistered custom operator at once (an op of a domain ONNX Runtime does not
    implement, no model-local function defines and :func:`npuflow.register_op` does not provide)
    instead of the checker's first "not a registered op": the user learns which nodes stand in the
    way and what to do about them."""
    from .custom_ops import custom_nodes

    found: dict[tuple[str, str], list[str]] = {}
    for node, op in custom_nodes(proto):
        if op is None:
            found.setdefault((node.domain, node.op_type), []).append(node.name or node.output[0])
    if not found:
        return
    quark = _quark_formats(proto, found)
    if quark:
        raise NpuflowError("NPF_MODEL_QUARK_FORMAT", formats=quark)
    ops = "; ".join(f"{d}:{t} (node {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
                    for (d, t), names in sorted(found.items()))
    raise NpuflowError("NPF_MODEL_CUSTOM_OP", count=len(found), ops=ops)


def _quark_formats(proto: onnx.ModelProto, found: Mapping[tuple[str, str], list[str]]) -> str:
    """The number formats of the AMD Quark quantization ops among ``found`` (unregistered custom
    ops -> their nodes), each with its op, node count and first node; ``""`` when none.  A Quark
    BFP16 / MX / BF16 model is a quantization format question, not a missing plugin: telling its
    user to register ``BFPQuantizeDequantize`` would send them the wrong way.  The extended Q/DQ ops
    are named by their zero point's type (``bfloat16``, ``int16``, ...)."""
    from .operators import QUARK_DOMAIN, QUARK_QUANT_OPS

    zp_types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in proto.graph.initializer}
    first_zp = {n.name or n.output[0]: zp_types.get(n.input[2]) for n in proto.graph.node
                if n.domain == QUARK_DOMAIN and len(n.input) > 2}
    parts = []
    for (domain, op_type), names in sorted(found.items()):
        if domain != QUARK_DOMAIN or op_type not in QUARK_QUANT_OPS:
            continue
        dtype = first_zp.get(names[0])
        parts.append(f"{QUARK_QUANT_OPS[op_type]}{f' ({dtype})' if dtype else ''} ({QUARK_DOMAIN}:{op_type}, "
                     f"{len(names)} node(s), e.g. {names[0]!r})")
    return "; ".join(parts)


def _check_outputs_made(graph: onnx.GraphProto) -> None:
    """Every graph output is made by a node, or is an input or initializer passed through, and is
    listed once: results are returned by name (``Session.run``'s dict, the ``.npuf``'s outputs),
    so a second listing would silently vanish where ONNX Runtime returns it twice."""
    made = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    made |= {o for n in graph.node for o in n.output if o}
    listed: set[str] = set()
    for out in graph.output:
        if out.name not in made:
            raise NpuflowError("NPF_MODEL_INVALID", reason=f"graph output {out.name!r} is not made by any node")
        if out.name in listed:
            raise NpuflowError("NPF_MODEL_INVALID", reason=f"graph output {out.name!r} is listed twice; list each "
                                                           "output once (outputs are returned by name)")
        listed.add(out.name)


def _check_unique_names(graph: onnx.GraphProto) -> None:
    """Every tensor written once: by one node output, one initializer or one graph input."""
    writers: dict[str, str] = {}
    inits = {t.name for t in graph.initializer}
    named = [(i.name, "graph input") for i in graph.input if i.name not in inits]
    named += [(t.name, "initializer") for t in graph.initializer]
    named += [(o, f"node {n.name or n.op_type!r} ({n.op_type})") for n in graph.node for o in n.output if o]
    for name, writer in named:
        if name in writers:
            raise NpuflowError("NPF_MODEL_DUPLICATE_NAME", tensor=name, first=writers[name], second=writer)
        writers[name] = writer


def _checker_reason(exc: Exception) -> str:
    """onnx's message without its blank lines, bounded (it can repeat one error per node)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return (text or type(exc).__name__)[:600]


def max_tensor_elements() -> int:
    """The most elements one tensor may have (``$NPUFLOW_MAX_TENSOR_ELEMENTS``, default 2^31)."""
    text = os.environ.get(MAX_ELEMENTS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_ELEMENTS
    if not text.isdigit() or int(text) <= 0:
        raise NpuflowError("NPF_MODEL_BAD_LIMIT", name=MAX_ELEMENTS_ENV, value=text)
    return int(text)


def check_tensor_sizes(proto: onnx.ModelProto) -> None:
    """Refuse a model declaring a tensor of more than :func:`max_tensor_elements` elements.

    Called on the frozen input shapes and again on the shapes ONNX shape inference derives, both
    before the shape probe (or any later stage) allocates: a typo such as 1x3x100000x100000
    would otherwise ask for terabytes and end in a MemoryError or the OOM killer.
    """
    limit = max_tensor_elements()
    g = proto.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = static_shape(vi)
        if dims is not None and math.prod(dims) > limit:
            raise NpuflowError("NPF_MODEL_TENSOR_TOO_LARGE", tensor=vi.name, shape="x".join(map(str, dims)),
                               elements=math.prod(dims), limit=limit, env=MAX_ELEMENTS_ENV)
