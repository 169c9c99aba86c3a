"""A minimal power-of-two, per-tensor QDQ builder for the accuracy-algorithm tests.

It writes the same QDQ layout the quantizer exports (int8 weight initializers behind
``DequantizeLinear``, float biases, ``QuantizeLinear``/``DequantizeLinear`` pairs on activations)
so the algorithms can be tested on small graphs without running the whole quantizer.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from npuflow import numerics
from npuflow.graph import GraphView
from npuflow.ort_session import _topological
from npuflow.quant.algorithms.capture import capture
from npuflow.quant.algorithms.layers import layer_weight, weight_layers


def toy_qdq(model: onnx.ModelProto, feeds: list[dict], weights_only: bool = False) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    layers = weight_layers(m)
    view = GraphView(m)
    # activation points: each layer's output, after a single Relu/Clip consumer
    points = []
    for l in layers:
        t = l.node.output[0]
        users = view.consumer_nodes(t)
        if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
            t = users[0].output[0]
        points.append(t)
    amax: dict[str, float] = {}
    if not weights_only:
        def keep(_, vals):
            for k, v in vals.items():
                amax[k] = max(amax.get(k, 0.0), float(np.abs(v).max()))
        capture(m, feeds, points, keep)
    for l in layers:
        w = layer_weight(m, l)
        fp = int(numerics.pow2_fix_pos(np.abs(w).max()))
        s = numerics.pow2_scale(fp)
        q = numerics.quantize(w, s, round_mode="std_round", narrow=True)
        stored = q if l.trans_b else q.T
        qname, sname, zname = l.weight + "_q", l.weight + "_s", l.weight + "_zp"
        m.graph.initializer.extend([
            numpy_helper.from_array(stored, qname), numpy_helper.from_array(np.array(s, np.float32), sname),
            numpy_helper.from_array(np.array(0, np.int8), zname)])
        m.graph.node.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [l.weight + "_dq"],
                                             name=l.weight + "_DQ"))
        l.node.input[1] = l.weight + "_dq"
    if not weights_only:
        outputs = {o.name for o in m.graph.output}
        for t in points:
            if t in outputs:
                continue
            fp = int(numerics.pow2_fix_pos(amax[t]))
            s = numerics.pow2_scale(fp)
            sname, zname = t + "_as", t + "_azp"
            m.graph.initializer.extend([numpy_helper.from_array(np.array(s, np.float32), sname),
                                        numpy_helper.from_array(np.array(0, np.int8), zname)])
            for u in view.consumer_nodes(t):
                for i, x in enumerate(u.input):
                    if x == t:
                        u.input[i] = t + "_deq"
            m.graph.node.extend([
                helper.make_node("QuantizeLinear", [t, sname, zname], [t + "_qa"], name=t + "_Q"),
                helper.make_node("DequantizeLinear", [t + "_qa", sname, zname], [t + "_deq"], name=t + "_DQa"),
            ])
    _toposort(m)
    return m


def _toposort(m: onnx.ModelProto) -> None:
    done = _topological(m.graph)
    del m.graph.node[:]
    m.graph.node.extend(done)
