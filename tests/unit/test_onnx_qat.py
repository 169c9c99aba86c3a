"""Label-free QAT of an ONNX model (``npuflow.torch.onnx_qat``, ``npuflow qat``) on the MNIST CNN.

The chain a user runs: PTQ start -> onnx2torch -> fake quant initialised from PTQ -> distillation
on unlabelled real digits -> QDQ export -> ``npuflow compile``, whose ``.npuf`` must equal the
torch forward bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.ort_session import open_session
from npuflow.torch.onnx_convert import load_onnx2torch
from npuflow.torch.onnx_qat import qat_onnx
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def digits(mnist_npy_folder):
    return mnist_npy_folder


@pytest.fixture(scope="module")
def mnist_qat(digits):
    torch.manual_seed(0)
    return qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4)


def test_qat_starts_from_the_ptq_model(mnist_qat, digits):
    """Every quantizer and weight takes the PTQ model's values: the torch model before training
    scores the PTQ QDQ model's output cosine (ONNX Runtime), not a fresh calibration's, on the
    fifth of the digits held out of training to choose between the start and the trained model."""
    r = mnist_qat
    assert r.report["quantizers_from_ptq"] == 6 and r.report["weights_from_ptq"] == 5
    assert r.report["eval_held_out"] and r.report["eval_samples"] == 4  # 24 digits: 20 train, 4 decide
    teacher = open_session(r.ptq.float_model, threads=1)
    student = open_session(r.ptq.model, threads=1)
    cos = []
    for f in sorted(digits.glob("*.npy"))[-4:]:
        x = {"input": np.load(f)}
        t, s = teacher.run(None, x)[0].ravel(), student.run(None, x)[0].ravel()
        cos.append(float(np.dot(t, s) / (np.linalg.norm(t) * np.linalg.norm(s))))
    assert r.start_cosine == pytest.approx(float(np.mean(cos)), abs=1e-6)
    assert r.batch == 4 and r.steps == 5 and r.epochs == 1.0  # 20 training digits, batches of 4: the graph took batches
    # logits (N, 10): the guard judges the exported models' top-1 agreement with FP32
    assert r.measure == "argmax agreement" and r.report["measure"] == "argmax agreement"
    assert r.start_score == r.start_agreement == r.report["start_agreement"]
    assert r.report["start_sequence_agreement"] is None is r.report["trained_sequence_agreement"]  # no (N, T, C) rows
    # the trained model is returned only when it leads by more than one of the 4 held-out digits
    margin = r.start_score + 0.25
    assert r.kept == ("trained" if r.trained_score > margin else "ptq start")
    assert r.score == (r.trained_score if r.kept == "trained" else r.start_score)


def test_guard_returns_the_start_when_training_makes_it_worse(digits):
    """A rate that scrambles the weights: the trained model, exported and run in ONNX Runtime, reads
    fewer held-out digits than the start, so the start is returned -- the PTQ model's outputs."""
    r = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4, lr=300.0)
    assert r.trained_score < r.start_score and r.kept == "ptq start"
    returned, ptq = open_session(r.model, threads=1), open_session(r.ptq.model, threads=1)
    for f in sorted(digits.glob("*.npy"))[-4:]:
        x = {"input": np.load(f)}
        np.testing.assert_array_equal(returned.run(None, x)[0], ptq.run(None, x)[0])


def test_metric_callback_decides(digits):
    """``metric(outputs)`` replaces the built-in measure: it sees each held-out sample's outputs
    of the exported model, and the model it scores higher is returned."""
    seen = []

    def prefer_large_logits(outputs):
        seen.append(len(outputs))
        return float(sum(np.abs(o[0]).sum() for o in outputs))

    r = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4,
                 metric=prefer_large_logits)
    assert seen == [4, 4] and r.measure == "metric" and r.report["measure"] == "metric"
    assert r.kept == ("trained" if r.trained_score > r.start_score else "ptq start")  # a metric: any lead
    with pytest.raises(NpuflowError) as err:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4,
                 metric=lambda outputs: float("nan"))
    assert err.value.code == "NPF_QAT_BAD_METRIC"


def test_compiled_npuf_equals_the_torch_forward_bit_for_bit(mnist_qat, digits):
    compiled = npuflow.Session(npuflow.compile(mnist_qat.model, DPU))
    mnist_qat.qat.eval()
    for f in sorted(digits.glob("*.npy"))[:8]:
        x = np.load(f)
        with torch.no_grad():
            expected = mnist_qat.qat(torch.from_numpy(x)).numpy()
        np.testing.assert_array_equal(compiled.run({"input": x})["logits"], expected)
    meta = {p.key: p.value for p in mnist_qat.model.metadata_props}
    assert meta["npuflow.source"] == "qat" and meta["npuflow.target"] == DPU


