"""``npuflow build`` reads the calibration layout ``npuflow quantize --calib`` reads (round 15b).

A CI user points ``cal_data_dir`` at the folder they calibrate ``npuflow quantize`` with: one
sub-folder per input, named as the input.  Before, ``build`` read only files directly in the
folder and said "calibration folder ... holds no sample files" of a folder holding ``input/``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from npuflow.safe_yaml import load as safe_load

REPO = Path(__file__).resolve().parents[2]


def _config(tmp_path: Path, cal: Path) -> dict:
    cfg = safe_load((REPO / "examples/mnist_dpu.yaml").read_text())
    cfg["model_parameters"].update(onnx_model=str(REPO / "examples/mnist_cnn.onnx"), working_dir=str(tmp_path / "out"))
    cfg["calibration_parameters"]["cal_data_dir"] = str(cal)
    return cfg


def _samples(folder: Path, count: int = 4) -> None:
    folder.mkdir(parents=True)
    for f in sorted((REPO / "examples/mnist/calibration").iterdir())[:count]:
        shutil.copy(f, folder / f.name)


def test_a_folder_with_one_sub_folder_per_input_builds_as_the_sub_folder(tmp_path):
    _samples(tmp_path / "calib" / "input")
    _samples(tmp_path / "flat")
    nested = npuflow.build(_config(tmp_path / "a", tmp_path / "calib"))
    flat = npuflow.build(_config(tmp_path / "b", tmp_path / "flat"))
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:3].reshape(-1, 1, 1, 28, 28).astype(np.uint8)
    for x in digits:
        np.testing.assert_array_equal(npuflow.Session(nested.compiled).run({"input": x})["logits"],
                                      npuflow.Session(flat.compiled).run({"input": x})["logits"])

def test_a_sub_folder_of_another_name_is_still_empty(tmp_path):
    _samples(tmp_path / "calib" / "images")
    with pytest.raises(NpuflowError) as err:
        npuflow.build(_config(tmp_path, tmp_path / "calib"))
    assert err.value.code == "NPF_BUILD_CALIB_EMPTY"


def test_summary_placement_names_the_run_on_cpu_layers(tmp_path):
    """The console's placement line was the checker's, of the float model: a Gemm named in
    ``run_on_cpu`` read as one of "14 of 15 nodes on DPU"."""
    from npuflow.cli.build_cmd import summary_lines

    _samples(tmp_path / "flat")
    cfg = _config(tmp_path, tmp_path / "flat")
    cfg["calibration_parameters"]["run_on_cpu"] = "/fc_layers/fc_layers.2/Gemm"
    line = next(s for s in summary_lines(npuflow.build(cfg)) if s.startswith("placement: "))
    assert line.endswith("kept in float on the CPU after it: 1 (/fc_layers/fc_layers.2/Gemm)"), line
