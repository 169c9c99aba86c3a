"""``npuflow.torch.quantize`` on modules a notebook user writes (newuser round 5).

Before: an eval-mode ``nn.MultiheadAttention`` failed with NPF_TORCH_EXPORT_FAILED ("Exporting the
operator 'aten::_native_multi_head_attention' to ONNX opset version 17 is not supported": the export
ran under ``no_grad``, which takes torch's fused fast path); a module returning a dict had outputs
named ``output`` and ``8`` (torch's tensor number) instead of its keys.  Now the attention is
exported as its MatMul/Softmax graph and a dict's keys name the outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import npuflow
import npuflow.torch as nt
from npuflow.torch.ptq import export_float


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x)[0])


class _DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feat = F.relu(self.conv(x))
        return {"feat": feat, "logits": self.fc(feat.mean((2, 3)))}


def test_eval_multihead_attention_quantizes_and_compiles():
    torch.manual_seed(0)
    module = _Attention().eval()
    calib = [torch.randn(1, 6, 16) for _ in range(8)]
    q = nt.quantize(module, calib[0], calib, "cpu-int8")
    assert q.report.outputs["output"] > 0.999
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the export
    x = calib[1].numpy()
    got = npuflow.Session(npuflow.compile(q.model, "cpu-int8")).run({"input": x})["output"]
    with torch.no_grad():
        ref = module(calib[1]).numpy()
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def test_dict_output_keys_name_the_onnx_outputs():
    torch.manual_seed(0)
    module = _DictOut().eval()
    calib = [torch.randn(1, 3, 8, 8) for _ in range(4)]
    q = nt.quantize(module, calib[0], calib, "cpu-int8")
    assert [o.name for o in q.model.graph.output] == ["feat", "logits"]
    assert set(q.report.outputs) == {"feat", "logits"}
    float_out = ort.InferenceSession(export_float(module, calib[0]).SerializeToString())
    got = dict(zip([o.name for o in float_out.get_outputs()], float_out.run(None, {"input": calib[0].numpy()})))
    with torch.no_grad():
        ref = module(calib[0])
    np.testing.assert_allclose(got["logits"], ref["logits"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["feat"], ref["feat"].numpy(), rtol=1e-4, atol=1e-5)


def test_dict_output_keys_name_the_qat_export(tmp_path):
    torch.manual_seed(0)
    module = _DictOut().eval()
    example = torch.randn(1, 3, 8, 8)
    qat = nt.prepare_qat(module, example, "DPUCZDX8G_ISA1_B4096")
    assert qat.output_names == ["feat", "logits"]
    qat(example)
    nt.export_qat(qat, tmp_path / "qat.onnx")
    exported = onnx.load(tmp_path / "qat.onnx")
    assert [o.name for o in exported.graph.output] == ["feat", "logits"]
    shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in exported.graph.output}
    assert shapes == {"feat": [1, 8, 8, 8], "logits": [1, 3]}