def test_unconvertible_operator_is_named():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="pick")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(NpuflowError) as err:
        load_onnx2torch()(model)
    assert err.value.code == "NPF_QAT_UNSUPPORTED_OP"
    assert "Hardmax" in str(err.value) and "pick" in str(err.value)


def test_budget_must_be_one_of_epochs_and_minutes(digits):
    for kwargs in ({}, {"epochs": 1, "minutes": 1}, {"epochs": 0}, {"minutes": float("nan")}):
        with pytest.raises(NpuflowError) as err:
            qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), **kwargs)
        assert err.value.code == "NPF_QAT_BAD_BUDGET"


def test_cli_qat_writes_a_model_that_compiles(cli, digits, tmp_path):
    cfg = tmp_path / "ptq.yaml"
    cfg.write_text("include_bias_corr: false\n")
    out = tmp_path / "out"
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", digits, "--epochs", "1", "--batch", "8",
              "-c", cfg, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "kept the" in res.stdout and "PTQ start" in res.stdout
    assert "qat: train" in res.stderr and "cosine" in res.stderr  # piped: the bar's loss and cosine lines
    assert sorted(p.name for p in out.iterdir()) == ["ptq_model.onnx", "qat_report.json", "quantized_model.onnx"]
    npuf = tmp_path / "m.npuf"
    res = cli("compile", out / "quantized_model.onnx", "-t", DPU, "-o", npuf)
    assert res.returncode == 0, res.stderr
    assert onnx.load(out / "quantized_model.onnx").graph.output[0].name == "logits"


def test_cli_qat_missing_data_is_a_coded_error(cli, tmp_path):
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", tmp_path / "nowhere", "--epochs", "1",
              "-o", tmp_path / "out")
    assert res.returncode == 2
    assert "ERROR [NPF_QUANT_CALIB_SOURCE]" in res.stderr and "nowhere" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", tmp_path, "-o", tmp_path / "out")
    assert res.returncode == 2 and "NPF_QAT_BAD_BUDGET" in res.stderr


