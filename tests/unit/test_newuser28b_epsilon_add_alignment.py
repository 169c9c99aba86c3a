"""A tiny constant added to a wide activation (newuser_flows28b, DCCRN-lite on DPUCZDX8G_ISA1_B4096): the
mask magnitude ``sqrt(re*re + im*im + 1e-8)`` quantized the epsilon on its own power-of-two grid (``2**-33``)
beside a sum on ``2**3``; no int32 shift aligns scales ``2**36`` apart, so compile ran that Add on the CPU
(one more CPU round trip) where ``check`` had placed it on the DPU.  The quantizer now keeps such a constant
within the integer program's alignment reach (:data:`npuflow.check.lowerable.MAX_ALIGN_SHIFT`), and check and
compile agree."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.lowerable import MAX_ALIGN_SHIFT
from npuflow.numerics import fix_pos_of

B4096 = "DPUCZDX8G_ISA1_B4096"


def _model() -> onnx.ModelProto:
    """x (1x4x8x8) -> 1x1 Conv -> Mul(c, c) (to about 2000) -> Add(+1e-8) -> Sqrt -> 1x1 Conv."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 3, (4, 4, 1, 1)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.01, (4, 4, 1, 1)).astype(np.float32), "w2")
    eps = numpy_helper.from_array(np.array(1e-8, np.float32), "eps")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1"),
             helper.make_node("Mul", ["c", "c"], ["sq"], name="square"),
             helper.make_node("Add", ["sq", "eps"], ["e"], name="add_eps"),
             helper.make_node("Sqrt", ["e"], ["r"], name="magnitude"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2, eps])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def quantized():
    rng = np.random.default_rng(1)
    samples = [{"x": rng.uniform(-3, 3, (1, 4, 8, 8)).astype(np.float32)} for _ in range(8)]
    return npuflow.quantize(_model(), samples, target=B4096, warn=False), samples


def test_epsilon_stays_within_the_alignment_shift(quantized):
    q, _ = quantized
    eps, sq = (int(fix_pos_of(q.quant_params[t].scale).reshape(-1)[0]) for t in ("eps", "sq"))
    assert sq <= -3  # the sum's grid is coarse: 2**3 or coarser
    assert 0 < eps - sq <= MAX_ALIGN_SHIFT


def test_check_and_compile_both_place_the_add_on_the_dpu(quantized, tmp_path):
    q, samples = quantized
    compiled = npuflow.compile(q, B4096)
    notes = "\n".join(str(n) for n in compiled.notes)
    assert "add_eps" not in notes  # before: "add_eps (Add) runs on CPU: ... scales are 2^36 apart"
    cpu = {getattr(n, "name", n) for n in npuflow.check(_model(), B4096).cpu_nodes}
    assert "magnitude" in cpu and "add_eps" not in cpu  # check says the same
    path = tmp_path / "m.npuf"
    compiled.save(path)
    sess = npuflow.Session(path)
    ref = ort.InferenceSession(_model().SerializeToString())
    for feed in samples[:3]:
        got, want = sess.run(feed)["y"], ref.run(None, feed)[0]
        cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
        assert cos > 0.99
