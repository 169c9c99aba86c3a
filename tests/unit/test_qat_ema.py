"""The weight EMA of label-free QAT (``qat_onnx(..., ema_decay=d)``, ``npuflow qat --ema d``): the
average equals a hand-computed one with the warm-up, the guard judges it beside the final weights
and the start and the model returned is the one it names, a resumed run continues the average
exactly, and a decay outside (0, 1) is a coded error."""
from __future__ import annotations

import pytest
import torch

import npuflow
from npuflow.errors import NpuflowError
from npuflow.torch.onnx_qat import qat_onnx
from npuflow.torch.qat import export_qat
from npuflow.torch.qat_ema import WeightEma, check_ema_decay
from npuflow.torch.qat_guard import Judgement, choose
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def ptq(mnist_npy_folder):
    """The PTQ start of the MNIST CNN on the 24 digits, shared by the runs below."""
    return npuflow.quantize(fixture_models.mnist_cnn(), str(mnist_npy_folder), DPU, {})


def test_average_equals_the_hand_computed_one_with_warm_up():
    module = torch.nn.Linear(2, 1)
    module.register_buffer("fixed", torch.tensor([0.1]))  # never changes: must stay bit-identical
    ema = WeightEma(module, decay=0.5)
    want = module.weight.detach().clone()
    for t, value in enumerate([1.0, 2.0, 4.0, -3.0]):
        with torch.no_grad():
            module.weight.fill_(value)
        ema.update(module)
        d = min(0.5, (1 + t) / (10 + t))  # 0.1, 0.1818..., 0.25, 0.3077...: the warm-up, below 0.5
        want = d * want + (1 - d) * value
    torch.testing.assert_close(ema.shadow["weight"], want)
    assert ema.updates == 4 and torch.equal(ema.shadow["fixed"], torch.tensor([0.1]))
    assert WeightEma(module, 0.98).rate() == pytest.approx(0.1)
    late = WeightEma(module, 0.98)
    late.updates = 10_000
    assert late.rate() == 0.98


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), True, "0.9"])
def test_bad_decay_is_a_coded_error(bad):
    with pytest.raises(NpuflowError) as e:
        check_ema_decay(bad)
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "ema_decay" in str(e.value) and repr(bad) in str(e.value)


def test_bad_decay_fails_before_training(ptq, mnist_npy_folder):
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq=ptq, ema_decay=1.0)
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "ema_decay=1.0" in str(e.value)


def _judgement(score: float) -> Judgement:
    return Judgement(score=score, cosine=score, agreement=None)


def test_choose_returns_the_best_of_three_and_ties_go_to_the_earlier():
    order = ["ema", "trained", "ptq start"]
    assert choose(list(zip(order, map(_judgement, [0.8, 0.9, 0.85])))) == "trained"
    assert choose(list(zip(order, map(_judgement, [0.91, 0.9, 0.85])))) == "ema"
    assert choose(list(zip(order, map(_judgement, [0.8, 0.84, 0.85])))) == "ptq start"
    assert choose(list(zip(order, map(_judgement, [0.91, 0.91, 0.9])))) == "ema"
    # a trained model level with the start is no reason to leave the measured PTQ model
    assert choose(list(zip(order, map(_judgement, [0.9, 0.9, 0.9])))) == "ptq start"
    assert choose([("ema", None), ("trained", _judgement(0.8)), ("ptq start", _judgement(0.8))]) == "ptq start"


def test_a_lead_of_one_held_out_row_keeps_the_start():
    """Argmax agreement over 2,000 rows (PP-OCRv4 rec's 51 held-out lines): one row ahead is
    the measure's resolution, two rows ahead replace the start."""
    def agreeing(rows: int) -> Judgement:
        return Judgement(score=rows / 2000, cosine=0.9, agreement=rows / 2000, resolution=1 / 2000)

    assert choose([("trained", agreeing(1941)), ("ptq start", agreeing(1940))]) == "ptq start"
    assert choose([("trained", agreeing(1942)), ("ptq start", agreeing(1940))]) == "trained"
    assert choose([("ema", agreeing(1941)), ("trained", agreeing(1943)), ("ptq start", agreeing(1940))]) == "trained"


