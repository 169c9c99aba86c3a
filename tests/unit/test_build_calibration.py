"""Calibration folders: raw uint8/float32 files and images, converted to the runtime format."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from npuflow.build.calibration import CalibrationSet
from npuflow.passes.preprocess import InputPreprocess


def test_raw_files_uint8_and_float32_are_both_read(tmp_path):
    pre = InputPreprocess("x", (1, 3, 4, 6), "rgb", "NCHW", "rgb", "NHWC")
    sample = np.arange(72, dtype=np.uint8).reshape(1, 3, 4, 6)
    sample.tofile(tmp_path / "a.rgb")
    sample.astype(np.float32).tofile(tmp_path / "b.rgb")
    got = list(CalibrationSet([(pre, tmp_path)], images=False))
    assert len(got) == 2
    for feed in got:
        assert feed["x"].dtype == np.uint8 and feed["x"].shape == (1, 4, 6, 3)
        np.testing.assert_array_equal(feed["x"], sample.transpose(0, 2, 3, 1))


def test_images_are_resized_to_the_input_and_ordered_as_the_train_type(tmp_path):
    photo = skdata.astronaut()  # RGB, 512x512
    Image.fromarray(photo).save(tmp_path / "astronaut.png")
    pre = InputPreprocess("x", (1, 3, 32, 48), "bgr", "NCHW", "bgr", "NCHW")
    (feed,) = list(CalibrationSet([(pre, tmp_path)], images=True))
    x = feed["x"]
    assert x.dtype == np.uint8 and x.shape == (1, 3, 32, 48)
    expected = np.asarray(Image.fromarray(photo).resize((48, 32), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), expected[..., ::-1])


def test_images_to_nv12_runtime_buffers(tmp_path):
    Image.fromarray(skdata.astronaut()).save(tmp_path / "a.jpg")
    pre = InputPreprocess("x", (1, 16, 16, 3), "rgb", "NHWC", "nv12", "NHWC")
    (feed,) = list(CalibrationSet([(pre, tmp_path)], images=True))
    assert feed["x"].dtype == np.uint8 and feed["x"].shape == (1, 24, 16)


def test_npy_files_are_read_as_quantize_reads_them(tmp_path):
    """A folder of numpy.save files (what ``npuflow quantize --calib`` reads) serves ``build`` too:
    their header was read as sample bytes (NPF_BUILD_CALIB_FILE_SIZE: 6272 bytes, 6144 expected)."""
    pre = InputPreprocess("x", (1, 16, 96), "featuremap", "NCHW", "featuremap", "NCHW")
    rng = np.random.default_rng(0)
    samples = [rng.normal(0, 1, (1, 16, 96)).astype(np.float32) for _ in range(2)]
    np.save(tmp_path / "a.npy", samples[0])
    np.save(tmp_path / "b.npy", samples[1][0])  # without the batch dimension of 1
    got = list(CalibrationSet([(pre, tmp_path)], images=False))
    for feed, want in zip(got, samples, strict=True):
        np.testing.assert_array_equal(feed["x"], want)


def test_an_npy_file_of_the_wrong_shape_names_itself(tmp_path):
    import pytest

    from npuflow.errors import NpuflowError

    pre = InputPreprocess("x", (1, 16, 96), "featuremap", "NCHW", "featuremap", "NCHW")
    np.save(tmp_path / "a.npy", np.zeros((1, 16, 95), np.float32))
    with pytest.raises(NpuflowError) as exc:
        CalibrationSet([(pre, tmp_path)], images=False)
    assert exc.value.code == "NPF_BUILD_CALIB_NPY" and "a.npy" in exc.value.message and "1x16x95" in exc.value.message


def _scalar_input_model(path) -> None:
    """y = Conv(x) * Cast(k): x 1x3x4x4 float, k an int64 scalar (as silero-vad's sr)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.full((4, 3, 1, 1), 0.25, np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], name="conv"),
             helper.make_node("Cast", ["k"], ["kf"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Mul", ["conv", "kf"], ["y"], name="mul")]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4]),
                       helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


@pytest.mark.parametrize("fmt", ["npy", "bin"])
def test_a_scalar_integer_input_builds_with_per_input_folders(tmp_path, capsys, fmt):
    """silero-vad's third input ``sr`` is an int64 scalar.  ``npuflow build`` took the scalar for a
    dynamic shape (NPF_BUILD_MISSING_KEYS 'input_shape'; with 'None' given: an IndexError traceback)
    and fed every featuremap as float32 (NPF_QUANT_CALIB_MISMATCH 'sr has dtype float32, the model
    wants int64').  Now a scalar needs no shape and an integer featuremap is fed as the model's dtype,
    from ``.npy`` files and from raw ``numpy.tofile`` ones alike (new-user round 16: a diffusion U-Net's 8-byte
    int64 timestep file was refused as needing 4 bytes of float32)."""
    import yaml

    from npuflow import Session
    from npuflow.cli.app import main

    _scalar_input_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for folder in ("xs", "ks"):
        (tmp_path / folder).mkdir()
    for i in range(4):
        for folder, value in (("xs", rng.normal(size=(1, 3, 4, 4)).astype(np.float32)), ("ks", np.array(2, np.int64))):
            if fmt == "npy":
                np.save(tmp_path / folder / f"{i}.npy", value)
            else:
                value.tofile(tmp_path / folder / f"{i}.bin")
    conf = {
        "model_parameters": {"onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096",
                             "output_model_file_prefix": "two", "working_dir": "out"},
        "input_parameters": {"input_name": "x; k", "input_type_train": "featuremap; featuremap",
                             "input_type_rt": "featuremap; featuremap", "norm_type": "no_preprocess; no_preprocess"},
        "calibration_parameters": {"cal_data_dir": "xs; ks", "calibration_type": "max"},
        "compiler_parameters": {"optimize_level": "O3"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0, capsys.readouterr().err
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    got = Session(tmp_path / "out" / "two.npuf").run({"x": x, "k": np.array(2, np.int64)})["y"]
    assert got.shape == (1, 4, 4, 4)
    np.testing.assert_allclose(got, 2 * 0.75 * x.mean(axis=1, keepdims=True).repeat(4, 1), atol=0.1)


def test_freeze_input_turns_an_input_into_a_constant(tmp_path, capsys):
    """``model_parameters.freeze_input`` (check/quantize's --freeze-input): the If-based silero-vad
    file was refused by build (NPF_QUANT_CONTROL_FLOW_ONLY, the hint naming a CLI option build does
    not have); 'sr=16000' now inlines its branch.  Here k=2 is frozen: one input is left."""
    import yaml

    from npuflow import Session
    from npuflow.cli.app import main

    _scalar_input_model(tmp_path / "m.onnx")
    (tmp_path / "xs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.save(tmp_path / "xs" / f"{i}.npy", rng.normal(size=(1, 3, 4, 4)).astype(np.float32))
    conf = {
        "model_parameters": {"onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096", "freeze_input": "k=2",
                             "output_model_file_prefix": "one", "working_dir": "out"},
        "input_parameters": {"input_type_train": "featuremap", "input_type_rt": "featuremap",
                             "norm_type": "no_preprocess"},
        "calibration_parameters": {"cal_data_dir": "xs", "calibration_type": "max"},
        "compiler_parameters": {"optimize_level": "O3"},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0, capsys.readouterr().err
    session = Session(tmp_path / "out" / "one.npuf")
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    got = session.run({"x": x})["y"]
    np.testing.assert_allclose(got, 2 * 0.75 * x.mean(axis=1, keepdims=True).repeat(4, 1), atol=0.1)
    conf["model_parameters"]["freeze_input"] = "k"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 2
    assert "NPF_MODEL_BAD_PROBE_VALUE" in capsys.readouterr().err
