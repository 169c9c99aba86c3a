"""Dumps of tensors with very long names (new-user round 16): TensorFlow exports name tensors by
their whole op path, and basic-pitch's ``nmp.onnx`` has one of 378 characters; ``npuflow compare
FLOAT.onnx MODEL.npuf`` and ``npuflow run --dump`` died with a traceback (``OSError: File name too
long``) writing its dump file.  Long names are now cut and told apart by a hash."""

from __future__ import annotations

import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import npuflow


def _model(long: str, other: str):
    """x -> Conv -> Relu (named ``long``) -> Conv (named ``other``, same 160-character start) -> y."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], [long]),
             helper.make_node("Conv", [long, "w2"], [other], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", [other], ["y"])]
    graph = helper.make_graph(nodes, "long", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_dump_of_tensors_named_past_the_file_system_limit(tmp_path):
    long = "model_1/re_lu_3/Relu;model_1/batch_normalization_3/FusedBatchNormV3;" * 6
    other = long + "conv2d_4/Conv2D"
    rng = np.random.default_rng(1)
    calib = [rng.random((1, 3, 16, 16), dtype=np.float32) for _ in range(4)]
    q = npuflow.quantize(_model(long, other), calib, "cpu-int8", warn=False)
    session = npuflow.Session(npuflow.compile(q, "cpu-int8"))
    outs = session.run({"x": calib[0]}, dump_dir=tmp_path / "dump")
    index = json.loads((tmp_path / "dump" / "index.json").read_text())
    dumped = [name for name in index if name.startswith("model_1/")]
    assert dumped and all(len(index[name]) < 200 for name in index)
    assert len({index[name] for name in index}) == len(index)  # two names with one long start stay apart
    np.testing.assert_array_equal(np.load(tmp_path / "dump" / index["y"]), outs["y"])
