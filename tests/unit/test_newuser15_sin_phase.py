"""A NeRF positional encoding ``sin(p * 2**k * pi)`` on cpu-int8 (new-user round 15): the phase
``p * freq`` reaches ~100 rad, its 8-bit grid steps 0.8 rad, and the sine of it is noise; the
density output read cosine 0.955 to FP32 with no warning (the default threshold is 0.95), while
B4096 and bernoulli2 happened to keep the phase float.  The input cone of a ``Sin``/``Cos``
(:data:`npuflow.operators.PERIODIC_OPS`) now stays float on the CPU as a ``Log``'s does
(:func:`npuflow.check.cone.relative_precision_cones`), in check as in quantize and compile."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import npuflow
from npuflow.quant.agreement import cosine as _cos
from tests.unit.test_placement_agreement import _sides, compiled_devices, sides_differing


class _NeRF(nn.Module):
    """Round 15's MLP: encoding ``[p, sin(p * f), cos(p * f)]``, skip concat, rgb and density heads."""

    def __init__(self, bands: int = 6, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("freq", 2.0 ** torch.arange(bands) * 3.14159)
        d = 3 + 6 * bands
        self.a = nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.b = nn.Sequential(nn.Linear(width + d, width), nn.ReLU(), nn.Linear(width, width))
        self.sig, self.rgb = nn.Linear(width, 1), nn.Linear(width, 3)

    def forward(self, p):
        e = (p[..., None] * self.freq).flatten(-2)
        enc = torch.cat([p, torch.sin(e), torch.cos(e)], -1)
        h = self.b(torch.cat([self.a(enc), enc], -1))
        return torch.sigmoid(self.rgb(h)), F.relu(self.sig(h))


@pytest.fixture(scope="module")
def nerf(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("nerf") / "nerf.onnx"
    torch.onnx.export(_NeRF().eval(), (torch.rand(1, 512, 3) * 2 - 1,), str(path), input_names=["x"],
                      output_names=["rgb", "sigma"], opset_version=17, dynamo=False)
    return str(path)


def _points(rng: np.random.Generator) -> np.ndarray:
    return (rng.random((1, 512, 3), dtype=np.float32) * 2 - 1).astype(np.float32)



@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_the_phase_of_a_sine_stays_float_and_the_density_keeps_fp32(nerf, target, tmp_path):
    rng = np.random.default_rng(0)
    calib = [_points(rng) for _ in range(8)]
    report = npuflow.check(nerf, target)
    float_sides = _sides(report)
    q = npuflow.quantize(nerf, calib, target, warn=False).model
    compiled = npuflow.compile(q, target)
    compiled_sides = compiled_devices(compiled)
    assert sides_differing(float_sides, q, compiled_sides, target) == {}
    assert [float_sides[n] for n in ("/Mul", "/Reshape")] == ["CPU", "CPU"]
    if target == "cpu-int8":  # the DPUs already have no Mul by a broadcast constant vector
        assert "feeds Sin '/Sin'" in " ".join(next(n.reasons for n in report.nodes if n.name == "/Mul"))
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    phase = {o for n in q.graph.node if n.name in ("/Mul", "/Reshape") for o in n.output}
    assert not phase & quantized  # before: /Mul's output on an 8-bit grid of +-100 rad on cpu-int8

    session = npuflow.Session(compiled.save(str(tmp_path / "nerf.npuf")))
    fp32 = ort.InferenceSession(nerf)
    cosines = []
    for _ in range(4):
        x = _points(rng)
        cosines.append(_cos(session.run({"x": x})["sigma"], fp32.run(["sigma"], {"x": x})[0]))
    assert np.mean(cosines) >= 0.995, cosines  # before on cpu-int8: 0.958 (0.953-0.966)


def test_a_sine_of_a_shared_feature_keeps_the_feature_quantized(tmp_path):
    """The cone takes only what the sine alone reads: a Linear read by the sine and by the head stays
    on its 8-bit grid (a SIREN-like layer whose output other work reads is not pulled into float)."""
    torch.manual_seed(0)

    class _Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(8, 16), nn.Linear(32, 4)

        def forward(self, x):
            h = self.f(x)
            return self.g(torch.cat([h, torch.sin(h)], -1))

    path = str(tmp_path / "shared.onnx")
    torch.onnx.export(_Shared().eval(), (torch.rand(1, 8),), path, input_names=["x"], opset_version=17, dynamo=False)
    sides = _sides(npuflow.check(path, "cpu-int8"))
    assert sides["/f/Gemm"] == "ACC"
