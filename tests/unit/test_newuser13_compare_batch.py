"""Round 13 of new-user flows: ``npuflow compare FLOAT.onnx MODEL.npuf --data test.npz`` for a model
whose batch and spatial dimensions are dynamic, compiled with ``--input-shape x 2x3x48x40``.

``npuflow run`` takes the ``.npz`` (one batch of 2, the compiled shape); compare read it with the
float model's dynamic dimensions, split it into two samples of batch 1 and failed with
``NPF_RUNTIME_INPUT_SHAPE`` "[1, 3, 48, 40], the model expects [2, 3, 48, 40]".  A ``.npuf``'s samples
are read at the shapes it was compiled at.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.analyze.compare import compare


def _dynamic_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((1, 8, 1, 1)).astype(np.float32) * 0.3, "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compare_reads_a_npuf_sample_at_its_compiled_batch(tmp_path):
    model = _dynamic_net()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((2, 3, 12, 10), dtype=np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(model, calib, "DPUCZDX8G_ISA1_B4096", warn=False).model
    compiled = npuflow.compile(quantized, "DPUCZDX8G_ISA1_B4096", input_shapes={"x": [2, 3, 12, 10]})
    npuf = tmp_path / "m.npuf"
    compiled.save(npuf)
    onnx.save(model, tmp_path / "float.onnx")
    data = tmp_path / "test.npz"
    np.savez(data, x=rng.random((2, 3, 12, 10), dtype=np.float32))
    result = compare(tmp_path / "float.onnx", npuf, data)
    assert result.samples == 1
    final = [row for row in result.layers if row.tensor == "y"]
    assert final and final[0].cosine > 0.99, final
