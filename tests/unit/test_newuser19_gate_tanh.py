"""Round 19 of new-user flows: a ConvLSTM's ``Tanh(g)`` gate on the accelerator of float-scale targets.

A ConvLSTM cell (``i, f, o, g = conv([x_t, h]).chunk(4, 1)``, torch exports the chunk as four ``Slice``)
ran each step's ``Slice -> Tanh(g)`` in float on the CPU on cpu-int8 and bernoulli2: 10 compiled
subgraphs for 4 steps, 5 on the accelerator.  The float-tail rule left the Slice float because no
quantized op read it (a Tanh is quantized only between quantized ops), and the Tanh then had a float
input; the three sigmoid gates' Slices were quantized.  A table op whose readers are all quantized now
counts as a quantized reader (``check/followers.py``, the rule check and the quantizer share): the
real ConvLSTM compiles to 2 subgraphs, 1 on the accelerator (the frame Gathers on the graph input stay
on the CPU), Session within 1 LSB of ORT layer by layer.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import samples

SHAPE = [1, 4, 8, 8]


def _gate_cell() -> onnx.ModelProto:
    """conv -> four channel Slices (i, f, o, g) -> c = sig(i) * tanh(g) + sig(f) * conv2(x),
    h = sig(o) * tanh(c) -> conv: one ConvLSTM step with the previous cell state from ``x``."""
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (16, 4, 3, 3)).astype(np.float32), "wg"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "wc"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "wo"),
             numpy_helper.from_array(np.array([1], np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "wg"], ["gates"], name="gates", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["x", "wc"], ["c0"], name="cell0", pads=[1, 1, 1, 1])]
    for k, gate in enumerate("ifog"):
        inits += [numpy_helper.from_array(np.array([4 * k], np.int64), f"start_{gate}"),
                  numpy_helper.from_array(np.array([4 * k + 4], np.int64), f"end_{gate}")]
        nodes.append(helper.make_node("Slice", ["gates", f"start_{gate}", f"end_{gate}", "axis"], [gate],
                                      name=f"slice_{gate}"))
    nodes += [helper.make_node("Sigmoid", ["i"], ["si"], name="sig_i"),
              helper.make_node("Sigmoid", ["f"], ["sf"], name="sig_f"),
              helper.make_node("Sigmoid", ["o"], ["so"], name="sig_o"),
              helper.make_node("Tanh", ["g"], ["tg"], name="tanh_g"),
              helper.make_node("Mul", ["si", "tg"], ["ig"], name="mul_ig"),
              helper.make_node("Mul", ["sf", "c0"], ["fc"], name="mul_fc"),
              helper.make_node("Add", ["ig", "fc"], ["c"], name="cell"),
              helper.make_node("Tanh", ["c"], ["tc"], name="tanh_c"),
              helper.make_node("Mul", ["so", "tc"], ["h"], name="hidden"),
              helper.make_node("Conv", ["h", "wo"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "convlstm_step", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_the_g_gate_slice_and_its_tanh_run_on_the_accelerator(target):
    model = _gate_cell()
    placed = npuflow.check(model, target)
    assert placed.node("slice_g").device == "NPU" and placed.node("tanh_g").device == "NPU"
    q = npuflow.quantize(model, samples(SHAPE, n=8), target=target)
    compiled = npuflow.compile(q.model, target)
    [subgraph] = compiled.manifest["subgraphs"]  # one integer program: no float round trip for the gate
    assert subgraph["device"] != "CPU"
    x = samples(SHAPE, n=1, seed=3)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, target).values()) <= 1
