"""Dynamic shapes end to end (issue 20 item 1), on small synthetic models.

* ``quantize`` needs no ``--input-shape``: calibration samples may differ in the dimensions the
  source leaves dynamic, and the saved ``quantized_model.onnx`` keeps them (ONNX Runtime runs it at
  any width); ``--input-shape`` or ``calib_dynamic_dims: false`` freeze it;
* every unresolved input is named in one ``NPF_MODEL_DYNAMIC_SHAPE``;
* ``compile`` with a repeated ``--input-shape`` writes one ``.npuf`` with a program per shape: the
  runtime runs the smallest that fits, on the input zero-padded at the end, and equals ONNX Runtime
  on that padded input; a larger input is ``NPF_RUNTIME_SHAPE_TOO_LARGE``; ``info`` lists the shapes;
  a single-shape file is written as before (format 1.0).
"""

from __future__ import annotations

import struct

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow import model as model_io
from npuflow.cli.app import main
from npuflow.compiler import artifact
from npuflow.compiler.compiled import CompiledModel
from npuflow.errors import NpuflowError

from .quant_nets import samples, two_conv_net

DPU = "DPUCZDX8G_ISA1_B4096"
WIDTHS = [8, 16, 32]


def _dynamic_width_net() -> onnx.ModelProto:
    """two_conv_net (3x3 convolutions, ReLU) with a dynamic batch and width, as PP-OCR rec is exported."""
    m = two_conv_net()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for k, name in ((0, "N"), (3, "W")):
        dims[k].Clear()
        dims[k].dim_param = name
    m.graph.output[0].type.tensor_type.ClearField("shape")
    return m


def _calib_folder(tmp_path, widths) -> str:
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, w in enumerate(widths):
        np.save(folder / f"{i:03d}.npy", rng.uniform(-1, 1, (1, 3, 6, w)).astype(np.float32))
    return str(folder)


def _input_dims(path) -> list:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_quantize_without_input_shape_keeps_the_dynamic_dims(tmp_path):
    src = tmp_path / "dyn.onnx"
    onnx.save(_dynamic_width_net(), src)
    calib = _calib_folder(tmp_path, [6, 10, 14, 6])
    assert main(["quantize", str(src), "-t", "cpu-int8", "--calib", calib, "-o", str(tmp_path / "q"), "--no-nodes"]) == 0
    saved = tmp_path / "q" / "quantized_model.onnx"
    assert _input_dims(saved) == ["N", 3, 6, "W"]
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 6, 519)).astype(np.float32)
    y = ort.InferenceSession(str(saved)).run(None, {"x": x})[0]
    ref = ort.InferenceSession(str(src)).run(None, {"x": x})[0]
    assert y.shape == ref.shape == (2, 2, 6, 519)
    assert float(np.dot(y.ravel(), ref.ravel()) / np.linalg.norm(y) / np.linalg.norm(ref)) > 0.99
    # asked for: --input-shape freezes the saved model (samples of other widths still calibrate it)
    frozen = tmp_path / "frozen"
    assert main(["quantize", str(src), "-t", "cpu-int8", "--calib", calib, "-o", str(frozen), "--no-nodes",
                 "--input-shape", "x=1x3x6x10", "--config", _config(tmp_path, "calib_dynamic_dims: true")]) == 0
    assert _input_dims(frozen / "quantized_model.onnx") == [1, 3, 6, 10]


def test_a_repeated_dim_name_is_not_an_equality():
    """paddle2onnx writes ``?`` for height and width; kept, it would tell shape inference H == W."""
    m = two_conv_net()
    for k in (2, 3):
        m.graph.input[0].type.tensor_type.shape.dim[k].dim_param = "?"
    m.graph.output[0].type.tensor_type.ClearField("shape")
    q = npuflow.quantize(m, samples((1, 3, 6, 6), 1) + samples((1, 3, 4, 12), 1), "cpu-int8")
    dims = [d.dim_param for d in q.dynamic_model.graph.input[0].type.tensor_type.shape.dim[2:]]
    assert dims[0] != dims[1] and "?" not in dims
    y = ort.InferenceSession(q.dynamic_model.SerializeToString()).run(None, {"x": samples((1, 3, 5, 9), 1)[0]})[0]
    assert y.shape == (1, 2, 5, 9)


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "quant.yaml"
    path.write_text(text + "\n")
    return str(path)


