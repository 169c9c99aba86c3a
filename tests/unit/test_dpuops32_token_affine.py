"""ResMLP's Affine (``alpha * x + beta``, one value per channel) on N x T x C tokens: check reads it as the
1x1 depthwise convolution it is on a 1 x T map of C channels (as on 4-D maps), so the DPU runs it.  Before
session 32 such a Mul/Add by a [1, 1, C] constant was ``mul_const`` / ``add_const``, "no DPU
implementation": a float CPU round trip between two token-wise linear layers."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.check.report import NPU
from tests import onnx_builders as B
from tests.qdq_builder import ort_values
from tests.unit.test_placement_agreement import compiled_devices

T, C = 6, 8


def _tokens(const_shape: tuple[int, ...]) -> onnx.ModelProto:
    """``h = MatMul(x [1, T, C], C x C)``, ``y = h + MatMul(alpha * h + beta, C x C)`` (alpha, beta of
    ``const_shape``; the residual reads ``h`` too, so the scale cannot fold into the first layer, as in ResMLP)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((C, C)) * 0.3).astype(np.float32), n) for n in ("w1", "w2")]
    inits += [numpy_helper.from_array((1 + 0.2 * rng.standard_normal(const_shape)).astype(np.float32), "alpha"),
              numpy_helper.from_array((0.1 * rng.standard_normal(const_shape)).astype(np.float32), "beta")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Mul", ["h", "alpha"], ["s"], name="scale"),
             helper.make_node("Add", ["s", "beta"], ["a"], name="shift"),
             helper.make_node("MatMul", ["a", "w2"], ["f"], name="fc2"),
             helper.make_node("Add", ["h", "f"], ["y"], name="residual")]
    m = B.model(nodes, [B.vi("x", [1, T, C])], [B.vi("y", [1, T, C])], inits)
    m.ir_version = 9
    return m


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
@pytest.mark.parametrize("shape", [(1, 1, C), (C,)])
def test_a_per_channel_affine_on_tokens_runs_on_the_accelerator_equal_to_onnx_runtime(target, shape, tmp_path):
    model = _tokens(shape)
    report = npuflow.check(model, target)
    affine = [n for n in report.nodes if n.name in ("scale", "shift")]  # the float passes merge the two
    assert affine and all(n.device == NPU for n in report.nodes), [(n.name, n.reasons) for n in report.nodes]
    assert all(n.op_kind == "depthwise_conv2d" and n.params["input_channel"] == C for n in affine)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, T, C)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, calib, target, warn=False)
    compiled = npuflow.compile(q.model, target)
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True]
    assert {compiled_devices(compiled)[n.name] for n in affine} == {"ACC"}
    session = npuflow.Session(npuflow.CompiledModel.load(compiled.save(tmp_path / "m.npuf")))
    for feeds in calib[:2]:
        np.testing.assert_array_equal(session.run(feeds)["y"], ort_values(q.model, feeds, ["y"])["y"])


def test_a_constant_per_token_and_channel_stays_an_elementwise_constant():
    """A [T, C] constant scales each token differently: no depthwise form, still ``mul_const``."""
    nodes = {n.name: n for n in npuflow.check(_tokens((T, C)), "DPUCZDX8G_ISA1_B4096").nodes}
    assert [(n.op_kind, n.device != NPU) for k, n in nodes.items() if k in ("scale", "shift")] == \
        [("mul_const", True), ("add_const", True)]
