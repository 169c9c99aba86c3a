"""Models exported by TorchScript with a dynamic batch: the float passes that need a view's shape see it.

The export computes ``x.view(b, r, c // r, h, w)``'s target from ``Shape`` at run time, through a
``Div`` and ``Cast`` ONNX's data propagation does not follow, so ONNX gives the view no shape.
``short_sums_as_adds`` then left the sums as ``ReduceSum`` (CPU on every target) in the dynamic graph
quantize optimises, while check of ``q.float_model`` (that graph frozen at the first sample's shape)
rewrote them: check placed the sums on the accelerator, and compile gave 13 subgraphs on cpu-int8 and
bernoulli2 against 5 for the same model loaded with ``input_shapes``.  The pass now reads the radix
axis's size from ONNX Runtime's symbolic inference, which proves it with the batch left a symbol
(``value_info.dims_of``), as do the head and constant-left ``MatMul`` rewrites.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import npuflow
from npuflow.graph import is_qdq
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.unit.quant_nets import run
from tests.unit.test_placement_agreement import _sides, compiled_devices

SHAPE = [1, 3, 16, 16]


class _SplitAttention(nn.Module):
    """ResNeSt's split attention (radix 2): two radix sums, ``view(b, r, c, h, w).sum(1)``."""

    def __init__(self, c: int, r: int = 2) -> None:
        super().__init__()
        self.r = r
        self.conv = nn.Conv2d(c, c * r, 3, padding=1, groups=r)
        self.fc1, self.fc2 = nn.Conv2d(c, 8, 1), nn.Conv2d(8, c * r, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        b, rc, h, w = x.shape
        split = x.view(b, self.r, rc // self.r, h, w)
        atten = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(split.sum(dim=1), 1))))
        atten = atten.view(b, self.r, -1).softmax(1).view(b, self.r, rc // self.r, 1, 1)
        return (atten * split).sum(dim=1)


class _ResNeStLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.b1, self.b2, self.head = nn.Conv2d(3, 16, 3, padding=1), _SplitAttention(16), \
            _SplitAttention(16), nn.Conv2d(16, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.b2(self.b1(F.relu(self.stem(x)))))


class _HeadsLike(nn.Module):
    """BoTNet's per-head constant product ``q @ P`` and Linformer's ``E @ k`` on views of a dynamic batch."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.p, self.e = nn.Parameter(torch.randn(1, 4, 8, 16) * 0.3), nn.Parameter(torch.randn(16, 256) * 0.05)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.stem(x))
        b, c, h, w = x.shape
        logits = x.view(b, 4, c // 4, h * w).transpose(-1, -2) @ self.p
        return logits, self.e @ x.view(b, c, h * w).transpose(1, 2)


def _export(module: nn.Module, path: Path, outputs: list[str]) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(module.eval(), torch.randn(*SHAPE), str(path), input_names=["x"], output_names=outputs,
                      dynamic_axes={"x": {0: "b"}, **{o: {0: "b"} for o in outputs}}, opset_version=13, dynamo=False)
    return path


@pytest.fixture(scope="module")
def dynamic_batch(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return _export(_ResNeStLike(), tmp_path_factory.mktemp("resnest") / "resnest_dyn.onnx", ["y"])


def _calib() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(4)]


def test_the_radix_sums_are_rewritten_in_the_dynamic_graph_exactly_at_another_batch(dynamic_batch):
    model = onnx.load(str(dynamic_batch))
    opt = optimize_float(model, load_target("cpu-int8"))
    assert [n for n in opt.graph.node if n.op_type == "ReduceSum"] == []
    x = np.random.default_rng(1).standard_normal([3, *SHAPE[1:]]).astype(np.float32)
    np.testing.assert_allclose(run(opt, {"x": x})[0], run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_check_places_as_compile_lowers_and_the_dynamic_batch_compiles_as_the_fixed_one(dynamic_batch, target):
    runs = {fixed: npuflow.quantize(str(dynamic_batch), _calib(), target=target,
                                    input_shapes={"x": SHAPE} if fixed else None, warn=False)
            for fixed in (False, True)}
    q = runs[False]
    checked = _sides(npuflow.check(q.float_model, target))
    qdq = {n.name for n in q.model.graph.node if is_qdq(n)}
    compiled = {n: s for n, s in compiled_devices(npuflow.compile(q.model, target)).items() if n not in qdq}
    common = [n for n in checked if n in compiled]
    assert len(common) > len(checked) // 2, (len(common), len(checked))
    assert [(n, checked[n], compiled[n]) for n in common if checked[n] != compiled[n]] == []
    counts = {fixed: len(npuflow.compile(r.model, target).subgraphs) for fixed, r in runs.items()}
    assert counts[False] == counts[True], counts


def test_head_and_constant_left_matmuls_of_views_of_a_dynamic_batch_are_rewritten_exactly(tmp_path):
    """The same views hid the ranks and head sizes ``head_matmuls_as_2d`` and
    ``const_left_matmuls_as_right`` need: neither rewrote the dynamic graph, both the frozen one."""
    torch.manual_seed(0)
    model = onnx.load(str(_export(_HeadsLike(), tmp_path / "heads_dyn.onnx", ["y", "z"])))
    opt = optimize_float(model, load_target("cpu-int8"))
    names = {n.name for n in opt.graph.node}
    assert {"/MatMul/head0", "/MatMul/head3", "/MatMul_1/x_t", "/MatMul_1/y_t"} <= names
    x = np.random.default_rng(1).standard_normal([3, *SHAPE[1:]]).astype(np.float32)
    for got, want in zip(run(opt, {"x": x}), run(model, {"x": x})):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
