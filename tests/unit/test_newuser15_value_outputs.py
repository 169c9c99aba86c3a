"""Integer and bool outputs in quantize's accuracy check (new-user round 15): a Sobel edge mask
``magnitude > 0.5`` flipped 4.8 % of its pixels on B4096, and quantize printed "bool output:
compared by value, not by a cosine" without comparing anything.  The report now says what share
of such an output's values equal the float model's on the calibration samples."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

import npuflow


class _Sobel(nn.Module):
    """Grey image -> Sobel magnitude, the edge mask ``magnitude > 0.5`` and the strongest row (int64)."""

    def __init__(self) -> None:
        super().__init__()
        k = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]])
        self.register_buffer("k", torch.stack([k, k.t()])[:, None])

    def forward(self, x):
        e = F.conv2d(x.mean(1, keepdim=True), self.k, padding=1)
        m = torch.sqrt((e * e).sum(1, keepdim=True) + 1e-6)
        return m, m > 0.5, m.mean(3).argmax(2)


def test_an_integer_or_bool_output_reports_the_share_of_equal_values(tmp_path):
    path = str(tmp_path / "sobel.onnx")
    torch.onnx.export(_Sobel().eval(), (torch.rand(1, 3, 32, 32),), path, input_names=["x"],
                      output_names=["mag", "edges", "row"], opset_version=17, dynamo=False)
    rng = np.random.default_rng(0)
    calib = [rng.random((1, 3, 32, 32), dtype=np.float32) for _ in range(6)]
    q = npuflow.quantize(path, calib, "DPUCZDX8G_ISA1_B4096", warn=False)
    fp32 = ort.InferenceSession(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    quant = ort.InferenceSession(q.model.SerializeToString(), options)
    pairs = [(fp32.run(None, {"x": x}), quant.run(None, {"x": x})) for x in calib]
    for k, name, dtype in ((1, "edges", "bool"), (2, "row", "int64")):
        equal = sum(int(np.count_nonzero(a[k] == b[k])) for a, b in pairs)
        share = 100.0 * equal / sum(a[k].size for a, _ in pairs)
        text = q.report.unmeasured[name]
        assert text.startswith(f"{dtype} output, compared by value")
        assert f"{share:.2f} % of its values equal the float model's on 6 of 6 samples" in text, (text, share)
    assert "mag" in q.report.calibration_outputs and "edges" not in q.report.calibration_outputs
    edges_share = float(q.report.unmeasured["edges"].split(": ")[1].split(" %")[0])
    assert edges_share < 100.0  # the mask does flip on the 8-bit grid: the report must show it
