"""``loss="ctc"`` of label-free QAT (``npuflow.torch.qat_ctc``, ``npuflow.torch.qat_train``): the
teacher's greedy CTC decode as pseudo-labels, the CTC term on the student's rows beside the
per-step KL, the refusal of outputs without three axes, and a tiny ``qat_onnx`` run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npuflow.errors import NpuflowError
from npuflow.torch.onnx_qat import qat_onnx
from npuflow.torch.qat_ctc import check_ctc_output, ctc_term, greedy_labels
from npuflow.torch.qat_train import _distil_loss, _loss_kind
from tests import fixture_models
from tests.unit.test_onnx_qat import _tiny_model_with_cpu_tail

DPU = "DPUCZDX8G_ISA1_B4096"
C = 5


def _rows(*lines: list[int], sharp: float = 8.0) -> torch.Tensor:
    """Probability rows (N, T, C) whose argmax per step is each line's class, softmax of ``sharp``."""
    logits = torch.zeros(len(lines), len(lines[0]), C)
    for n, line in enumerate(lines):
        logits[n, torch.arange(len(line)), torch.tensor(line)] = sharp
    return logits.softmax(-1)


def test_greedy_labels_merge_repeats_drop_blanks_and_allow_an_empty_line():
    teacher = _rows([1, 1, 0, 1, 2, 2, 0, 0],  # a repeat split by a blank reads twice: (1, 1, 2)
                    [0, 0, 0, 0, 0, 0, 0, 0],  # an empty line
                    [3, 4, 4, 4, 0, 3, 0, 4])  # (3, 4, 3, 4)
    labels, lengths = greedy_labels(teacher)
    assert lengths.tolist() == [3, 0, 4]
    assert labels.tolist() == [1, 1, 2, 3, 4, 3, 4]
    assert labels.dtype == lengths.dtype == torch.long


def test_the_student_reading_the_teachers_line_sharply_has_the_least_loss():
    """CTC is near 0 for a sharp student that reads the teacher's lines (the teacher sharpened),
    larger for the teacher's own softer rows, larger again for a student reading another line."""
    lines = ([1, 1, 0, 2, 0, 0, 3, 0], [0, 0, 0, 0, 0, 0, 0, 0])
    teacher = _rows(*lines, sharp=3.0)
    sharpened = _rows(*lines, sharp=20.0)
    wrong = _rows([1, 1, 0, 2, 0, 0, 4, 0], [0, 0, 0, 1, 0, 0, 0, 0], sharp=20.0)
    same = float(ctc_term(sharpened, teacher, probs=True))
    soft = float(ctc_term(teacher, teacher, probs=True))
    other = float(ctc_term(wrong, teacher, probs=True))
    assert same < 1e-3 < soft < other
    # logits take the log-softmax: the same rows as logits give the same loss
    assert float(ctc_term(sharpened.log(), teacher, probs=False)) == pytest.approx(same, abs=1e-6)


def test_ctc_gradient_reaches_the_student_and_moves_it_towards_the_line():
    teacher = _rows([1, 0, 2, 2, 0, 3], sharp=6.0)
    logits = torch.zeros(1, 6, C, requires_grad=True)  # a student that reads nothing in particular
    loss = _distil_loss(logits.softmax(-1), teacher, "ctc_probs", 2.0)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and float(logits.grad.abs().sum()) > 0
    with torch.no_grad():  # one step down the gradient lowers the loss
        stepped = (logits - 0.5 * logits.grad).softmax(-1)
        assert float(_distil_loss(stepped, teacher, "ctc_probs", 2.0)) < float(loss)


def test_loss_kind_ctc_follows_the_probability_test_and_adds_the_kl():
    teacher = _rows([1, 0, 2, 0])
    assert _loss_kind(teacher, "ctc", "y") == "ctc_probs"
    assert _loss_kind(teacher.log(), "ctc", "y") == "ctc_logits"
    student = _rows([1, 0, 2, 2], sharp=4.0)
    kl = _distil_loss(student, teacher, "kl_probs", 2.0)
    assert float(_distil_loss(student, teacher, "ctc_probs", 2.0)) == pytest.approx(
        float(ctc_term(student, teacher, probs=True) + kl))


