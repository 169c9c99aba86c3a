"""The accuracy check judges the user's evaluation samples (``quantize(eval_data=...)``, ``--eval-data``,
build's ``eval_data_dir``), none of which sets a range, and reports the calibration samples' figures beside them.

New-user round 24's CycleGAN generator (ReflectionPad, InstanceNorm, ConvTranspose, residual blocks, tanh;
random weights) on photo crops read 0.98-0.99 on its 8 calibration crops, every one above
``min_output_cosine``, and 0.89-0.90 on the flattest of 24 other crops, with no warning.  Those crops read
as low when calibrated on (``benchmarks/results/honest_s34.md``): 8 samples did not contain inputs like them,
so no figure on the calibration samples can see it; evaluation samples can.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import npuflow
from npuflow.cli.app import main

nn = torch.nn

DPU = "DPUCZDX8G_ISA1_B4096"


class _Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.b = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c), nn.ReLU(),
                               nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

    def forward(self, x):
        return x + self.b(x)


def cyclegan_like(c: int = 16) -> nn.Module:
    """Round 24's CycleGAN generator, random weights (seeded)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ReflectionPad2d(3), nn.Conv2d(3, c, 7), nn.InstanceNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, 2, 1), nn.InstanceNorm2d(2 * c), nn.ReLU(), _Res(2 * c), _Res(2 * c),
        nn.ConvTranspose2d(2 * c, c, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(c), nn.ReLU(),
        nn.ReflectionPad2d(3), nn.Conv2d(c, 3, 7), nn.Tanh()).eval()


def crops(n: int, seed: int) -> np.ndarray:
    """``n`` 64x64 crops of scikit-image's photos, normalised as round 24's were."""
    import skimage.data as sd

    imgs = [sd.astronaut(), sd.coffee(), sd.chelsea(), sd.rocket(), sd.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        im = imgs[k % len(imgs)]
        y, x = rng.integers(0, im.shape[0] - 64), rng.integers(0, im.shape[1] - 64)
        out.append(im[y:y + 64, x:x + 64].transpose(2, 0, 1))
    return ((np.stack(out).astype(np.float32) / 255.0 - 0.45) / 0.25).astype(np.float32)


@pytest.fixture(scope="module")
def cyclegan(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cyclegan")
    path = folder / "model.onnx"
    torch.onnx.export(cyclegan_like(), torch.zeros(1, 3, 64, 64), str(path), input_names=["x"], output_names=["y"],
                      opset_version=11, dynamo=False)
    px = crops(36, seed=0)
    sets = {"calib": px[:8], "eval": px[12:36]}  # round 24: 8 calibration, 4 test, 24 held-out crops
    for name, arrays in sets.items():
        (folder / name).mkdir()
        for k, a in enumerate(arrays):
            np.save(folder / name / f"s{k:02d}.npy", a[None])
    return {"model": path, **{name: folder / name for name in sets}}


def test_calibration_samples_alone_cannot_see_the_flat_crops(cyclegan):
    q = npuflow.quantize(str(cyclegan["model"]), str(cyclegan["calib"]), DPU, warn=False)
    assert not q.report.similarity_eval and q.report.fitted_samples == 0
    assert q.report.worst_samples["y"][0] > 0.95 and q.problem is None and not q.report.warnings


def test_eval_data_check_warns_and_reports_both_figures(cyclegan):
    q = npuflow.quantize(str(cyclegan["model"]), str(cyclegan["calib"]), DPU, warn=False,
                         eval_data=str(cyclegan["eval"]))
    report = q.report
    assert report.similarity_eval and report.similarity_samples == 24
    assert report.similarity_on() == "24 evaluation samples (eval data, not calibrated on)"
    worst, _ = report.worst_samples["y"]
    assert worst < 0.93, worst  # 0.89 on round 24's crops
    assert report.fitted_samples == 8 and report.fitted_worst["y"][0] > 0.95
    codes = [w.code for w in q.calibration_warnings] + ([q.problem.code] if q.problem else [])
    assert "NPF_QUANT_WORST_SAMPLE" in codes or "NPF_QUANT_LOW_SIMILARITY" in codes, codes
    fitted = report.to_json()["fitted"]
    assert fitted["samples"] == 8 and set(fitted["outputs"]) == {"y"}


def test_cli_eval_data_prints_both_figures_and_the_warning(cyclegan, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["quantize", str(cyclegan["model"]), "-t", DPU, "--calib", str(cyclegan["calib"]), "--eval-data",
                 str(cyclegan["eval"]), "-o", str(out), "-v", "0"]) == 0
    captured = capsys.readouterr()
    text = " ".join((captured.out + captured.err).split())
    assert "on 24 evaluation samples (eval data, not calibrated on), worst sample 0." in text, text
    assert "on 8 calibration samples (ranges set on them), worst sample 0.9" in text, text
    assert "WARNING [NPF_QUANT_WORST_SAMPLE]" in text or "WARNING [NPF_QUANT_LOW_SIMILARITY]" in text
    saved = json.loads((out / "quant_report.json").read_text())
    assert saved["similarity_eval"] and saved["fitted"]["samples"] == 8
    assert saved["worst_samples"]["y"]["cosine"] < 0.93 < 0.95 < saved["fitted"]["worst_samples"]["y"]["cosine"]


def test_eval_data_with_the_accuracy_target_is_refused(cyclegan, tmp_path, capsys):
    status = main(["quantize", str(cyclegan["model"]), "-t", DPU, "--calib", str(cyclegan["calib"]), "--eval-data",
                   str(cyclegan["eval"]), "--min-similarity", "0.99", "-o", str(tmp_path / "q")])
    assert status == 2 and "--eval-data" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_build_eval_data_dir_is_judged_and_reported(tmp_path, capsys):
    """build's ``calibration_parameters.eval_data_dir``: read and preprocessed as ``cal_data_dir``, judged by
    the check; the report's similarity gives both figures."""
    import yaml

    from tests.unit.test_build_config import BASE, _conv_model, photo_crops

    _conv_model(tmp_path / "m.onnx")
    photo_crops(tmp_path / "calib", 6)
    photo_crops(tmp_path / "eval", 9)
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["calibration_parameters"]["eval_data_dir"] = "eval"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "on 9 evaluation samples (eval data, not calibrated on)" in out, out
    assert "on 6 calibration samples (ranges set on them)" in out, out
    report = json.loads((tmp_path / "out" / "tiny_build_report.json").read_text())
    assert report["similarity"]["similarity_eval"] and report["similarity"]["fitted"]["samples"] == 6


@pytest.mark.parametrize("edit, key", [({"eval_data_dir": "a;b"}, "NPF_BUILD_COUNT_MISMATCH"),
                                       ({"eval_data_dir": "eval", "min_similarity": 0.99}, "NPF_BUILD_BAD_VALUE")])
def test_build_eval_data_dir_errors(tmp_path, edit, key):
    from npuflow.build import load_config, resolve_inputs
    from npuflow.errors import NpuflowError
    from tests.unit.test_build_config import BASE

    conf = json.loads(json.dumps(BASE))
    conf["calibration_parameters"].update(edit)
    with pytest.raises(NpuflowError) as err:
        resolve_inputs(load_config(conf), {"data": [1, 3, 8, 8]})
    assert err.value.code == key and "eval_data_dir" in err.value.message
