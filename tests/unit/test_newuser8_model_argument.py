"""What a notebook user passes as the model (new-user round 8): ``npuflow.quantize(calib, model,
target)`` (the arguments swapped) failed with ``TypeError: expected str, bytes or os.PathLike
object, not list`` from pathlib, and the model's serialized bytes (which
``onnxruntime.InferenceSession`` takes) with ``TypeError: argument should be a str object``.  Now
bytes load like the file, and anything else is NPF_MODEL_NOT_ONNX saying what the model may be and
the argument order."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError

rng = np.random.default_rng(0)


def _model():
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
                               helper.make_node("Relu", ["c"], ["y"], "relu")], "t",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


CALIB = [rng.normal(0, 1, (1, 2, 6, 6)).astype(np.float32) for _ in range(4)]


def test_model_bytes_quantize_compile_and_check_like_the_file(tmp_path):
    model = _model()
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    from_bytes = npuflow.quantize(path.read_bytes(), CALIB, "cpu-int8", warn=False)
    from_file = npuflow.quantize(path, CALIB, "cpu-int8", warn=False)
    assert from_bytes.model.SerializeToString() == from_file.model.SerializeToString()
    npuflow.compile(from_bytes.model.SerializeToString(), "cpu-int8")
    assert npuflow.check(path.read_bytes(), "bernoulli2").node("conv").name == "conv"


@pytest.mark.parametrize("call", ["calib_first", "number", "none"])
def test_a_model_that_is_not_a_model_is_a_coded_error(call):
    args = {"calib_first": (CALIB, _model(), "cpu-int8"), "number": (3, CALIB, "cpu-int8"),
            "none": (None, CALIB, "cpu-int8")}[call]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(*args)
    assert exc.value.code == "NPF_MODEL_NOT_ONNX"
    assert "the model first" in str(exc.value)


def test_a_compiled_npuf_given_as_the_model_is_named(tmp_path):
    """``npuflow build`` with a ``.npuf`` as ``onnx_model`` (and quantize/check/analyze of one) said
    "is not an ONNX model: Error parsing message ...: Wire format was corrupt"."""
    q = npuflow.quantize(_model(), CALIB, "cpu-int8", warn=False)
    path = npuflow.compile(q, "cpu-int8").save(tmp_path / "m.npuf")
    for call in (lambda: npuflow.quantize(path, CALIB, "cpu-int8"), lambda: npuflow.check(path, "cpu-int8"),
                 lambda: npuflow.compile(path, "cpu-int8")):
        with pytest.raises(NpuflowError) as exc:
            call()
        assert exc.value.code == "NPF_MODEL_NOT_ONNX" and "compiled npuflow model (.npuf)" in str(exc.value)
    assert npuflow.Session(path).get_inputs()[0].name == "x"  # the file itself is fine


@pytest.mark.parametrize("calib", ["stacked", "dict_of_list"])
def test_stacked_samples_get_a_hint(calib):
    """``npuflow.quantize(model, np.stack(samples), T)`` and ``{"x": [a, b, ...]}``: one array is one
    sample; the mismatch said only "has shape 4x2x6x6, the model wants 1x2x6x6"."""
    data = {"stacked": np.concatenate(CALIB), "dict_of_list": {"x": CALIB}}[calib]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(_model(), data, "cpu-int8")
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH"
    split = "list(x[:, None])" if calib == "stacked" else "list(x)"
    assert "4 samples stacked in one array?" in str(exc.value) and f"e.g. {split})" in str(exc.value)
    assert npuflow.quantize(_model(), list(np.concatenate(CALIB)[:, None]), "cpu-int8", warn=False).model