def test_ctc_is_refused_on_an_output_without_three_axes():
    with pytest.raises(NpuflowError) as e:
        _loss_kind(torch.softmax(torch.randn(4, 10), -1), "ctc", "logits")
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "'logits'" in str(e.value) and "(4, 10)" in str(e.value)
    with pytest.raises(NpuflowError, match="'y'.*'batch', 10"):
        check_ctc_output("y", ["batch", 10])
    check_ctc_output("y", ["batch", 40, 6625])


def test_qat_onnx_refuses_ctc_on_a_classifier_before_the_ptq_start(mnist_npy_folder):
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq_config={}, loss="ctc")
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "CTC needs (N, T, C)" in str(e.value)
    with pytest.raises(NpuflowError, match="NPF_QAT_BAD_OPTION"):
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, loss="hinge")


def test_qat_onnx_trains_a_recogniser_with_the_ctc_loss():
    rng = np.random.default_rng(1)
    samples = [(rng.standard_normal((1, 3, 16, 16)) * 2).astype(np.float32) for _ in range(16)]
    torch.manual_seed(0)
    # Conv -> Relu on the DPU, then (1, T=8, C=256) rows through a float Softmax: a recogniser's output
    r = qat_onnx(_tiny_model_with_cpu_tail(), DPU, samples, epochs=2, ptq_config={}, batch=4, loss="ctc")
    assert r.report["loss"] == ["ctc_probs"]
    assert r.steps > 0 and all(np.isfinite(r.losses))
    assert r.report["start_sequence_agreement"] is not None  # the guard reads the rows as lines


def test_cli_loss_ctc_on_a_classifier_is_a_coded_error(cli, mnist_npy_folder, tmp_path):
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", mnist_npy_folder, "--epochs", "1",
              "--loss", "ctc", "-o", tmp_path / "out")
    assert res.returncode == 2
    assert "ERROR [NPF_QAT_BAD_OPTION]" in res.stderr and "'logits'" in res.stderr and "CTC" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_build_key_qat_loss_reaches_the_qat_and_is_checked(tmp_path, monkeypatch, capsys, caplog):
    """``calibration_parameters: qat_loss`` goes to the QAT as ``loss`` (the QAT itself is stubbed);
    an unknown loss is refused when the YAML loads, and without a QAT budget the key is ignored aloud."""
    import copy

    import yaml

    from npuflow.build import load_config
    from npuflow.build.pipeline import _quant_config
    from npuflow.cli.app import main
    from npuflow.torch import onnx_qat
    from tests.unit.test_build_config import BASE, _conv_model

    conf = copy.deepcopy(BASE)
    alone = copy.deepcopy(conf)
    alone["calibration_parameters"]["qat_loss"] = "ctc"
    _quant_config(load_config(alone))
    assert any("qat_loss" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    with pytest.raises(NpuflowError) as err:
        load_config({**conf, "calibration_parameters": {**conf["calibration_parameters"], "qat_loss": "hinge"}})
    assert "qat_loss" in err.value.message

    _conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i in range(2):
        np.full((1, 3, 8, 8), 16 * i, np.uint8).tofile(tmp_path / "calib" / f"{i}.bgr")
    conf["input_parameters"]["input_type_rt"] = "bgr"
    conf["calibration_parameters"].update(qat_minutes=1, qat_loss="ctc")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    seen = {}

    def stub(*args, **kwargs):
        seen.update(kwargs)
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="loss", value=kwargs["loss"], reason="stub")

    monkeypatch.setattr(onnx_qat, "qat_onnx", stub)
    assert main(["build", str(tmp_path / "c.yaml")]) == 2
    assert "NPF_QAT_BAD_OPTION" in capsys.readouterr().err
    assert seen["loss"] == "ctc" and seen["minutes"] == 1
