"""Tensor names TorchScript refuses: models exported by torch have all-digit names (openWakeWord's
classifiers return ``13``), and ``npuflow qat`` failed on them at its export
(``NPF_TORCH_EXPORT_FAILED: Invalid name: '13'``)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from npuflow.torch.export import torch_to_onnx


def test_all_digit_input_and_output_names_survive_the_export():
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Sigmoid()).eval()
    x = torch.randn(2, 4)
    model = torch_to_onnx(module, (x,), ["0"], ["13"])
    assert [i.name for i in model.graph.input] == ["0"] and [o.name for o in model.graph.output] == ["13"]
    assert not any("__npuflow" in t for n in model.graph.node for t in [*n.input, *n.output])
    got = ort.InferenceSession(model.SerializeToString()).run(["13"], {"0": x.numpy()})[0]
    np.testing.assert_allclose(got, module(x).detach().numpy(), rtol=1e-6, atol=1e-6)
