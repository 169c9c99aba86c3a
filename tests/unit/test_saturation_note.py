"""``npuflow quantize`` says when plain ONNX Runtime on this CPU would compute the quantized model's
int8 weight products in saturating 16-bit lanes (x86-64 without VNNI): the newuser round 6 MNIST
CNN on cpu-int8 read 87.2 % top-1 in npuflow and 73.8 % in a default ONNX Runtime session, and
nothing said so.  Whether a CPU saturates is probed per process (``ort_kernels.weight_form``), so
the tests fix the probe's verdict."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import ort_kernels
from npuflow.cli.app import main


def _cnn():
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], "relu")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calib():
    rng = np.random.default_rng(1)
    return [rng.normal(0, 1, (1, 8, 6, 6)).astype(np.float32) for _ in range(4)]


@pytest.mark.parametrize("form, bits, flagged", [("u8", 8, True), ("u8", 7, False), ("s8", 8, False)])
def test_saturating_weights_follow_the_cpu_and_the_weight_width(monkeypatch, form, bits, flagged):
    q = npuflow.quantize(_cnn(), _calib(), "cpu-int8", config={"weight": {"bit_width": bits}}, warn=False)
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: form)
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: False)  # the lane test alone decides
    assert bool(ort_kernels.saturating_weights(q.model)) is flagged


def test_quantize_prints_the_note_for_cpu_int8(monkeypatch, tmp_path, capsys):
    import onnx

    onnx.save(_cnn(), tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i, x in enumerate(_calib()):
        np.save(tmp_path / "calib" / f"{i}.npy", x)
    monkeypatch.setattr(ort_kernels, "weight_form", lambda: "u8")
    monkeypatch.setattr(ort_kernels, "pairing_confirmed", lambda: False)
    rc = main(["quantize", str(tmp_path / "m.onnx"), "-t", "cpu-int8", "--calib", str(tmp_path / "calib"),
               "-o", str(tmp_path / "out"), "--no-nodes"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "saturating 16-bit lanes" in err and "bit_width: 7" in err
