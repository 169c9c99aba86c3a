"""Model loading: normalisation and the coded errors of bad files and shapes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from npuflow import model
from npuflow.errors import NpuflowError


def _conv_model(opset: int = 11, dynamic: bool = False, with_constant_weight: bool = True) -> onnx.ModelProto:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    nodes = []
    inits = []
    if with_constant_weight:
        nodes.append(helper.make_node("Constant", [], ["w"], value=onnx.numpy_helper.from_array(w)))
    else:
        inits.append(onnx.numpy_helper.from_array(w, "w"))
    nodes.append(helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]))
    dims = ["N", 3, "H", "W"] if dynamic else [1, 3, 8, 8]
    g = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=7)


def test_constants_lifted_opset_upgraded_shapes_inferred():
    m = model.load(_conv_model(opset=11))
    assert model.default_opset(m) == model.WORKING_OPSET
    assert [n.op_type for n in m.graph.node] == ["Conv"]
    assert {t.name for t in m.graph.initializer} == {"w"}
    assert model.tensor_shapes(m)["y"] == [1, 4, 8, 8]


def test_input_shape_override_and_dynamic_batch_default():
    m = model.load(_conv_model(dynamic=True), {"x": [2, 3, 16, 12]})
    assert model.tensor_shapes(m)["y"] == [2, 4, 16, 12]


def test_dynamic_shape_needs_input_shape():
    with pytest.raises(NpuflowError) as e:
        model.load(_conv_model(dynamic=True))
    assert e.value.code == "NPF_MODEL_DYNAMIC_SHAPE" and "--input-shape x" in e.value.hint


def test_unknown_input_and_rank_mismatch():
    with pytest.raises(NpuflowError) as e:
        model.load(_conv_model(), {"images": [1, 3, 8, 8]})
    assert e.value.code == "NPF_MODEL_UNKNOWN_INPUT" and "'x'" not in e.value.message
    with pytest.raises(NpuflowError) as e:
        model.load(_conv_model(), {"x": [1, 3, 8]})
    assert e.value.code == "NPF_MODEL_BAD_INPUT_SHAPE"


@pytest.mark.parametrize("text", ["1x3xAx4", "", "1x0x2", "-1x3"])
def test_bad_shape_syntax(text):
    with pytest.raises(NpuflowError) as e:
        model.parse_shape(text)
    assert e.value.code == "NPF_MODEL_BAD_INPUT_SHAPE"


def test_parse_shape_accepts_x_and_commas():
    assert model.parse_shape("1x3x224x224") == [1, 3, 224, 224]
    assert model.parse_shape("1,3,8,8") == [1, 3, 8, 8]


def test_file_errors(tmp_path):
    with pytest.raises(NpuflowError) as e:
        model.load(tmp_path / "missing.onnx")
    assert e.value.code == "NPF_MODEL_NOT_FOUND"
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a protobuf at all, just text\n" * 10)
    with pytest.raises(NpuflowError) as e:
        model.load(text)
    assert e.value.code == "NPF_MODEL_NOT_ONNX"
    good = _conv_model(with_constant_weight=False).SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(NpuflowError) as e:
        model.load(cut)
    assert e.value.code == "NPF_MODEL_CORRUPT"


def test_unsupported_opset():
    with pytest.raises(NpuflowError) as e:
        model.load(_conv_model(opset=6))  # older than ONNX Runtime's oldest (7)
    assert e.value.code == "NPF_MODEL_OPSET_UNSUPPORTED" and "6" in e.value.message


def test_opset_9_model_is_upgraded():
    """Opsets 7-10 were refused until 2026-12-05 (newuser round 6); onnx's converter upgrades them."""
    assert model.default_opset(model.load(_conv_model(opset=9))) == model.WORKING_OPSET


def test_invalid_model_is_reported():
    m = _conv_model(with_constant_weight=False)
    m.graph.node[0].input[1] = "no_such_weight"
    with pytest.raises(NpuflowError) as e:
        model.load(m)
    assert e.value.code == "NPF_MODEL_INVALID"


def test_save_is_atomic_and_reports_unwritable(tmp_path):
    out = model.save(_conv_model(with_constant_weight=False), tmp_path / "sub" / "m.onnx")
    assert onnx.load(out).graph.node[0].op_type == "Conv"
    assert not list((tmp_path / "sub").glob("*.tmp"))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NpuflowError) as e:
        model.save(_conv_model(), blocker / "m.onnx")
    assert e.value.code == "NPF_IO_WRITE_FAILED"
