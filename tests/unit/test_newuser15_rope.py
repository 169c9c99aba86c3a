"""Rotary position embedding (RoPE) computed in the graph, as Hugging Face's Llama rotary module
exports it (new-user round 15, open item 4): ``inv_freq @ position_ids`` (a MatMul), transpose,
``cat([f, f])``, then ``cos``/``sin`` multiply the query and its rotated half.  With positions up to
~2000 the phase spans ~2000 rad, which no 8-bit grid can carry; the Sin/Cos input cone
(:data:`npuflow.operators.PHASE_CARRYING_OPS`, MatMul included) must stay float on cpu-int8 while
the projections around it are quantized."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import npuflow
from npuflow.quant.agreement import cosine as _cos
from tests.unit.test_placement_agreement import _sides, compiled_devices, sides_differing

T, D = 64, 32
PHASE = ("/MatMul", "/Transpose", "/Concat")  # inv_freq @ positions, transpose, cat([f, f])


class _Rope(nn.Module):
    """A query projection rotated by position, then an output projection."""

    def __init__(self, d: int = D, base: float = 10000.0) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / base ** (torch.arange(0, d, 2).float() / d))
        self.q, self.o = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x, pos):
        inv = self.inv_freq[None, :, None].expand(pos.shape[0], -1, 1)
        f = (inv @ pos[:, None, :].float()).transpose(1, 2)
        emb = torch.cat([f, f], -1)
        q = self.q(x)
        h = q.shape[-1] // 2
        rotated = torch.cat([-q[..., h:], q[..., :h]], -1)
        return self.o(q * emb.cos() + rotated * emb.sin())


@pytest.fixture(scope="module")
def rope(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rope") / "rope.onnx"
    torch.onnx.export(_Rope().eval(), (torch.rand(1, T, D), torch.arange(T)[None]), str(path),
                      input_names=["x", "pos"], output_names=["y"], opset_version=17, dynamo=False)
    return str(path)


def _sample(rng: np.random.Generator) -> dict[str, np.ndarray]:
    start = int(rng.integers(0, 2000))
    return {"x": rng.standard_normal((1, T, D)).astype(np.float32),
            "pos": (np.arange(T) + start)[None].astype(np.int64)}



def test_the_rope_phase_stays_float_and_the_output_keeps_fp32_on_cpu_int8(rope, tmp_path):
    target = "cpu-int8"
    rng = np.random.default_rng(0)
    calib = [_sample(rng) for _ in range(8)]
    float_sides = _sides(npuflow.check(rope, target))
    assert [float_sides[n] for n in PHASE] == ["CPU"] * 3
    assert float_sides["/q/MatMul"] == float_sides["/o/MatMul"] == "ACC"  # the projections stay 8-bit
    q = npuflow.quantize(rope, calib, target, warn=False).model
    quantized = {n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
    phase = {o for n in q.graph.node if n.name in PHASE for o in n.output}
    assert phase and not phase & quantized
    assert "/q/Add_output_0" in quantized
    compiled = npuflow.compile(q, target)
    compiled_sides = compiled_devices(compiled)
    assert sides_differing(float_sides, q, compiled_sides, target) == {}

    session = npuflow.Session(compiled.save(str(tmp_path / "rope.npuf")))
    fp32 = ort.InferenceSession(rope)
    cosines = [_cos(session.run(f)["y"], fp32.run(["y"], f)[0]) for f in (_sample(rng) for _ in range(4))]
    assert min(cosines) >= 0.999, cosines  # measured 0.99965-0.99979
