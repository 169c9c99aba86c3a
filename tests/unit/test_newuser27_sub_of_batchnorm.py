"""FastViT's RepMixer ``x + ls * (BN(dw(x)) - BN(x))`` (newuser_flows27): the ``Sub`` whose second operand is a
BatchNormalization of an activation.  DPUCZDX8G and bernoulli2 add but do not subtract; the target rewrite
``sub_as_add`` negates the layer that writes the subtrahend.  Quantize's float passes turn the lone BN into a
1x1 depthwise Conv first, so compile ran the ``Sub`` as an ``Add`` on the accelerator; check of the float model
judged the graph with the BN still a BN, left the ``Sub`` on the CPU ("eltwise_sub has no DPU implementation")
and counted one accelerator subgraph more than the compiled model had (FastViT-lite: check 6, compile 5 on
both targets).  Now the rewrite negates a BN's scale and shift as it negates a layer's weight and bias."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check import NPU
from npuflow.passes.target_rewrites import target_rewrites
from npuflow.targets import load_target


def _repmixer() -> onnx.ModelProto:
    """x -> Relu(Conv) = r; y = r + ls * (Conv_dw(r) - BN(r)) -> Conv -> out."""
    rng = np.random.default_rng(0)
    c = 8
    arr = lambda name, a: numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits = [arr("w0", rng.normal(0, 0.3, (c, 3, 3, 3))), arr("wdw", rng.normal(0, 0.3, (c, 1, 3, 3))),
             arr("bn_s", rng.uniform(0.5, 1.5, c)), arr("bn_b", rng.normal(0, 0.2, c)),
             arr("bn_m", rng.normal(0, 0.2, c)), arr("bn_v", rng.uniform(0.5, 1.5, c)),
             arr("ls", np.full((c, 1, 1), 0.1)), arr("w1", rng.normal(0, 0.3, (4, c, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c0"], ["r"], name="stem_relu"),
             helper.make_node("Conv", ["r", "wdw"], ["mix"], name="mix", pads=[1, 1, 1, 1], group=c),
             helper.make_node("BatchNormalization", ["r", "bn_s", "bn_b", "bn_m", "bn_v"], ["norm"], name="norm"),
             helper.make_node("Sub", ["mix", "norm"], ["d"], name="sub"),
             helper.make_node("Mul", ["ls", "d"], ["m"], name="ls_mul"),
             helper.make_node("Add", ["r", "m"], ["a"], name="res"),
             helper.make_node("Conv", ["a", "w1"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "repmixer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_sub_of_a_batchnorm_becomes_an_add_of_the_negated_batchnorm():
    model = _repmixer()
    rewritten, done = target_rewrites(model, load_target("DPUCZDX8G_ISA1_B4096"))
    assert [(r.rewrite, r.applied) for r in done if r.node == "sub"] == [("sub_as_add", True)]
    assert next(n for n in rewritten.graph.node if n.name == "sub").op_type == "Add"
    x = np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(_run(rewritten, x), _run(model, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_check_places_the_sub_where_compile_runs_it(target):
    model = _repmixer()
    r = npuflow.check(model, target)
    assert r.node("sub").device == NPU, r.node("sub").reasons
    rng = np.random.default_rng(2)
    samples = [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(model, samples, target=target, warn=False)
    devices = [str(getattr(s, "device", s)) for s in npuflow.compile(quantized.model, target).subgraphs]
    assert sum(not d.endswith("CPU") for d in devices) == r.summary["npu_subgraphs"] == 1
