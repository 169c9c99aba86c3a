"""A real Brevitas QCDQ export (``export_onnx_qcdq``: ``Clip`` between the quantize steps of 4-6-bit
weights and 4-6-bit activations; Conv, depthwise Conv, MaxPool, Flatten, Linear as Transpose +
MatMul) is placed by ``check`` node for node as ``compile`` partitions it, and the ``.npuf`` equals
ONNX Runtime on the legalised model.  Before check ran compile's QCDQ legalisation
(``npuflow/check/qcdq.py``) it put 0 of 22 nodes on the accelerator and 7 nodes differed from
compile on cpu-int8 and bernoulli2."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.check.report import CPU
from npuflow.compiler import foreign
from npuflow.targets import load_target
from tests.qdq_builder import ort_values
from tests.unit.test_placement_agreement import compiled_devices

pytestmark = pytest.mark.models
DPU = "DPUCZDX8G_ISA1_B4096"


def _export(path: Path, fixed_point: bool) -> onnx.ModelProto:
    """A small Brevitas network, calibrated on 4 seeded batches and exported as QCDQ;
    ``fixed_point``: Brevitas' power-of-two quantizers (what a DPU runs), else its float-scale
    defaults."""
    import brevitas.nn as qnn
    import torch
    from brevitas.export import export_onnx_qcdq
    from brevitas.graph.calibrate import calibration_mode
    from brevitas import quant

    act = {"act_quant": quant.Int8ActPerTensorFixedPoint} if fixed_point else {}
    uact = {"act_quant": quant.Uint8ActPerTensorFixedPoint} if fixed_point else {}
    wq = {"weight_quant": quant.Int8WeightPerTensorFixedPoint} if fixed_point else {}

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = qnn.QuantIdentity(return_quant_tensor=True, **act)
            self.c1 = qnn.QuantConv2d(3, 8, 3, padding=1, weight_bit_width=4, bias=False, return_quant_tensor=True, **wq)
            self.r1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True, **uact)
            self.dw = qnn.QuantConv2d(8, 8, 3, padding=1, groups=8, weight_bit_width=6, bias=False,
                                      return_quant_tensor=True, **wq)
            self.r2 = qnn.QuantReLU(bit_width=6, return_quant_tensor=True, **uact)
            self.pool = torch.nn.MaxPool2d(2)
            self.fc = qnn.QuantLinear(8 * 4 * 4, 10, weight_bit_width=5, bias=False, **wq)

        def forward(self, x):
            x = self.pool(self.r2(self.dw(self.r1(self.c1(self.inp(x))))))
            return self.fc(x.flatten(1))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad(), calibration_mode(net):
        for _ in range(4):
            net(torch.randn(2, 3, 8, 8))
    export_onnx_qcdq(net, torch.randn(1, 3, 8, 8), export_path=str(path), dynamo=False, input_names=["input"])
    return onnx.load(str(path))


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", DPU])
def test_brevitas_qcdq_export_check_agrees_with_compile_node_for_node(target, tmp_path):
    model = _export(tmp_path / "net.onnx", fixed_point=target == DPU)
    clips = [n for n in model.graph.node if n.op_type == "Clip"]
    assert len(clips) >= 5  # three weights, two narrowed activations
    report = npuflow.check(model, target)
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in report.nodes}
    compiled = npuflow.compile(model, target)
    sides = compiled_devices(compiled)
    both = checked.keys() & sides.keys()
    assert len(both) >= 10
    assert {k: (checked[k], sides[k]) for k in both if checked[k] != sides[k]} == {}
    assert checked["/c1/Conv"] == checked["/dw/Conv"] == "ACC"
    assert not {c.name for c in clips} & checked.keys()  # folded, as compile's legalisation folds them
    legal = copy.deepcopy(model)
    foreign.legalize(legal, load_target(target))
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32) * 2
    out = model.graph.output[0].name
    got = npuflow.Session(compiled).run({"input": x})[out]
    np.testing.assert_array_equal(got, ort_values(legal, {"input": x}, [out])[out])


def test_brevitas_qcdq_classifier_stays_float_in_an_exported_model(tmp_path):
    """The classifier's float ``Linear`` (weight ``DequantizeLinear -> Transpose -> MatMul``, in the CPU
    subgraph since the partition joins a weight's steps to their reader) runs in float in the user's own
    ONNX Runtime session of ``npuflow.ort_export``'s model as in ``npuflow.Session``: ORT's default level
    would run it as ``MatMulNBits``, which quantizes its input (0.0024 off, session 36)."""
    import onnxruntime as ort

    from npuflow import ort_export

    model = _export(tmp_path / "net.onnx", fixed_point=False)
    path = npuflow.compile(model, "cpu-int8").save(tmp_path / "net.npuf")
    ort_export.export(path, tmp_path / "net_ort.onnx")
    assert {p.key: p.value for p in onnx.load(str(tmp_path / "net_ort.onnx")).metadata_props}[ort_export.LEVEL_KEY] == "all"
    sess = ort.InferenceSession(str(tmp_path / "net_ort.onnx"), ort_export.session_options(tmp_path / "net_ort.onnx"),
                                providers=["CPUExecutionProvider"])
    session = npuflow.Session(npuflow.CompiledModel.load(path))
    legal = copy.deepcopy(model)
    foreign.legalize(legal, load_target("cpu-int8"))
    out = model.graph.output[0].name
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((1, 3, 8, 8)).astype(np.float32) * 2
        want = ort_values(legal, {"input": x}, [out])[out]
        np.testing.assert_array_equal(session.run({"input": x})[out], want)
        np.testing.assert_array_equal(sess.run([out], {"input": x})[0], want)


@pytest.mark.parametrize("name, target", [("brevitas/mnist_cnn-qcdq", "cpu-int8"), ("brevitas/mnist_cnn-qcdq", "bernoulli2"),
                                          ("brevitas/mnist_cnn-flexml-qcdq", DPU)])
def test_brevitas_mnist_corpus_check_agrees_with_compile(name, target):
    """The corpus' Brevitas MNIST CNNs (clips on every weight): before, check put 8 of 42 nodes on the
    accelerator and 16 of the 21 nodes both name differed from compile; after, every node agrees."""
    from tests.corpus.foreign import FOREIGN
    from tests.fixture_models import CACHE

    model = onnx.load(str(next(m for m in FOREIGN if m.name == name).make(CACHE)))
    checked = {n.name: ("CPU" if n.device == CPU else "ACC") for n in npuflow.check(model, target).nodes}
    sides = compiled_devices(npuflow.compile(model, target))
    both = checked.keys() & sides.keys()
    assert len(both) >= 20
    assert {k: (checked[k], sides[k]) for k in both if checked[k] != sides[k]} == {}
    assert sum(op_type == "Conv" and checked[n] == "ACC" for n, op_type in
               ((n.name, n.op_type) for n in model.graph.node)) == 3
