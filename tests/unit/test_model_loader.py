"""The ONNX loader refuses malformed and hostile models with coded errors (issue 21, item 1).

Each test builds one kind of damage the fuzzing run found (bad attribute types, duplicate names,
IR versions, dangling inputs, external data outside the model's folder, absurd shapes, invalid
UTF-8) and checks the code and that the message names the node/tensor.  Valid models, including
ones the full ONNX check would reject for a missing output shape, still load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import model
from npuflow.errors import NpuflowError

MNIST = Path(__file__).resolve().parents[2] / "examples" / "mnist_cnn.onnx"


def _conv(out_shape=(1, 4, 8, 8), **attrs) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv0", pads=[1, 1, 1, 1], **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _refused(m, code: str, *names: str, **kw) -> NpuflowError:
    with pytest.raises(NpuflowError) as err:
        model.load(m, **kw)
    assert err.value.code == code, err.value
    for name in names:
        assert name in err.value.message, err.value.message
    return err.value


def test_valid_models_load_including_an_output_without_shape():
    model.load(str(MNIST))
    assert model.tensor_shapes(model.load(_conv(out_shape=None)))["y"] == [1, 4, 8, 8]


def test_string_group_on_conv_is_refused_naming_node_and_attribute():
    m = _conv()
    m.graph.node[0].attribute.append(helper.make_attribute("group", "abc"))
    _refused(m, "NPF_MODEL_INVALID", "conv0", "group")


def test_duplicate_node_output_and_initializer_name_the_tensor_and_writers():
    m = _conv()
    m.graph.node.append(helper.make_node("Relu", ["x"], ["y"], name="relu1"))
    _refused(m, "NPF_MODEL_DUPLICATE_NAME", "'y'", "conv0", "relu1")
    m = _conv()
    m.graph.initializer.append(m.graph.initializer[0])
    _refused(m, "NPF_MODEL_DUPLICATE_NAME", "'w'", "initializer")


def test_an_output_listed_twice_is_refused_naming_it():
    """ONNX Runtime returns it twice; npuflow returns outputs by name, so one would vanish."""
    m = _conv()
    m.graph.output.append(m.graph.output[0])
    _refused(m, "NPF_MODEL_INVALID", "'y'", "listed twice")


@pytest.mark.parametrize("ir", [0, -1, 2, 99])
def test_ir_version_outside_the_supported_range(ir):
    m = _conv()
    m.ir_version = ir
    _refused(m, "NPF_MODEL_IR_VERSION", str(ir))


def test_dangling_input_and_unmade_output_are_refused():
    m = _conv()
    m.graph.node[0].input[0] = "nowhere"
    _refused(m, "NPF_MODEL_INVALID", "nowhere")
    m = _conv()
    m.graph.output[0].name = "missing"
    _refused(m, "NPF_MODEL_INVALID", "missing")


def test_invalid_utf8_name_is_refused(tmp_path):
    data = _conv().SerializeToString().replace(b"conv0", b"conv\xff")
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    _refused(str(path), "NPF_MODEL_INVALID", "UTF-8")


def _external(tmp_path: Path, location: str, **entries: str) -> Path:
    """The conv model with its weights as external data at ``location`` (written in ``tmp_path``)."""
    m = _conv()
    w = m.graph.initializer[0]
    raw = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": str(len(raw)), **entries}.items():
        w.external_data.add(key=k, value=v)
    folder = tmp_path / "models"
    folder.mkdir(exist_ok=True)
    (folder / "weights.bin").write_bytes(raw)
    (tmp_path / "outside.bin").write_bytes(raw)
    path = folder / "m.onnx"
    path.write_bytes(m.SerializeToString())
    return path


def test_external_data_inside_the_folder_loads(tmp_path):
    m = model.load(str(_external(tmp_path, "weights.bin")))
    assert numpy_helper.to_array(m.graph.initializer[0]).sum() == 4 * 3 * 3 * 3


@pytest.mark.parametrize("location", ["/etc/passwd", "../outside.bin", "sub/../../outside.bin", "missing.bin",
                                      "link.bin", "C:\\\\x.bin", ""])
def test_external_data_outside_the_folder_is_refused_before_any_read(tmp_path, monkeypatch, location):
    path = _external(tmp_path, location)
    (path.parent / "link.bin").symlink_to(tmp_path / "outside.bin")

    def never(*args, **kwargs):
        raise AssertionError("external data was read")

    monkeypatch.setattr(onnx, "load_external_data_for_model", never)
    _refused(str(path), "NPF_MODEL_EXTERNAL_DATA", "'w'")


@pytest.mark.parametrize("entries", [{"offset": "-4"}, {"length": str(1 << 40)}, {"offset": "abc"}])
def test_external_data_range_outside_the_file_is_refused(tmp_path, entries):
    _refused(str(_external(tmp_path, "weights.bin", **entries)), "NPF_MODEL_EXTERNAL_DATA", "weights.bin")


def test_absurd_input_shape_is_refused_before_any_allocation(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the shape probe ran")

    monkeypatch.setattr(model, "fill_shapes_by_running", never)
    err = _refused(str(MNIST), "NPF_MODEL_TENSOR_TOO_LARGE", "'input'", input_shapes={"input": [1, 1, 100000, 100000]})
    assert "NPUFLOW_MAX_TENSOR_ELEMENTS" in err.hint


def test_intermediate_size_limit_is_applied_from_inferred_shapes(monkeypatch):
    """A small input blown up inside the model (Tile) is caught from shape inference, before the probe."""
    reps = numpy_helper.from_array(np.array([1, 1, 4096, 4096], np.int64), "reps")
    g = helper.make_graph([helper.make_node("Tile", ["x", "reps"], ["y"], name="tile")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [reps])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    monkeypatch.setattr(model, "fill_shapes_by_running", lambda *a: pytest.fail("the shape probe ran"))
    _refused(m, "NPF_MODEL_TENSOR_TOO_LARGE", "'y'")


def test_size_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("NPUFLOW_MAX_TENSOR_ELEMENTS", "1000")
    _refused(str(MNIST), "NPF_MODEL_TENSOR_TOO_LARGE", "1000")
    monkeypatch.setenv("NPUFLOW_MAX_TENSOR_ELEMENTS", "lots")
    _refused(str(MNIST), "NPF_MODEL_BAD_LIMIT", "lots")
    monkeypatch.setenv("NPUFLOW_MAX_TENSOR_ELEMENTS", str(1 << 40))
    model.load(str(MNIST), {"input": [1, 1, 28, 28]})


def test_check_and_cli_report_the_code(cli, tmp_path):
    m = _conv()
    m.graph.node[0].attribute.append(helper.make_attribute("group", "abc"))
    path = tmp_path / "bad.onnx"
    path.write_bytes(m.SerializeToString())
    with pytest.raises(NpuflowError):
        npuflow.check(str(path), "DPUCZDX8G_ISA1_B4096")
    r = cli("check", path, "--target", "DPUCZDX8G_ISA1_B4096")
    assert r.returncode != 0 and "ERROR [NPF_MODEL_INVALID]" in r.stdout + r.stderr and "Traceback" not in r.stderr
    shutil.rmtree(tmp_path, ignore_errors=True)
