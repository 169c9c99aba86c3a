"""A timm ViT block's ``q, k, v = qkv[0], qkv[1], qkv[2]`` on the accelerators (session 33, newops2 item 2).

Every exporter writes ``Reshape(B, N, 3, H, D) -> Transpose(2, 0, 3, 1, 4) -> Gather(0|1|2, axis 0)``;
c29cdb7's pass (``passes/gather_slice.py``) makes each constant-index Gather a Slice + Squeeze,
which B4096 and cpu-int8 run (the three land in the integer program as ``strided_slice`` ops).
bernoulli2 has no BPU transpose (seed 004), so the Transpose and the slices after it stay on the
CPU, which the Softmax and the activation x activation MatMuls of the attention need anyway.
"""

from __future__ import annotations

import io

import onnx
import pytest
import torch
from torch import nn

import npuflow
from tests.unit.quant_nets import samples

SHAPE = [1, 16, 32]


class _Attention(nn.Module):
    """timm's ``Attention`` (fused qkv Linear, 4 heads)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = ((q @ k.transpose(-2, -1)) * self.head_dim ** -0.5).softmax(dim=-1)
        return self.proj((a @ v).transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    def __init__(self, dim: int = 32):
        super().__init__()
        self.n1, self.attn, self.n2 = nn.LayerNorm(dim), _Attention(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim * 4), nn.Linear(dim * 4, dim)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.n2(x))))


def _export(opset: int, dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    block, example = _Block().eval(), torch.randn(*SHAPE)
    if dynamo:
        return torch.onnx.export(block, (example,), input_names=["x"], output_names=["y"], opset_version=opset,
                                 dynamo=True).model_proto
    buf = io.BytesIO()
    torch.onnx.export(block, example, buf, input_names=["x"], output_names=["y"], opset_version=opset, dynamo=False)
    return onnx.load_from_string(buf.getvalue())


EXPORTS = [(13, False), (17, False), (18, True)]


def _qkv_slices(report) -> list:
    """The Slice + Squeeze pairs the three constant-index Gathers became."""
    return [n for n in report.nodes if n.op_type in ("Slice", "Squeeze")]


@pytest.mark.parametrize(("opset", "dynamo"), EXPORTS)
def test_the_three_qkv_gathers_are_accelerator_slices_where_the_target_has_a_transpose(opset, dynamo):
    model = _export(opset, dynamo)
    assert sum(n.op_type == "Gather" for n in model.graph.node) == 3
    for target in ("DPUCZDX8G_ISA1_B4096", "cpu-int8"):
        slices = _qkv_slices(npuflow.check(model, target))
        assert len(slices) == 6 and {n.device for n in slices} == {"NPU"}, target
    slices = _qkv_slices(npuflow.check(model, "bernoulli2"))
    assert len(slices) == 6 and {n.device for n in slices} == {"CPU"}
    assert all("only moves data that comes from the CPU" in n.reasons[-1] for n in slices)


def test_the_compiled_b4096_program_slices_q_k_and_v():
    q = npuflow.quantize(_export(13, False), [{"x": s} for s in samples(SHAPE, n=8)], target="DPUCZDX8G_ISA1_B4096",
                         warn=False)
    ops = [op["kind"] for sg in npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").subgraphs if sg.on_accelerator
           for op in sg.ops]
    assert ops.count("strided_slice") == 3