def test_calib_dynamic_dims_false_freezes_at_the_first_sample():
    data = samples((1, 3, 6, 6), 2) + samples((1, 3, 6, 10), 1)
    q = npuflow.quantize(_dynamic_width_net(), data[:2], "cpu-int8", config={"calib_dynamic_dims": False})
    assert not q.saves_dynamic and model_io.tensor_shapes(q.model)["x"] == [1, 3, 6, 6]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(_dynamic_width_net(), data, "cpu-int8", config={"calib_dynamic_dims": False})
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH" and "1x3x6x10" in exc.value.message


def test_a_one_shot_generator_keeps_its_first_sample():
    """The first sample is read before the model is loaded (its shape resolves the dynamic dims);
    a generator must still calibrate on it: same parameters as the list."""
    data = samples((1, 3, 6, 6), 1) + samples((1, 3, 6, 12), 3)
    config = {"report_samples": 0, "min_output_cosine": 0.0, "include_bias_corr": False,
              "activation": {"method": "minmax"}}
    listed = npuflow.quantize(_dynamic_width_net(), data, "cpu-int8", config=config)
    streamed = npuflow.quantize(_dynamic_width_net(), (s for s in data), "cpu-int8", config=config)
    assert listed.saves_dynamic and streamed.saves_dynamic
    assert {k: v.scale.tolist() for k, v in listed.quant_params.items()} == \
        {k: v.scale.tolist() for k, v in streamed.quant_params.items()}


