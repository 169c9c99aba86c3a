"""The accuracy ladder's last step: label-free QAT when the caller allows it (issue 18 item 3), on
the MNIST CNN and real digits; CPU fallback after it works on the PTQ model."""

from __future__ import annotations

import pytest

from npuflow.analyze.auto_quant import LADDER, QAT_STEP, auto_quantize
from npuflow.torch.onnx_qat import ladder_step
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"
FAST = {"fast_finetune": {"iters": 5}}  # every finetune step short: this tests the ladder, not AdaRound


def test_qat_runs_last_when_the_ladder_falls_short(mnist_npy_folder):
    mnist, data = fixture_models.mnist_cnn(), str(mnist_npy_folder)
    result = auto_quantize(mnist, data, DPU, min_similarity=1.01, config=FAST,
                           qat=ladder_step(mnist, data, epochs=1, batch=4))
    names = [s.name for s in result.steps]
    assert names == ["target defaults", *[n for n, _, _ in LADDER], QAT_STEP[0]]
    qat = result.steps[-1]
    assert qat.score is not None and qat.seconds > 0 and "5 steps, kept the " in qat.note
    ptq_scores = [s.score for s in result.steps[:-1] if s.score is not None]
    assert qat.kept == (qat.score > max(ptq_scores))
    if qat.kept:  # the QAT model: no re-export plan, its own similarity measured again
        assert result.quantized.requantizer is None and result.score == qat.score
    else:
        assert result.quantized.requantizer is not None and result.score == max(ptq_scores)


def test_qat_is_not_started_when_the_target_holds(mnist_npy_folder):
    mnist, data = fixture_models.mnist_cnn(), str(mnist_npy_folder)
    result = auto_quantize(mnist, data, DPU, min_similarity=0.5, config=FAST, qat=ladder_step(mnist, data, epochs=1))
    assert result.met and result.steps[-1].name == QAT_STEP[0]
    assert result.steps[-1].score is None and result.steps[-1].note == "target met"


def test_cpu_fallback_after_qat_moves_layers_of_the_ptq_model(mnist_npy_folder):
    mnist, data = fixture_models.mnist_cnn(), str(mnist_npy_folder)
    # 0.99999: PTQ and QAT fall short, some layers in float reach it (at 0.999999 every layer went
    # to float, a float model the ladder no longer keeps: ca6000b)
    result = auto_quantize(mnist, data, DPU, min_similarity=0.99999, config=FAST,
                           qat=ladder_step(mnist, data, epochs=1, batch=4), allow_cpu_fallback=True)
    assert [s.name for s in result.steps][-2:] == [QAT_STEP[0], "CPU fallback"]
    assert result.cpu_fallback is not None
    assert 0 < len(result.cpu_fallback["layers"]) < len(result.quantized.requantizer.layers)
    assert result.quantized.requantizer is not None  # precision overrides of the PTQ plan


def test_qat_options_are_checked_by_qat_onnx(mnist_npy_folder):
    from npuflow.errors import NpuflowError

    mnist, data = fixture_models.mnist_cnn(), str(mnist_npy_folder)
    with pytest.raises(NpuflowError, match="NPF_QAT_BAD_BUDGET"):
        auto_quantize(mnist, data, DPU, min_similarity=1.01, config=FAST,
                      qat=ladder_step(mnist, data, epochs=1, minutes=1))


def test_build_with_a_target_runs_qat_only_as_the_ladder_step(tmp_path, capsys):
    """``min_similarity`` beside ``qat_epochs``: QAT is the ladder's last step (in the report's
    ``auto`` steps), not a separate stage after it."""
    import json

    import yaml

    from npuflow.cli.app import main
    from tests.unit.test_build_config import BASE, _conv_model, photo_crops

    _conv_model(tmp_path / "m.onnx")
    photo_crops(tmp_path / "calib", 8)
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["input_parameters"]["input_type_rt"] = "bgr"
    conf["calibration_parameters"].update(qat_epochs=1, min_similarity=1.0, time_budget=1000)
    conf["npuflow"] = {"fast_finetune": {"iters": 5}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0
    capsys.readouterr()
    report = json.loads(next(tmp_path.rglob("*_build_report.json")).read_text())
    assert "qat" not in report and report["auto"]["steps"][-1]["name"] == QAT_STEP[0]
    assert report["auto"]["met"] or report["auto"]["steps"][-1]["score"] is not None
