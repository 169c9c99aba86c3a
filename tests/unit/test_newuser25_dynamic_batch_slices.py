"""New-user round 25: a dynamic-batch model whose slices read their bounds from ``x.shape``.

A TorchScript export with a dynamic batch records every ``x.shape[2]`` as ``Shape -> Gather``, even
where the dimension is static (the involution's 3x3 shifted copies ``p[:, :, i:i + h, j:j + w]``).
The quantizer keeps the batch dynamic in ``quantized_model.onnx``; ``compile`` froze the batch at 1
but left the shape arithmetic as nodes, so every ``Slice`` had a computed bound and ran on the CPU
("Slice parameter ... must be a constant") while ``check`` and quantize's report placed it on the
accelerator (InvNet on DPUCZDX8G: check 3 accelerator subgraphs, compiled 5)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from tests.qdq_builder import ort_values
from tests.unit.quant_nets import samples


def _shifted_slices() -> onnx.ModelProto:
    """x [N, 4, 8, 8] -> Conv 3x3 -> Relu -> r[:, :, 1:h] and r[:, :, 0:h - 1] (h = Shape(r)[2]) -> Add -> Conv."""
    rng = np.random.default_rng(25)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([1], np.int64), "one"),
             numpy_helper.from_array(np.array([2], np.int64), "axis")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Shape", ["r"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "two"], ["h"], name="h", axis=0),
             helper.make_node("Unsqueeze", ["h", "zero"], ["h1"], name="h1"),
             helper.make_node("Sub", ["h1", "one"], ["hm1"], name="hm1"),
             helper.make_node("Slice", ["r", "one", "h1", "axis"], ["lo"], name="down"),
             helper.make_node("Slice", ["r", "zero", "hm1", "axis"], ["hi"], name="up"),
             helper.make_node("Add", ["lo", "hi"], ["a"], name="add"),
             helper.make_node("Conv", ["a", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "shifted", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 7, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_compile_of_the_saved_dynamic_batch_model_runs_the_slices_on_the_accelerator(tmp_path):
    model = _shifted_slices()
    calib = [{"x": s} for s in samples([1, 4, 8, 8], n=8)]
    q = npuflow.quantize(model, calib, "cpu-int8", warn=False)
    q.save(tmp_path / "q")
    saved = tmp_path / "q" / "quantized_model.onnx"
    assert "N" in str(onnx.load(str(saved)).graph.input[0].type)  # the batch stays dynamic in the file
    assert npuflow.check(model, "cpu-int8").node("down").device == "NPU"
    compiled = npuflow.compile(str(saved), "cpu-int8")
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True]
    x = {"x": samples([1, 4, 8, 8], n=1, seed=3)[0]}
    np.testing.assert_array_equal(npuflow.Session(compiled).run(x)["y"], ort_values(q.model, x, ["y"])["y"])
