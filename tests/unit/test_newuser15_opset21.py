"""An opset-21 model quantized for B4096 (new-user round 15: a GhostNet exported by torch's dynamo
exporter at opset 21): quantize failed with ``NPF_MODEL_INVALID`` "output_dtype INT8 does not
match y_zero_point type UINT8", blaming the user's exporter.  ONNX Runtime's own int8 -> uint8
rewrite of quantize steps (``QDQS8ToU8Transformer``) breaks opset 21's ``QuantizeLinear``;
:func:`npuflow.ort_session.open_session` now opens such a graph without that rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import version_converter
from torch import nn

import npuflow


class _Net(nn.Module):
    """Conv, ReLU, a Reshape between two quantize steps, 1x1 Conv: the smallest graph that failed."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.d(torch.relu(self.c(x)).view(1, 8, 64).view(1, 8, 8, 8))


def test_an_opset_21_model_quantizes_compiles_and_runs_exactly_on_b4096(tmp_path):
    torch.manual_seed(0)
    path = str(tmp_path / "net17.onnx")
    torch.onnx.export(_Net().eval(), (torch.rand(1, 3, 8, 8),), path, input_names=["x"], opset_version=17,
                      dynamo=False)
    model = version_converter.convert_version(onnx.load(path), 21)
    rng = np.random.default_rng(0)
    calib = [rng.random((1, 3, 8, 8), dtype=np.float32) for _ in range(4)]
    q = npuflow.quantize(model, calib, "DPUCZDX8G_ISA1_B4096", warn=False)  # before: NPF_MODEL_INVALID
    session = npuflow.Session(npuflow.compile(q, "DPUCZDX8G_ISA1_B4096").save(str(tmp_path / "net.npuf")))
    x = rng.random((1, 3, 8, 8), dtype=np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), options).run(None, {"x": x})[0]
    got = np.asarray(next(iter(session.run({"x": x}).values())))
    assert np.array_equal(got, ref)
