"""Closing sessions and the ``onnxruntime.InferenceSession`` methods npuflow.ort lacked (newuser
round 6).  Before: ``npuflow.Session`` had no ``close()`` and no context manager (a server swapping
models kept every ORT session until the garbage collector ran), and ``io_binding``,
``end_profiling``, ``get_session_options``, ``get_overridable_initializers`` were AttributeErrors;
``get_providers()`` listed the accelerator provider for a model with nothing on it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
import npuflow.ort
from npuflow.errors import NpuflowError

rng = np.random.default_rng(0)


def _conv_relu():
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], "relu"),
             helper.make_node("Sin", ["r"], ["y"], "sin")]  # a CPU tail: the model has ORT sessions to free
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def npuf(tmp_path_factory):
    calib = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(4)]
    q = npuflow.quantize(_conv_relu(), calib, "DPUCZDX8G_ISA1_B4096", warn=False)
    path = tmp_path_factory.mktemp("m") / "m.npuf"
    npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").save(path)
    return path


def test_session_close_and_context_manager(npuf):
    x = {"x": rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)}
    with npuflow.Session(npuf) as s:
        y = s.run(x)["y"]
    with pytest.raises(NpuflowError) as e:
        s.run(x)
    assert e.value.code == "NPF_RUNTIME_CLOSED"
    assert s.get_outputs()[0].name == "y"  # the description stays
    s.close()  # twice is fine
    s2 = npuflow.Session(npuf)
    s2.close()
    with pytest.raises(NpuflowError) as e:
        s2.run_op("conv", {})
    assert e.value.code == "NPF_RUNTIME_CLOSED"
    assert np.array_equal(npuflow.Session(npuf).run(x)["y"], y)


def test_ort_session_close_providers_and_unsupported_methods(npuf):
    x = {"x": rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32)}
    import onnxruntime

    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = 1
    with npuflow.ort.InferenceSession(str(npuf), opts) as sess:
        assert sess.get_providers() == ["NpuflowExecutionProvider", "CPUExecutionProvider"]
        assert sess.get_provider_options()["NpuflowExecutionProvider"] == {"target": "DPUCZDX8G_ISA1_B4096"}
        assert sess.get_session_options() is opts
        assert sess.get_overridable_initializers() == []
        sess.run(None, x)
        for method, args in [("io_binding", ()), ("end_profiling", ()), ("run_with_iobinding", (None,)),
                             ("run_with_ort_values", (None, {})), ("set_providers", (["CPUExecutionProvider"],))]:
            with pytest.raises(NpuflowError) as e:
                getattr(sess, method)(*args)
            assert e.value.code == "NPF_ORT_UNSUPPORTED_METHOD" and method in str(e.value)
    with pytest.raises(NpuflowError) as e:
        sess.run(None, x)
    assert e.value.code == "NPF_RUNTIME_CLOSED"


def test_get_providers_without_accelerator_subgraph(tmp_path):
    """A quantized model compiled with nothing on the accelerator (a Sin after Q/DQ) runs on the
    CPU provider only; before, the accelerator's provider was listed for it too."""
    inits = [numpy_helper.from_array(np.array(0.5, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], "q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], "dq"),
             helper.make_node("Sin", ["xd"], ["y"], "sin")]
    graph = helper.make_graph(nodes, "cpu_only", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = npuflow.compile(model, "DPUCZDX8G_ISA1_B4096").save(tmp_path / "m.npuf")
    sess = npuflow.ort.InferenceSession(str(path))
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_provider_options() == {"CPUExecutionProvider": {}}


def test_ort_session_input_shapes_for_a_dynamic_model(tmp_path):
    """A quantized token model with a dynamic sequence length: ``npuflow.ort.InferenceSession`` had
    no way to freeze it (``NPF_MODEL_DYNAMIC_SHAPE``, its hint naming a CLI option); ``input_shapes``
    compiles one or several shape sets, as ``npuflow compile --input-shape`` does."""
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], "mm"), helper.make_node("Relu", ["m"], ["y"], "relu")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "seq", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seq", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [rng.normal(0, 1, (1, 5, 4)).astype(np.float32) for _ in range(4)]
    q = npuflow.quantize(model, calib, "cpu-int8", warn=False).dynamic_model
    data = q.SerializeToString()
    with pytest.raises(NpuflowError) as e:
        npuflow.ort.InferenceSession(data, target="cpu-int8", cache_dir=tmp_path)
    assert e.value.code == "NPF_MODEL_DYNAMIC_SHAPE"
    shapes = [{"x": [1, 5, 4]}, {"x": [1, 8, 4]}]
    sess = npuflow.ort.InferenceSession(data, target="cpu-int8", cache_dir=tmp_path, input_shapes=shapes)
    ref = npuflow.Session(npuflow.compile(q, "cpu-int8", input_shapes=shapes))
    for length in (5, 7):
        x = rng.normal(0, 1, (1, length, 4)).astype(np.float32)
        assert np.array_equal(sess.run(None, {"x": x})[0], ref.run({"x": x})["y"])
    assert npuflow.ort.InferenceSession(data, target="cpu-int8", cache_dir=tmp_path, input_shapes=shapes).from_cache
    assert not npuflow.ort.InferenceSession(data, target="cpu-int8", cache_dir=tmp_path,
                                            input_shapes={"x": [1, 5, 4]}).from_cache  # another key
