"""A joined session keeps the ``Add`` of a zero zero point that the CPU part apart runs (runtime/joined.py).

On B4096 a CPU part's quantize step rounds half up (an inlined ``ai.npuflow`` function) and adds its zero
point, 0 there, as an ``Add``.  ONNX Runtime's ``NoopElimination`` drops an ``Add`` of a constant zero only
where it knows the other operand's rank: apart, the part's session does not (the function's inner tensors
carry no shapes), joined behind a fused run's shaped output it does, so the joined graph ran one ``Add``
fewer per seam and every stretch was refused (openWakeWord's embedding: 12 ONNX Runtime calls a frame).
``joined.KEEP_NOOPS``, the second choice of options, turns that elimination off: the parts' kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuflow
from npuflow.runtime import joined

TARGET = "DPUCZDX8G_ISA1_B4096"


class _ConvPoolNet(torch.nn.Module):
    """conv -> PReLU -> MaxPool -> conv -> PReLU -> MaxPool -> conv: CPU islands between DPU programs."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 16, 3), torch.nn.Conv2d(16, 8, 1)
        self.p1, self.p2 = torch.nn.PReLU(8), torch.nn.PReLU(16)
        self.pool = torch.nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.p1(self.c1(x)))
        return self.c3(self.pool(self.p2(self.c2(x))))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    torch.manual_seed(0)
    net = _ConvPoolNet().eval()
    with torch.no_grad():
        for p in (net.p1, net.p2):
            p.weight.uniform_(0.05, 0.4)
    path = tmp_path_factory.mktemp("conv_pool") / "net.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 24, 24),), str(path), dynamo=False, opset_version=13,
                      input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 24, 24)).astype(np.float32)} for _ in range(8)]
    return npuflow.compile(npuflow.quantize(str(path), calibration, target=TARGET).model, TARGET)


def test_zero_point_add_islands_join_and_equal_the_kernels(compiled, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the join's verdicts found here, not stored before
    assert sum(not s.on_accelerator for s in compiled.subgraphs) >= 2
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps  # one ONNX Runtime call a frame
    assert isinstance(step.executor, joined.Joined)
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = {"x": (rng.standard_normal((1, 3, 24, 24)) * rng.uniform(0.5, 2)).astype(np.float32)}
        assert np.array_equal(session.run(x)["y"], ref.run(x)["y"])


def test_an_opset_13_pad_means_the_same_in_an_opset_18_joined_graph():
    """openWakeWord's first CPU subgraph (opset 13) pads its input: ``Pad`` 18 only added the optional
    ``axes`` input, so the node joins the opset-18 fused runs as it is (it stayed a call of its own: 2 -> 1)."""
    from onnx import helper
    pad = helper.make_node("Pad", ["x", "pads", "value"], ["y"], mode="constant")
    assert joined._restated(pad, "", 13, 18) == [pad]
    clip = helper.make_node("Clip", ["x"], ["y"], min=0.0, max=6.0)  # Clip 6 -> 13: attributes became inputs
    assert joined._restated(clip, "", 6, 13) is None