def test_build_key_runs_qat_after_ptq(tmp_path, capsys):
    """``calibration_parameters: qat_epochs`` trains the build's PTQ model; the build compiles the
    QAT model (preprocessing included) and reports both cosines."""
    import json

    import yaml
    from npuflow.cli.app import main
    from tests.unit.test_build_config import BASE, _conv_model, photo_crops

    _conv_model(tmp_path / "m.onnx")
    photo_crops(tmp_path / "calib", 8)
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["input_parameters"]["input_type_rt"] = "bgr"  # nv12 preprocessing computes a shape at run time (NPF_TORCH_CAPTURE_FAILED)
    conf["calibration_parameters"]["qat_epochs"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml")]) == 0
    _, err = capsys.readouterr()
    assert "build: qat train" in err
    report = json.loads(next(tmp_path.rglob("*_build_report.json")).read_text())
    assert report["qat"]["steps"] == 1 and report["qat"]["kept"] in ("trained", "ptq start")
    assert report["qat"]["quantizers_from_ptq"] > 0
    conf["calibration_parameters"]["qat_minutes"] = 1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml")]) == 2
    assert "NPF_QAT_BAD_BUDGET" in capsys.readouterr().err


def test_missing_onnx2torch_is_a_coded_error_and_torchvision_is_optional(monkeypatch):
    """Without onnx2torch: NPF_QAT_DEPENDENCY_MISSING.  Without a torchvision that imports (PyPI's
    is built for the CUDA torch), onnx2torch still loads and converts the MNIST CNN."""
    import sys

    for name in [n for n in sys.modules if n.startswith("onnx2torch")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx2torch", None)
    with pytest.raises(NpuflowError) as err:
        load_onnx2torch()
    assert err.value.code == "NPF_QAT_DEPENDENCY_MISSING" and "onnx2torch" in str(err.value)
    monkeypatch.delitem(sys.modules, "onnx2torch")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    module = load_onnx2torch()(onnx.load(fixture_models.mnist_cnn()))
    assert isinstance(module, torch.fx.GraphModule)
    assert sys.modules["torchvision"] is None  # the placeholder served the import alone


def _tiny_model_with_cpu_tail() -> onnx.ModelProto:
    """Conv -> Relu (DPU), then Reshape with a copied dimension (0), a float Div and a Softmax
    (the DPU leaves the last two in float on the CPU): the onnx2torch forms torch.fx cannot trace
    as converted (run-time 0 lookup, run-time float/integer division) and a float tail."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 3, 3)) * 0.2).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0, 8, 256], np.int64), "shape"),
             numpy_helper.from_array(np.array(4.0, np.float32), "four")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("Div", ["f", "four"], ["d"], name="div"),
             helper.make_node("Softmax", ["d"], ["y"], name="softmax", axis=2)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_tensors_ptq_keeps_float_stay_float():
    """QAT quantizes exactly where the PTQ model does: the CPU tail stays float, so the compiled
    model equals the torch forward up to float rounding there (ONNX Runtime's Softmax vs torch's)."""
    from skimage import data as skdata

    photo = skdata.astronaut()
    samples = [np.ascontiguousarray(photo[20 * i:20 * i + 16, 24 * i:24 * i + 16].transpose(2, 0, 1)[None] / 255.0 - 0.5,
                                    dtype=np.float32) for i in range(16)]
    r = qat_onnx(_tiny_model_with_cpu_tail(), DPU, samples, epochs=1, ptq_config={}, batch=4)
    assert r.report["float_tensors"] == 2 and r.report["quantizers_from_ptq"] == 2 and r.batch == 4
    assert r.report["quantizers_unmapped"] == 0  # every quantizer starts from its PTQ scale
    assert [n.op_type for n in r.model.graph.node][-2:] == ["Div", "Softmax"]  # no quantize step between
    compiled = npuflow.Session(npuflow.compile(r.model, DPU))
    r.qat.eval()
    for x in samples[:4]:
        with torch.no_grad():
            expected = r.qat(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(compiled.run({"x": x})["y"], expected, rtol=0, atol=1e-8)


def test_device_cpu_and_held_out_checks_leave_the_result_unchanged(mnist_qat, digits):
    """``device="cpu"`` named is the default; the held-out checks judge the student's own forward
    without changing its training, and the last one equals the guard's judgement of the export."""
    torch.manual_seed(0)
    r = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4, device="cpu",
                 checks=2)
    assert r.model.SerializeToString() == mnist_qat.model.SerializeToString()
    assert r.losses == mnist_qat.losses and r.report["device"] == "cpu"
    curve = r.report["held_out_curve"]
    assert [c["check"] for c in curve] == [0, 1, 2] and curve[0]["step"] == 0 and curve[-1]["step"] == r.steps
    # the torch forward is the deployed arithmetic: its top-1 agreement is the exported model's in ONNX Runtime
    assert curve[0]["held_out"] == r.start_score and curve[-1]["held_out"] == r.trained_score
    assert mnist_qat.report["held_out_curve"] == []


@pytest.mark.parametrize("device, nproc, says", [
    ("cuda:99", 1, "cuda:99"),  # no such GPU (and no CUDA at all in CI)
    ("gpu:0", 1, "gpu:0"),  # not a torch device string
    ("cuda", 2, "processes"),  # data-parallel ranks train on the CPU
])
def test_unreachable_device_is_a_coded_error(digits, device, nproc, says):
    with pytest.raises(NpuflowError) as err:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, device=device, nproc=nproc)
    assert err.value.code == "NPF_QAT_BAD_DEVICE" and says in err.value.message


def test_cli_unreachable_device_is_a_coded_error(cli, digits, tmp_path):
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", digits, "--epochs", "1", "--device",
              "cuda:99", "-o", tmp_path / "out")
    assert res.returncode == 2
    assert "ERROR [NPF_QAT_BAD_DEVICE]" in res.stderr and "cuda:99" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_without_augmentation_the_teacher_runs_once_per_sample(digits, monkeypatch):
    """Unaugmented samples always give the teacher the same input: two epochs run it on each
    training sample once (what keeps a GPU student from waiting for the CPU teacher)."""
    from npuflow.torch import qat_train

    rows = []
    real = qat_train.Teacher.__call__
    monkeypatch.setattr(qat_train.Teacher, "__call__", lambda self, batch: rows.append(batch[0].shape[0])
                        or real(self, batch))
    r = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=2, ptq_config={}, batch=4, augment=False)
    assert r.steps == 10 and sum(rows) == 20  # 20 training digits, two passes
