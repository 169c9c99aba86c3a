"""Intermediate-feature distillation in label-free QAT (``qat_onnx(..., feature_weight=w)``,
``npuflow qat --feature-weight``) on the MNIST CNN: the teacher returns the chosen ONNX tensors,
the student's quantizers of the same tensors are read, and the loss adds their normalised error.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuflow
from npuflow.errors import NpuflowError
from npuflow.ort_session import open_session
from npuflow.quant.data import CalibrationSource
from npuflow.torch.config import qat_config
from npuflow.torch.onnx_convert import load_onnx2torch
from npuflow.torch.onnx_qat import _build_student, qat_onnx
from npuflow.torch.qat_features import FEATURE_POINTS, FeatureTap, feature_loss
from npuflow.value_info import with_outputs
from npuflow.torch.qat_train import Teacher, stack
from npuflow.targets import load_target
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def start(mnist_npy_folder):
    """The PTQ start of the MNIST CNN, its student with the distilled points, and the samples."""
    ptq = npuflow.quantize(fixture_models.mnist_cnn(), str(mnist_npy_folder), DPU, {})
    samples = list(CalibrationSource(str(mnist_npy_folder), _specs(ptq.float_model)))
    student = _build_student(load_onnx2torch(), ptq, load_target(DPU), qat_config({"learnable": True}), samples, 4,
                             0, features=True)
    return ptq, student


def _specs(model):
    from npuflow.quant.data import InputSpec
    inp = model.graph.input[0]
    return [InputSpec(inp.name, np.dtype(np.float32), tuple(d.dim_value for d in inp.type.tensor_type.shape.dim))]


def test_points_are_intermediate_tensors_read_at_their_quantizers(start):
    ptq, student = start
    points = student.features
    outputs = {o.name for o in ptq.float_model.graph.output}
    computed = {o for n in ptq.float_model.graph.node for o in n.output}
    assert 1 <= len(points) <= FEATURE_POINTS
    assert all(t in computed and t not in outputs for t in points)
    teacher = Teacher(with_outputs(ptq.float_model, list(points)), student.input_names,
                      student.output_names + list(points))
    x = stack(student.samples[:4], student.input_names)
    target = teacher(x)[len(student.output_names):]
    # the teacher's extra outputs are the float model's own values of those tensors
    plain = open_session(with_outputs(ptq.float_model, list(points)), level="disable")
    direct = plain.run(list(points), {student.input_names[0]: x[0][:1].numpy()})
    for t, d in zip(target, direct):
        np.testing.assert_allclose(t[:1].numpy(), d, rtol=1e-4, atol=1e-4)
    tap = FeatureTap(student.qat, points)
    student.qat.eval()
    with torch.no_grad():
        student.qat(*x)
    values = tap.take()
    tap.close()
    assert [tuple(v.shape) for v in values] == [tuple(t.shape) for t in target]
    # from the PTQ start the quantized values are close to the float ones, but not equal
    loss = float(feature_loss(values, target))
    assert 0.0 < loss < 0.05
    # the same tensors unquantized: a student that reads the teacher's values has no feature loss
    assert float(feature_loss(target, target)) == 0.0
    for v, t in zip(values, target):
        cos = torch.nn.functional.cosine_similarity(v.flatten(), t.flatten(), dim=0)
        assert float(cos) > 0.98


def test_training_with_features_lowers_the_feature_loss(mnist_npy_folder):
    torch.manual_seed(0)
    r = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=6, ptq_config={}, batch=4,
                 augment=False, quantizer_lr=0.0, lr=0.05, feature_weight=1.0)
    feats = r.report["feature_losses"]
    assert r.report["feature_weight"] == 1.0 and len(r.report["feature_points"]) >= 1
    assert len(feats) == r.steps == len(r.losses)
    assert np.mean(feats[-5:]) < np.mean(feats[:5])
    # the total loss holds the feature term
    assert all(total >= f for total, f in zip(r.losses, feats))


def test_without_feature_weight_nothing_changes(mnist_npy_folder):
    torch.manual_seed(0)
    a = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq_config={}, batch=4)
    torch.manual_seed(0)
    b = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq_config={}, batch=4,
                 feature_weight=0.0)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert b.report["feature_points"] == [] and b.report["feature_losses"] == []


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "1", True])
def test_bad_feature_weight_is_a_coded_error(mnist_npy_folder, bad):
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, feature_weight=bad)
    assert e.value.code == "NPF_QAT_BAD_OPTION"


def test_cli_bad_feature_weight_is_a_coded_error(cli, mnist_npy_folder, tmp_path):
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", mnist_npy_folder, "--epochs", "1",
              "--feature-weight", "-2", "-o", tmp_path / "out")
    assert res.returncode == 2
    assert "ERROR [NPF_QAT_BAD_OPTION]" in res.stderr and "feature_weight" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_two_processes_distil_the_features_as_one(start, mnist_npy_folder):
    """With ``nproc`` 2 each rank's teacher returns the same points and its feature term is
    weighted by its share, so the global batch's feature loss per step is one process's."""
    ptq, _ = start
    kw = dict(epochs=1, batch=4, augment=False, feature_weight=1.0, ptq=ptq)
    one = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), **kw)
    two = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), nproc=2, **kw)
    assert two.report["processes"] == 2 and two.report["feature_points"] == one.report["feature_points"]
    assert len(two.report["feature_losses"]) == one.steps
    np.testing.assert_allclose(two.report["feature_losses"], one.report["feature_losses"], rtol=1e-3)
    np.testing.assert_allclose(two.losses, one.losses, rtol=1e-3)