def _two_dynamic_inputs() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, "L"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])
    out = helper.make_tensor_value_info("s", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Add", ["x", "y"], ["s0"]), helper.make_node("ReduceSum", ["s0"], ["s"])]
    graph = helper.make_graph(nodes, "two", [x, y, z], [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_every_unresolved_input_is_reported_at_once(tmp_path, capsys):
    with pytest.raises(NpuflowError) as exc:
        model_io.load(_two_dynamic_inputs())
    e = exc.value
    assert e.code == "NPF_MODEL_DYNAMIC_SHAPE"
    assert "2 input(s)" in e.message and "'z'" not in e.message
    assert "'x' dimension(s) #0 (N), #2 (H), #3 (W)" in e.message and "'y' dimension(s) #3 (L)" in e.message
    assert "--input-shape x 1x3x64x64" in e.hint and "--input-shape y 1x3x8x64" in e.hint
    path = tmp_path / "two.onnx"
    onnx.save(_two_dynamic_inputs(), path)
    for argv in (["check", str(path), "-t", "cpu-int8"], ["perf", str(path), "-t", "cpu-int8"],
                 ["compile", str(path), "-t", "cpu-int8", "-o", str(tmp_path / "m.npuf")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("NPF_MODEL_DYNAMIC_SHAPE") == 1 and "'x'" in err and "'y'" in err, (argv, err)
    # one input resolved: the error names only the other
    with pytest.raises(NpuflowError) as exc:
        model_io.load(_two_dynamic_inputs(), {"y": [1, 3, 8, 8]})
    assert "1 input(s)" in exc.value.message and "'y'" not in exc.value.message


def test_input_shape_sets_rule():
    assert model_io.input_shape_sets([]) == []
    assert model_io.input_shape_sets([("x", [1, 2]), ("y", [3])]) == [{"x": [1, 2], "y": [3]}]
    assert model_io.input_shape_sets([("x", [1]), ("y", [5]), ("x", [2]), ("x", [3])]) == \
        [{"x": [1], "y": [5]}, {"x": [2], "y": [5]}, {"x": [3], "y": [5]}]
    with pytest.raises(NpuflowError) as exc:
        model_io.input_shape_sets([("x", [1]), ("x", [2]), ("x", [3]), ("y", [1]), ("y", [2])])
    assert exc.value.code == "NPF_MODEL_BAD_INPUT_SHAPE" and "x 3x, y 2x" in exc.value.message


@pytest.fixture(scope="module")
def multi_shape(tmp_path_factory):
    """A power-of-two quantized dynamic-width model (saved dynamic) compiled at widths 8/16/32."""
    tmp = tmp_path_factory.mktemp("multi")
    q = npuflow.quantize(_dynamic_width_net(), samples((1, 3, 6, 6), 2) + samples((1, 3, 6, 10), 2), DPU)
    q.save(tmp / "q")
    qpath = tmp / "q" / "quantized_model.onnx"
    argv = ["compile", str(qpath), "-t", DPU, "-o", str(tmp / "m.npuf")]
    for w in WIDTHS:
        argv += ["--input-shape", f"x=1x3x6x{w}"]
    assert main(argv) == 0
    return qpath, tmp / "m.npuf"


def test_multi_shape_npuf_runs_the_smallest_program_that_fits(multi_shape):
    qpath, npuf = multi_shape
    sess = npuflow.Session(npuf, target=DPU)
    assert sess.input_shapes == [{"x": [1, 3, 6, w]} for w in WIDTHS]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(qpath), opts)
    rng = np.random.default_rng(3)
    for width, program in ((5, 0), (8, 0), (9, 1), (16, 1), (17, 2), (32, 2)):
        assert sess.select({"x": (1, 3, 6, width)}) == program
        x = rng.uniform(-1, 1, (1, 3, 6, width)).astype(np.float32)
        y = sess.run({"x": x})["y"]
        padded = np.pad(x, [(0, 0), (0, 0), (0, 0), (0, WIDTHS[program] - width)])
        assert y.shape == (1, 2, 6, WIDTHS[program])
        np.testing.assert_array_equal(y, ref.run(None, {"x": padded})[0])
    with pytest.raises(NpuflowError) as exc:
        sess.run({"x": np.zeros((1, 3, 6, 33), np.float32)})
    assert exc.value.code == "NPF_RUNTIME_SHAPE_TOO_LARGE"
    assert "x=1x3x6x33" in exc.value.message and "x=1x3x6x8; x=1x3x6x16; x=1x3x6x32" in exc.value.hint
    with pytest.raises(NpuflowError) as exc:  # a dimension every program shares is not padded
        sess.run({"x": np.zeros((1, 3, 5, 8), np.float32)})
    assert exc.value.code == "NPF_RUNTIME_INPUT_SHAPE" and "1x3x6x?" in exc.value.message


def test_multi_shape_npuf_stores_weights_once_and_info_lists_the_shapes(multi_shape, capsys):
    qpath, npuf = multi_shape
    compiled = CompiledModel.load(npuf)
    weights = [n for n in compiled.blob_names() if not n.endswith(".onnx")]
    assert not any(n.startswith("v") and n.endswith((".w", ".weight")) for n in weights), weights
    assert struct.unpack_from("<8sHH", npuf.read_bytes())[1:] == (1, 1)
    assert main(["info", str(npuf)]) == 0
    assert "compiled shapes (3 programs" in capsys.readouterr().out
    assert main(["info", str(npuf), "--json"]) == 0
    assert '"input_shapes"' in capsys.readouterr().out


def test_the_library_perf_of_a_multi_shape_npuf_says_which_program_it_costs(multi_shape):
    from npuflow.perf import perf

    _, npuf = multi_shape
    report = perf(npuf)
    assert any("3 compiled shape sets; this is the first" in n for n in report.notes)


def test_a_single_shape_npuf_is_written_as_before(multi_shape, tmp_path):
    qpath, _ = multi_shape
    one = npuflow.compile(str(qpath), DPU, input_shapes={"x": [1, 3, 6, 16]})
    listed = npuflow.compile(str(qpath), DPU, input_shapes=[{"x": [1, 3, 6, 16]}])
    one.save(tmp_path / "a.npuf")
    listed.save(tmp_path / "b.npuf")
    data = (tmp_path / "a.npuf").read_bytes()
    assert data == (tmp_path / "b.npuf").read_bytes()
    assert struct.unpack_from("<8sHH", data)[1:] == (1, 0) and b"variants" not in data
    assert npuflow.Session(tmp_path / "a.npuf").input_shapes == [{"x": [1, 3, 6, 16]}]


def test_a_variant_repeating_a_shape_is_corrupt(multi_shape, tmp_path):
    _, npuf = multi_shape
    compiled = CompiledModel.load(npuf)
    manifest = {k: v for k, v in compiled.manifest.items() if k != "blobs"}
    manifest["variants"] = [manifest["variants"][0], manifest["variants"][0]]
    artifact.write(tmp_path / "bad.npuf", manifest, {n: compiled.blob(n) for n in compiled.blob_names()})
    with pytest.raises(NpuflowError) as exc:
        CompiledModel.load(tmp_path / "bad.npuf")
    assert exc.value.code == "NPF_COMPILE_CORRUPT" and "variants[1].inputs" in exc.value.message