def test_exported_model_is_the_one_the_guard_names(ptq, mnist_npy_folder, tmp_path):
    """One run with a checkpoint: the guard's three scores are those of the start, the final
    weights (checkpoint ``model``) and their average (checkpoint ``ema``), and the result's model
    is the export of the one it kept."""
    ckpt = tmp_path / "final.pt"
    result = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=2, batch=4, augment=False,
                      ptq=ptq, lr=0.5, ema_decay=0.6, checkpoint=ckpt)
    r = result.report
    assert r["ema_decay"] == 0.6 and r["ema_score"] is not None and result.ema_score == r["ema_score"]
    best = max(r["ema_score"], r["trained_score"], r["start_score"])
    assert result.score == best and r["kept"] == result.kept
    saved = torch.load(ckpt, weights_only=False)
    assert saved["extra"]["ema"]["updates"] == result.steps == 10
    qat = result.qat
    qat.load_state_dict(saved["model"])
    qat.load_state_dict(saved["extra"]["ema"]["shadow"], strict=False)
    qat.eval()
    averaged = export_qat(qat, None)
    assert any(not torch.equal(saved["model"][k], v) for k, v in saved["extra"]["ema"]["shadow"].items())
    if result.kept == "ema":
        assert _initializers(averaged) == _initializers(result.model)


def test_forced_ema_is_exported(ptq, mnist_npy_folder, monkeypatch):
    """When the guard keeps the average, the returned QDQ model and ``result.qat`` hold the EMA weights."""
    import npuflow.torch.onnx_qat as onnx_qat

    seen: dict[str, WeightEma] = {}
    real = WeightEma.update

    def update(self, module):
        seen["ema"] = self
        real(self, module)
    monkeypatch.setattr(WeightEma, "update", update)
    monkeypatch.setattr(onnx_qat, "choose", lambda candidates: "ema")
    result = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, batch=4, augment=False,
                      ptq=ptq, lr=0.5, ema_decay=0.6)
    assert result.kept == "ema" and result.score == result.ema_score
    state = result.qat.state_dict()
    for name, shadow in seen["ema"].shadow.items():
        assert torch.equal(state[name], shadow.cpu()), name
    result.qat.eval()
    assert _initializers(export_qat(result.qat, None)) == _initializers(result.model)


def test_resume_restores_the_average(ptq, mnist_npy_folder, tmp_path, monkeypatch):
    """A run stopped in step 4 (checkpoint at step 2) and resumed ends with the uninterrupted
    run's average, bit for bit: the checkpoint carries it."""
    from npuflow.torch import qat_train

    kw = dict(epochs=1, batch=4, augment=False, ptq=ptq, lr=0.5, ema_decay=0.6)
    whole = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), checkpoint=tmp_path / "a.pt", **kw)
    calls = {"n": 0}
    real_loss = qat_train._distil_loss

    def stop_in_step_4(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*args)
    monkeypatch.setattr(qat_train, "_distil_loss", stop_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), checkpoint=tmp_path / "b.pt",
                 checkpoint_every=2, **kw)
    monkeypatch.undo()
    assert torch.load(tmp_path / "b.pt", weights_only=False)["extra"]["ema"]["updates"] == 2
    resumed = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), resume=tmp_path / "b.pt",
                       checkpoint=tmp_path / "b.pt", **kw)
    assert resumed.report["resumed_at_step"] == 2 and resumed.report["ema_score"] == whole.report["ema_score"]
    a = torch.load(tmp_path / "a.pt", weights_only=False)["extra"]["ema"]
    b = torch.load(tmp_path / "b.pt", weights_only=False)["extra"]["ema"]
    assert a["updates"] == b["updates"] == 5 and a["decay"] == b["decay"] == 0.6
    assert all(torch.equal(b["shadow"][name], value) for name, value in a["shadow"].items())
    assert resumed.model.SerializeToString() == whole.model.SerializeToString()


def test_resume_without_an_average_is_refused(ptq, mnist_npy_folder, tmp_path):
    kw = dict(batch=4, augment=False, ptq=ptq)
    qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, checkpoint=tmp_path / "c.pt", **kw)
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=2, resume=tmp_path / "c.pt",
                 ema_decay=0.9, **kw)
    assert e.value.code == "NPF_QAT_CHECKPOINT_MISMATCH" and "EMA decay" in str(e.value)


def _initializers(model) -> dict[str, bytes]:
    """The QDQ model's constants (weights, biases, scales), serialised: equal iff the models hold the same values."""
    return {i.name: i.SerializeToString() for i in model.graph.initializer}


def test_cli_bad_ema_is_a_coded_error(mnist_npy_folder, tmp_path, capsys):
    from npuflow.cli.app import main

    code = main(["qat", str(fixture_models.mnist_cnn()), "-t", DPU, "--data", str(mnist_npy_folder), "--epochs", "1",
                 "--ema", "1.5", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "ERROR [NPF_QAT_BAD_OPTION]" in err and "ema_decay=1.5" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
