"""``npuflow.Session.run`` called as a notebook user calls it (newuser round 5).  Before, a list of
arrays (``sess.run([x])``, as rknn's ``inference(inputs=[x])``) was ``TypeError: unhashable type:
'numpy.ndarray'``, an unknown name in ``output_names`` a ``KeyError`` raised after the whole run,
and ``output_names="logits"`` asked for one output per character.  Now: coded errors
(``NPF_RUNTIME_BAD_FEED``, ``NPF_RUNTIME_UNKNOWN_OUTPUT``) and a single name as a string."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow

rng = np.random.default_rng(0)


@pytest.fixture(scope="module")
def session() -> npuflow.Session:
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["logits"], "relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(4)]
    return npuflow.Session(npuflow.compile(npuflow.quantize(model, calib, "cpu-int8").model, "cpu-int8"))


X = rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)


@pytest.mark.parametrize("feed", [[X], (X,), X])
def test_inputs_that_are_not_a_mapping_are_a_coded_error(session, feed):
    with pytest.raises(npuflow.NpuflowError) as err:
        session.run(feed)
    assert err.value.code == "NPF_RUNTIME_BAD_FEED"
    assert "x" in err.value.hint


@pytest.mark.parametrize("names", [["nope"], ["logits", "nope"], "nope"])
def test_unknown_output_name_is_a_coded_error(session, names):
    with pytest.raises(npuflow.NpuflowError) as err:
        session.run({"x": X}, names)
    assert err.value.code == "NPF_RUNTIME_UNKNOWN_OUTPUT"
    assert "logits" in err.value.hint


def test_one_output_name_as_a_string(session):
    full = session.run({"x": X})
    assert list(session.run({"x": X}, "logits")) == ["logits"]
    np.testing.assert_array_equal(session.run({"x": X}, "logits")["logits"], full["logits"])
    np.testing.assert_array_equal(session.run({"x": X}, ["logits"])["logits"], full["logits"])
    assert list(session.run({"x": X}, [])) == list(full)  # an empty list: every output, as None
