"""A seam whose tensor is read again later joins (runtime/joined.py, ``code_round_trips``).

EdgeNeXt on cpu-int8 ran as two ONNX Runtime calls a frame where its steps join into one: joined,
ONNX Runtime's transpose optimiser moves the layout ``Transpose`` of the stem LayerNorm's CPU part and
the cancelling one of the next fused run across the seam's quantize step, and writes a
``DequantizeLinear -> QuantizeLinear`` pair of one scale and zero point for the residual that reads the
seam tensor again; ``same_kernels`` counted that pair as two kernels more than the parts run and refused
the stretch.  Such a pair gives back its codes (checked on all 256), so it no longer counts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime import joined


class _LayerNorm(nn.Module):
    """``nn.LayerNorm`` of a channels-first map, on its channels-last view (EdgeNeXt's stem and downsampling)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(c, eps=1e-6)

    def forward(self, x):
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Block(nn.Module):
    """EdgeNeXt's conv encoder: depthwise conv, LayerNorm and MLP channels-last, the residual."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.ln = nn.LayerNorm(c, eps=1e-6)
        self.l1, self.l2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, x):
        return x + self.l2(F.gelu(self.l1(self.ln(self.dw(x).permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)


class _EdgeNeXtLike(nn.Module):
    def __init__(self, c=(8, 16)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c[0], 4, 4), _LayerNorm(c[0]))
        self.block = _Block(c[0])
        self.down = nn.Sequential(_LayerNorm(c[0]), nn.Conv2d(c[0], c[1], 2, 2))
        self.head = nn.Linear(c[1], 4)

    def forward(self, x):
        return self.head(self.down(self.block(self.stem(x))).mean((2, 3)))


def compile_edgenext_like(tmp_path_factory, target: str):
    """The EdgeNeXt-like net exported at opset 17, quantized on 8 seeded inputs and compiled for ``target``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("edgenext") / "edgenext.onnx"
    torch.onnx.export(_EdgeNeXtLike().eval(), (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    return npuflow.compile(npuflow.quantize(str(path), calibration, target=target).model, target)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_edgenext_like(tmp_path_factory, "cpu-int8")


def test_the_frame_is_one_call_equal_to_the_kernels(compiled, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the join's verdict found here, not one stored before
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    assert len(compiled.subgraphs) > 2
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
        a, b = session.run(x), ref.run(x)
        assert np.array_equal(a["y"], b["y"])


def _pair(scales: tuple[float, float], zps: tuple[int, int]) -> helper.GraphProto:
    """x -> DequantizeLinear -> QuantizeLinear -> y with these scales and uint8 zero points."""
    inits = [numpy_helper.from_array(np.float32(scales[0]).reshape(()), "s0"),
             numpy_helper.from_array(np.float32(scales[1]).reshape(()), "s1"),
             numpy_helper.from_array(np.uint8(zps[0]).reshape(()), "z0"),
             numpy_helper.from_array(np.uint8(zps[1]).reshape(()), "z1")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s0", "z0"], ["v"], axis=1),
             helper.make_node("QuantizeLinear", ["v", "s1", "z1"], ["y"], axis=1)]
    return helper.make_graph(nodes, "pair", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4])],
                             [helper.make_tensor_value_info("y", TensorProto.UINT8, [4])], inits)


def test_only_a_pair_of_one_scale_and_zero_point_is_a_round_trip():
    assert joined.code_round_trips(_pair((0.02, 0.02), (7, 7))) == {("", "DequantizeLinear"): 1, ("", "QuantizeLinear"): 1}
    assert not joined.code_round_trips(_pair((0.02, 0.03), (7, 7)))  # a requantisation
    assert not joined.code_round_trips(_pair((0.02, 0.02), (7, 8)))
