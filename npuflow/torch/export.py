"""Write a QAT model as a QDQ ONNX model with its trained quantization parameters.

The graph comes from ``torch.onnx.export`` (TorchScript exporter, opset 17) of the QAT graph in
eval mode; each quantizer appears there as a ``npuflow_qat::Q`` marker (see :mod:`.markers`).
:func:`lower_markers` replaces the markers with the quantizer's format of
``docs/quantized-model-format.md``:

* activations: ``QuantizeLinear`` (8-bit half-to-even) or the ``ai.npuflow:Quantize_<mode>_<dtype>``
  function of :mod:`npuflow.qdq` (other tie rules), then ``DequantizeLinear``;
* weights: an int8 initializer holding the recorded codes -> ``DequantizeLinear`` (``axis`` for
  per-channel scales);
* biases: an int32 initializer (scale ``s_in * s_w``) -> ``DequantizeLinear``.

The float weights the markers replaced become dead and are pruned.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from .. import qdq
from ..errors import NpuflowError
from ..model import load as load_model
from ..numerics import storage_dtype
from ..passes.fold_constants import fold_static_shapes
from .markers import MARKER_DOMAIN, QuantRecord, recording

log = logging.getLogger(__name__)

OPSET = 17


def default_output_names(out: Any) -> list[str]:
    """Default ONNX output names for a forward's result: a dict's keys (the exporter writes its
    values in key order; named ``output`` and then torch's tensor numbers before), ``output_i`` for a
    tuple or list, ``output`` for one tensor."""
    if isinstance(out, Mapping):
        return [str(k) for k in out]
    if isinstance(out, (tuple, list)):
        return ["output"] if len(out) == 1 else [f"output_{i}" for i in range(len(out))]
    return ["output"]


def torch_to_onnx(module: torch.nn.Module, inputs: tuple, input_names, output_names,
                  custom_opsets: dict | None = None) -> onnx.ModelProto:
    """``torch.onnx.export`` (TorchScript, opset 17) into memory, with coded errors.

    TorchScript refuses all-digit tensor names (``Invalid name: '13'``), which models exported
    by torch itself have (openWakeWord's classifiers' output is ``13``): such names are exported
    with a suffix and given back afterwards."""
    safe = {n: f"{n}__npuflow" for n in [*input_names, *output_names] if n.isdigit()}
    buf = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # Under no_grad an eval-mode nn.MultiheadAttention / TransformerEncoderLayer takes its fused
        # fast path (aten::_native_multi_head_attention), which the exporter cannot write; with the
        # fast path off it is traced as the MatMul/Softmax graph it computes.
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, inputs, buf, opset_version=OPSET, dynamo=False,
                input_names=[safe.get(n, n) for n in input_names], output_names=[safe.get(n, n) for n in output_names],
                custom_opsets=custom_opsets or {}, do_constant_folding=True,
            )
    except NpuflowError:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported code
        text = str(exc).strip().splitlines()
        raise NpuflowError("NPF_TORCH_EXPORT_FAILED", reason=(text[0] if text else type(exc).__name__)[:300]) from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    model = onnx.load_from_string(buf.getvalue())
    _rename(model.graph, {v: k for k, v in safe.items()})
    return model


def _rename(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` (inputs, outputs, value_info, node edges)."""
    if not names:
        return
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        vi.name = names.get(vi.name, vi.name)
    for node in graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]


def export_qdq(module: torch.nn.Module, inputs: tuple, input_names, output_names,
               metadata: dict[str, str]) -> onnx.ModelProto:
    """Export a QAT graph module (eval mode) and lower its markers to QDQ."""
    with recording() as rec:
        raw = torch_to_onnx(module, inputs, input_names, output_names, {MARKER_DOMAIN: 1})
    model = lower_markers(fold_static_shapes(raw), rec.records)
    for key, value in {"npuflow.format_version": "1", **metadata}.items():
        model.metadata_props.add(key=key, value=value)
    return load_model(model)


