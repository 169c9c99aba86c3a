"""The shape probe (``npuflow.shape_probe``) and the opset range of ``npuflow.model``.

ONNX shape inference leaves some shapes unknown (an ``If`` whose branches differ); one ONNX
Runtime run fills them.  That run must be fed values valid for each input: a branch-selecting
integer input (silero-vad's sample rate ``sr``) gets the constant the model compares it with, a
given value wins over the guess and travels with the model, and a failed run is a coded error that
names the input and says how to give a value.  Opsets are accepted up to the newest one both the
installed onnx and ONNX Runtime support.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import model, shape_probe
from npuflow.errors import NpuflowError


def _rate_model() -> onnx.ModelProto:
    """Like silero-vad: ``sr == 16000`` picks a branch; the other one cannot take this frame."""
    then_g = helper.make_graph([helper.make_node("Reshape", ["x", "shape16"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Gather", ["x", "idx8"], ["e"], axis=1)], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16"]),
             helper.make_node("If", ["is16"], ["y"], then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.array([1, 2, -1], np.int64), "shape16"),
             numpy_helper.from_array(np.array([40], np.int64), "idx8"),
             numpy_helper.from_array(np.array(16000, np.int64), "rate")]
    g = helper.make_graph(nodes, "rate", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32]),
                                          helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_shape_inference_cannot_follow_the_branches():
    """The premise: ONNX's own inference leaves the If output's shape open, so the probe runs."""
    inferred = onnx.shape_inference.infer_shapes(_rate_model(), data_prop=True)
    assert not inferred.graph.output[0].type.tensor_type.HasField("shape")


def test_probe_gives_branch_input_the_compared_value():
    m = model.load(_rate_model())  # zeros for sr took the other branch: NPF_MODEL_INVALID before
    assert model.tensor_shapes(m)["y"] == [1, 2, 16]
    feeds = shape_probe.probe_feeds(m)
    assert feeds["sr"].item() == 16000 and feeds["sr"].dtype == np.int64
    assert not feeds["x"].any() and feeds["x"].shape == (1, 32)


def test_failed_probe_is_coded_and_names_the_input():
    with pytest.raises(NpuflowError) as e:
        model.load(_rate_model(), probe_values={"sr": 8000})
    err = e.value
    assert err.code == "NPF_MODEL_SHAPE_PROBE_FAILED"
    assert "sr=8000" in err.message and "indices element out of data bounds" in err.message
    assert "--probe-value sr=VALUE" in err.hint and "probe_values={'sr'" in err.hint


def test_given_probe_values_travel_with_the_model():
    m = model.load(_rate_model(), probe_values={"sr": 16000})
    assert {p.key: p.value for p in m.metadata_props}[shape_probe.PROBE_VALUES_KEY] == '{"sr": 16000}'
    shape_probe.set_probe_values(m, {"sr": 8000})  # a later stage re-inferring this model uses the stored value
    del m.graph.value_info[:]
    m.graph.output[0].type.tensor_type.ClearField("shape")
    with pytest.raises(NpuflowError, match="sr=8000"):
        model.infer_static_shapes(m)


def test_probe_value_syntax_and_names():
    assert model.parse_input_values(["sr=16000", "w=1,2"])["w"].tolist() == [1.0, 2.0]
    for bad in (["sr"], ["sr=abc"], ["=3"]):
        with pytest.raises(NpuflowError) as e:
            model.parse_input_values(bad)
        assert e.value.code == "NPF_MODEL_BAD_PROBE_VALUE"
    with pytest.raises(NpuflowError) as e:
        model.load(_rate_model(), probe_values={"rate_hz": 16000})
    assert e.value.code == "NPF_MODEL_UNKNOWN_INPUT" and "x, sr" in e.value.hint
    with pytest.raises(NpuflowError) as e:
        model.load(_rate_model(), probe_values={"sr": [1, 2]})
    assert e.value.code == "NPF_MODEL_BAD_PROBE_VALUE"


def test_check_cli_takes_a_probe_value(tmp_path, cli):
    path = tmp_path / "rate.onnx"
    onnx.save(_rate_model(), path)
    bad = cli("check", path, "-t", "cpu-int8", "--probe-value", "sr=8000", "-o", tmp_path / "a")
    assert bad.returncode == 2 and "NPF_MODEL_SHAPE_PROBE_FAILED" in bad.stderr and "Traceback" not in bad.stderr
    good = cli("check", path, "-t", "cpu-int8", "--probe-value", "sr=16000", "-o", tmp_path / "b")
    assert good.returncode == 0, good.stderr
    frozen = cli("check", path, "-t", "cpu-int8", "--freeze-input", "sr=16000", "-o", tmp_path / "c")
    assert frozen.returncode == 0, frozen.stderr


def test_frozen_input_becomes_a_constant():
    m = model.load(model.freeze_inputs(_rate_model(), {"sr": 16000}))
    assert [i.name for i in m.graph.input] == ["x"] and model.tensor_shapes(m)["y"] == [1, 2, 16]
    with pytest.raises(NpuflowError) as e:
        model.freeze_inputs(_rate_model(), {"rate": 8000})
    assert e.value.code == "NPF_MODEL_UNKNOWN_INPUT"


def test_sequence_and_optional_inputs_are_probed():
    seq = helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, [1, 3])
    opt = helper.make_value_info("o", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(TensorProto.FLOAT, [1, 3])))
    nodes = [helper.make_node("SequenceInsert", ["s", "x"], ["s2"]),
             helper.make_node("ConcatFromSequence", ["s2"], ["c"], axis=0),
             helper.make_node("OptionalHasElement", ["o"], ["h"]),
             helper.make_node("Relu", ["c"], ["y"])]
    g = helper.make_graph(nodes, "seq", [seq, helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3]), opt],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("h", TensorProto.BOOL, None)])
    m = model.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=8))
    assert model.tensor_shapes(m)["y"] == [2, 3]  # one probe element in the sequence, then x


def _relu_conv(opset: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
                           helper.make_node("Relu", ["c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_newest_opset_is_what_onnx_and_onnxruntime_share():
    newest = model.newest_opset()
    assert 22 <= newest <= onnx.defs.onnx_opset_version()
    with pytest.raises(NpuflowError) as e:
        model.load(_relu_conv(newest + 1))
    assert e.value.code == "NPF_MODEL_OPSET_UNSUPPORTED" and f", {newest}]" in e.value.message


def test_opset_22_model_goes_through_every_stage(tmp_path):
    m = _relu_conv(22)
    assert model.default_opset(model.load(m)) == 22  # was NPF_MODEL_OPSET_UNSUPPORTED (range 11-21)
    rng = np.random.default_rng(1)
    calib = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(m, calib, "cpu-int8")
    session = npuflow.Session(npuflow.compile(q.model, "cpu-int8"))
    import onnxruntime as ort

    from npuflow import ort_kernels

    ref = ort.InferenceSession(ort_kernels.exact_weights(q.model).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    got, want = session.run(calib[0])["y"], ref.run(["y"], calib[0])[0]
    step = float(np.abs(want).max()) / 127
    assert np.abs(got - want).max() <= step + 1e-6
