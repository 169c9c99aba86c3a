"""The token mean of a TorchScript export with a dynamic batch (newuser_flows27: CoAtNet-lite's ``t.mean(1)``
after ``x.flatten(2).transpose(1, 2)``).  The export computes the flatten's target from ``Shape`` at run time,
so ONNX and ONNX Runtime's symbolic inference leave the token count unknown ('unk__0'): ``ops_1d_as_2d`` left
the mean a ``ReduceMean`` in the dynamic graph quantize optimises (CPU: "reduce_mean has no DPU implementation")
while check of the frozen graph made it an ``AveragePool`` on the DPU (CoAtNet on DPUCZDX8G: check 13 DPU
subgraphs, compile 14).  Now the pass reads, at the frozen shape, the sizes that do not change with the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import npuflow
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.unit.quant_nets import run

SHAPE = [1, 3, 8, 8]
DPU = "DPUCZDX8G_ISA1_B4096"


class _TokenHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.mix, self.fc = nn.Conv2d(3, 16, 3, 2, 1), nn.Linear(16, 16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.relu(self.stem(x)).flatten(2).transpose(1, 2)
        return self.fc(torch.relu(self.mix(t)).mean(1))


def _export(path: Path) -> onnx.ModelProto:
    torch.manual_seed(0)
    torch.onnx.export(_TokenHead().eval(), torch.randn(*SHAPE), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=13, dynamo=False)
    return onnx.load(str(path))


def test_token_mean_of_a_dynamic_batch_becomes_a_pool_exact_at_another_batch(tmp_path):
    model = _export(tmp_path / "token_head.onnx")
    opt = optimize_float(model, load_target(DPU), static_inputs={"x": SHAPE})
    assert "ReduceMean" not in [n.op_type for n in opt.graph.node]
    x = np.random.default_rng(1).standard_normal([3, *SHAPE[1:]]).astype(np.float32)
    np.testing.assert_allclose(run(opt, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_check_and_compile_agree_on_the_token_mean(tmp_path):
    model = _export(tmp_path / "token_head.onnx")
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, samples, target=DPU, warn=False)
    checked = npuflow.check(model, DPU, input_shapes={"x": SHAPE})
    compiled = npuflow.compile(q.model, DPU)
    assert sum(sg.on_accelerator for sg in compiled.subgraphs) == checked.summary["npu_subgraphs"] == 1


def test_token_mean_wider_than_bernoulli2s_window_is_cascaded_in_the_dynamic_graph_too(tmp_path):
    """bernoulli2's average pool window is at most 7: the 16-token mean becomes a cascade in check (frozen graph);
    the dynamic graph quantize optimises did not know the pool's size and left one 16 x 1 pool (CPU): check 1
    BPU subgraph, compile 2 (CoAtNet-lite: check 4, compile 5, after the fix above)."""
    model = _export(tmp_path / "token_head.onnx")
    opt = optimize_float(model, load_target("bernoulli2"), static_inputs={"x": SHAPE})
    pools = [n for n in opt.graph.node if n.op_type == "AveragePool"]
    assert len(pools) > 1, [n.name for n in pools]
    x = np.random.default_rng(1).standard_normal([3, *SHAPE[1:]]).astype(np.float32)
    np.testing.assert_allclose(run(opt, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    rng = np.random.default_rng(2)
    samples = [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, samples, target="bernoulli2", warn=False)
    checked = npuflow.check(model, "bernoulli2", input_shapes={"x": SHAPE})
    compiled = npuflow.compile(q.model, "bernoulli2")
    assert sum(sg.on_accelerator for sg in compiled.subgraphs) == checked.summary["npu_subgraphs"]