def _dtype_name(bits: int, signed: bool) -> str:
    return ("int" if signed else "uint") + ("8" if bits <= 8 else "16")


_ONNX_INT = {
    np.dtype(np.int8): TensorProto.INT8, np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int16): TensorProto.INT16, np.dtype(np.uint16): TensorProto.UINT16,
    np.dtype(np.int32): TensorProto.INT32,
}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_.") or "t"


def lower_markers(model: onnx.ModelProto, records: list[QuantRecord]) -> onnx.ModelProto:
    """Replace every ``npuflow_qat::Q`` marker by the QDQ form of its record (names as the format says)."""
    g = model.graph
    graph_outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}  # consumers read the new name
    weights_written: set[str] = set()
    produced: dict[str, str] = {}  # producers write the new name (quantized graph outputs)
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if node.domain != MARKER_DOMAIN:
            nodes.append(node)
            continue
        rec = records[next(a.i for a in node.attribute if a.name == "key")]
        x, y = node.input[0], node.output[0]
        scale = np.asarray(rec.scale, dtype=np.float32)
        if rec.kind == "activation":
            if y in graph_outputs:
                rename[x] = produced[x] = f"{y}_float"
                t, out = y, y
            else:
                t, out = x, f"{x}_dq"
                rename[y] = out
            nodes.extend(_activation_steps(model, rec, rename.get(x, x), t, out, scale))
        else:
            base = _safe(rec.name) if rec.name else _safe(y)
            rename[y] = f"{base}_dq"
            if base in weights_written:  # a module called twice: one weight, one dequantize step
                continue
            weights_written.add(base)
            dt = storage_dtype(rec.spec.bits, rec.spec.signed)
            g.initializer.extend([
                numpy_helper.from_array(np.asarray(rec.codes).astype(dt), f"{base}_quantized"),
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(np.asarray(rec.zero_point).astype(dt), f"{base}_zero_point"),
            ])
            axis = {"axis": rec.axis} if rec.axis is not None and scale.ndim == 1 else {}
            nodes.append(helper.make_node(
                "DequantizeLinear", [f"{base}_quantized", f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dq"], name=f"{base}_dq", **axis))
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = produced.get(name, name)
    del g.node[:]
    g.node.extend(_live(nodes, graph_outputs))
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    kept_opsets = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept_opsets)
    del g.value_info[:]
    return model


def _activation_steps(model, rec: QuantRecord, x: str, t: str, out: str, scale: np.ndarray):
    """``x -> t_q -> out`` with the record's scale, zero point and rounding."""
    g = model.graph
    dtype = _dtype_name(rec.spec.bits, rec.spec.signed)
    zp = np.asarray(rec.zero_point).reshape(()).astype(storage_dtype(rec.spec.bits, rec.spec.signed))
    g.initializer.extend([numpy_helper.from_array(scale.reshape(()), f"{t}_scale"),
                          numpy_helper.from_array(zp, f"{t}_zero_point")])
    ins = [x, f"{t}_scale", f"{t}_zero_point"]
    if qdq.uses_standard_quantize(rec.spec.round_mode, dtype):
        q = helper.make_node("QuantizeLinear", ins, [f"{t}_q"], name=f"{t}_q")
    else:
        op = qdq.ensure_quantize_function(model, rec.spec.round_mode, dtype)
        q = helper.make_node(op, ins, [f"{t}_q"], name=f"{t}_q", domain=qdq.DOMAIN)
    wide = rec.spec.bits > 8  # int16 DequantizeLinear needs opset 21: ONNX Runtime's contrib op
    if wide and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    q.doc_string = f"npuflow.torch quantizer: {rec.name}"
    dq = helper.make_node("DequantizeLinear", [f"{t}_q", f"{t}_scale", f"{t}_zero_point"], [out],
                          name=f"{t}_dq", domain="com.microsoft" if wide else "")
    return [q, dq]


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes that contribute to a graph output (dead float weights are dropped)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    return list(reversed(keep))
