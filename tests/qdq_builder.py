"""Hand-built QDQ models in the format of docs/quantized-model-format.md, for compiler tests.

Quantize steps are ``QuantizeLinear`` for half_even 8-bit and the ``ai.npuflow`` functions
(npuflow.qdq) otherwise; weights are quantized offline with ``numerics.quantize``; biases are
int32 with scale ``s_in * s_w``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from npuflow import numerics as nm
from npuflow import ort_kernels, qdq
from npuflow.ort_session import disabled


class Builder:
    def __init__(self, round_mode: str = "half_up", opset: int = 17) -> None:
        self.round_mode = round_mode
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.opset = opset
        self.model_proto = helper.make_model(helper.make_graph([], "g", [], []),
                                             opset_imports=[helper.make_opsetid("", opset)])
        self.scales: dict[str, float] = {}
        self.zps: dict[str, int] = {}
        self._n = 0

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}{self._n}"

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def input(self, name: str, shape, scale: float, zp: int = 0, dtype: str = "int8") -> str:
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return self.quantize(name, scale, zp, dtype)

    def quantize(self, t: str, scale: float, zp: int = 0, dtype: str = "int8") -> str:
        q = f"{t}_q"
        self.const(f"{t}_scale", np.float32(scale))
        self.const(f"{t}_zero_point", np.array(zp, dtype=dtype))
        if qdq.uses_standard_quantize(self.round_mode, dtype):
            self.nodes.append(helper.make_node("QuantizeLinear", [t, f"{t}_scale", f"{t}_zero_point"], [q], name=q))
        else:
            op = qdq.ensure_quantize_function(self.model_proto, self.round_mode, dtype)
            self.nodes.append(helper.make_node(op, [t, f"{t}_scale", f"{t}_zero_point"], [q], name=q,
                                               domain=qdq.DOMAIN))
        self.scales[q] = scale
        self.zps[q] = zp
        return q

    def dq(self, q: str) -> str:
        base = q[:-2] if q.endswith("_q") else q
        out = f"{base}_dq"
        if not any(n.name == out for n in self.nodes):
            self.nodes.append(helper.make_node("DequantizeLinear", [q, f"{base}_scale", f"{base}_zero_point"],
                                               [out], name=out))
        return out

    def weight(self, name: str, w: np.ndarray, scale, axis: int | None = None, bits_dtype=np.int8,
               narrow: bool = False) -> str:
        s = np.asarray(scale, np.float32)
        qw = nm.quantize(w, s, 0, narrow=narrow, round_mode="std_round", axis=axis if s.ndim else None)
        self.const(f"{name}_quantized", qw.astype(bits_dtype))
        self.const(f"{name}_scale", s)
        self.const(f"{name}_zero_point", np.zeros(s.shape, np.int8))
        attrs = {"axis": axis} if s.ndim else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                                                f"{name}_zero_point"], [f"{name}_dq"],
                                           name=f"{name}_dq", **attrs))
        return f"{name}_dq"

    def bias(self, name: str, b: np.ndarray, scale) -> str:
        s = np.asarray(scale, np.float32)
        qb = np.clip(nm.round_values(b / s, "std_round"), -2**31, 2**31 - 1).astype(np.int32)
        self.const(f"{name}_quantized", qb)
        self.const(f"{name}_scale", s)
        self.const(f"{name}_zero_point", np.zeros(s.shape, np.int32))
        attrs = {"axis": 0} if s.ndim else {}
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{name}_quantized", f"{name}_scale",
                                                                f"{name}_zero_point"], [f"{name}_dq"],
                                           name=f"{name}_dq", **attrs))
        return f"{name}_dq"

    def node(self, op: str, inputs: list[str], out: str | None = None, n_out: int = 1, **attrs) -> str | list[str]:
        name = out or self._name(op.lower())
        outs = [name] if n_out == 1 else [f"{name}_{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, q: str, name: str | None = None) -> str:
        base = q[:-2] if q.endswith("_q") else q
        out = name or f"{base}_out"
        self.nodes.append(helper.make_node("DequantizeLinear", [q, f"{base}_scale", f"{base}_zero_point"], [out],
                                           name=out))
        self.outputs.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        return out

    def float_output(self, t: str) -> str:
        self.outputs.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
        return t

    def model(self) -> onnx.ModelProto:
        m = self.model_proto
        g = helper.make_graph(self.nodes, "qdq_test", self.inputs, self.outputs, self.inits)
        m.graph.CopyFrom(g)
        m.ir_version = 8
        return onnx.shape_inference.infer_shapes(m)


def ort_values(model: onnx.ModelProto, feeds: dict, names: list[str], level: str = "disable") -> dict:
    """Values of any tensors of ``model`` as ORT computes them (exposed as extra outputs), in npuflow's
    sessions' form (``ort_session.disabled``: a float layer between quantized ones stays float)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_empty_tensor_value_info(n))
    m.ir_version = min(m.ir_version, 10)
    m = ort_kernels.exact_weights(m)  # ORT's integer kernels in the form this CPU computes exactly
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "disable"
                                     else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=disabled(m) or None)
    return dict(zip(names, sess.run(names, feeds)))
