"""``npuflow build`` with an integer featuremap saved by ``numpy.tofile`` (new-user round 16: a
diffusion U-Net's int64 timestep ``t``, hb_mapper's raw-file convention).  The raw file of 8 bytes
was refused as "input 't' of shape 1 needs 4 (float32)": raw featuremaps were float32 only,
although the model takes int64 and the build feeds that input in the model's dtype."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from npuflow import Session
from npuflow.build.calibration import CalibrationSet
from npuflow.cli.app import main
from npuflow.errors import NpuflowError
from npuflow.passes.preprocess import InputPreprocess
from tests.unit.test_build_calibration import _scalar_input_model


def test_raw_int64_featuremap_files_are_read_in_the_model_dtype(tmp_path):
    pre = InputPreprocess("t", (1,), "featuremap", "NCHW", "featuremap", "NCHW")
    for i, step in enumerate((0, 750, 2**40)):
        np.array([step], np.int64).tofile(tmp_path / f"s{i}.bin")
    calib = CalibrationSet([(pre, tmp_path)], images=False, dtypes={"t": np.dtype(np.int64)})
    got = [s["t"] for s in calib]
    assert [a.dtype for a in got] == [np.int64] * 3 and [int(a[0]) for a in got] == [0, 750, 2**40]


def test_a_raw_file_of_neither_size_names_the_model_dtype_too(tmp_path):
    pre = InputPreprocess("t", (1,), "featuremap", "NCHW", "featuremap", "NCHW")
    (tmp_path / "s0.bin").write_bytes(b"\0" * 6)
    with pytest.raises(NpuflowError) as exc:
        CalibrationSet([(pre, tmp_path)], images=False, dtypes={"t": np.dtype(np.int64)})
    assert exc.value.code == "NPF_BUILD_CALIB_FILE_SIZE" and "8 (int64, the model's own dtype)" in exc.value.message


def test_build_with_a_raw_int64_input(tmp_path, capsys):
    _scalar_input_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(0)
    for folder in ("xs", "ks"):
        (tmp_path / folder).mkdir()
    for i in range(4):
        rng.normal(size=(1, 3, 4, 4)).astype(np.float32).tofile(tmp_path / "xs" / f"{i}.bin")
        np.array(2, np.int64).tofile(tmp_path / "ks" / f"{i}.bin")
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
    np.testing.assert_allclose(got, 2 * 0.75 * x.mean(axis=1, keepdims=True).repeat(4, 1), atol=0.1)
