"""A fixed input dimension resized where the model holds the old size in something other than a
``Reshape`` target: the load's error (``NPF_MODEL_FIXED_INPUT_SHAPE``) and warning name the node.

Round 10: a ViT class token ``cls.expand(x.size(0), -1, -1)``, ``p.repeat(x.size(0), 1)``,
``torch.zeros(x.size(0), 8)``, a positional ``emb(torch.arange(x.size(1)))`` and a slice
``y[..., : x.size(3) // 2]``, traced by torch at one size and asked at another, named no node:
the error blamed the node where shapes first clashed (a Softmax, a Gemm), and the slice loaded
silently, keeping eight columns of a 32-wide input.  Torch folds most of these into stored
constants (with constant folding off it keeps the ``Expand`` / ``Tile`` chains), so the node named
is the one that made the constant where the export kept it, else the one joining it with the data.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from npuflow import model as model_module
from npuflow.errors import NpuflowError

nn = torch.nn


class ClassToken(nn.Module):
    """A ViT's class token joined to the patch tokens: ``expand(x.size(0), -1, -1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 16))
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        return self.fc(torch.cat([self.cls.expand(x.size(0), -1, -1), x], 1)).softmax(-1)


class Repeat(nn.Module):
    """A learnt vector per sample: ``p.repeat(x.size(0), 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.randn(1, 8))
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.cat([x, self.p.repeat(x.size(0), 1)], 1))


class Zeros(nn.Module):
    """Padding features: ``torch.zeros(x.size(0), 8)`` (a ConstantOfShape)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(torch.cat([x, torch.zeros(x.size(0), 8) + 1.0], 1))


class Positions(nn.Module):
    """A positional embedding: ``emb(torch.arange(x.size(1)))`` (a Range)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(x + self.emb(torch.arange(x.size(1))))


class LeftHalf(nn.Module):
    """The left half of a feature map: ``y[..., : x.size(3) // 2]`` (a Slice with a constant end)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x)[:, :, :, : x.size(3) // 2].relu()


class FixedUpsample(nn.Module):
    """A skip connection upsampled to a traced size (``size=``) beside one upsampled by a factor."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        y = self.a(x)
        z = self.b(y)
        up = nn.functional.interpolate(z, size=(x.size(2), x.size(3)), mode="nearest")
        return up + y + nn.functional.interpolate(z, scale_factor=2.0, mode="nearest")


class Broadcast(nn.Module):
    """A pooled vector spread back over the sequence: ``m.expand(-1, x.size(1), -1)``."""

    def forward(self, x):
        return (x.mean(1, keepdim=True).expand(-1, x.size(1), -1) * 2.0).softmax(1)


def _export(module: nn.Module, shape: list[int], path: Path, folding: bool = True) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(module.eval(), (torch.randn(*shape),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False, do_constant_folding=folding)
    return path


def _refusal(path: Path, shape: list[int]) -> str:
    with pytest.raises(NpuflowError) as exc:
        model_module.load(str(path), {"x": shape})
    assert exc.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE", exc.value
    return exc.value.message


@pytest.mark.parametrize("folding", [True, False])
def test_class_token_expand_is_named(tmp_path, folding):
    message = _refusal(_export(ClassToken(), [1, 5, 16], tmp_path / "vit.onnx", folding), [8, 5, 16])
    assert "node '/Expand' (Expand) makes constant '/Expand_output_0' of shape [1, 1, 16]" in message, message
    assert "joins with the input's data, keeps dimension #0 at 1" in message


@pytest.mark.parametrize("folding", [True, False])
def test_repeat_tile_is_named(tmp_path, folding):
    message = _refusal(_export(Repeat(), [1, 16], tmp_path / "tile.onnx", folding), [8, 16])
    assert "node '/Tile' (Tile) makes constant '/Tile_output_0' of shape [1, 8]" in message, message
    assert "keeps dimension #0 at 1" in message


def test_zeros_folded_by_torch_name_the_constant_and_the_concat(tmp_path):
    message = _refusal(_export(Zeros(), [1, 16], tmp_path / "zeros.onnx"), [8, 16])
    assert "constant '/Constant_output_0' of shape [1, 8], which node '/Concat' (Concat) joins" in message, message


def test_positions_folded_by_torch_name_the_embedding_constant_and_the_add(tmp_path):
    message = _refusal(_export(Positions(), [1, 10, 16], tmp_path / "pos.onnx"), [1, 20, 16])
    assert "of shape [10, 16], which node '/Add' (Add) joins with the input's data, keeps dimension #1 at 10" \
        in message, message


def test_a_range_kept_in_the_graph_is_named():
    """torch folds ``arange`` of a traced size; other exporters keep the ``Range`` node."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("zero", 0), ("ten", 10), ("one", 1))]
    inits.append(numpy_helper.from_array(np.random.default_rng(0).random((64, 16), dtype=np.float32), "table"))
    nodes = [helper.make_node("Range", ["zero", "ten", "one"], ["pos"], name="positions"),
             helper.make_node("Gather", ["table", "pos"], ["emb"], name="embed"),
             helper.make_node("Add", ["x", "emb"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "pos", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    with pytest.raises(NpuflowError) as exc:
        model_module.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x": [1, 20, 16]})
    assert "node 'positions' (Range) makes constant 'emb' of shape [10, 16], which node 'add' (Add)" \
        in exc.value.message, exc.value.message


def test_resize_to_traced_sizes_is_named_and_the_one_by_scales_is_not(tmp_path):
    message = _refusal(_export(FixedUpsample(), [1, 3, 16, 16], tmp_path / "up.onnx"), [1, 3, 32, 32])
    assert "node '/Resize' resizes to sizes ending in the constant [16, 16], which keeps dimension #2 at 16" \
        in message, message
    assert "/Resize_1" not in message


def _warnings(caplog, path: Path, shape: list[int]) -> list[str]:
    with caplog.at_level(logging.WARNING):
        model_module.load(str(path), {"x": shape})
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "resized" in r.getMessage()]


def test_slice_with_a_traced_end_loads_with_a_warning_naming_it(tmp_path, caplog):
    warned = _warnings(caplog, _export(LeftHalf(), [1, 3, 16, 16], tmp_path / "half.onnx"), [1, 3, 16, 32])
    assert any("node '/Slice' slices dimension #3 to the constant end 8 (the input's size there was 16)" in m
               and "may compute dimension #3 at its old size (the batch: samples run together)" in m
               for m in warned), warned


def test_expand_of_the_data_to_a_traced_length_is_named(tmp_path, caplog):
    warned = _warnings(caplog, _export(Broadcast(), [1, 6, 4], tmp_path / "spread.onnx"), [1, 12, 4])
    assert any("node '/Expand' expands to the constant shape" in m and "dimension #1 at 6" in m for m in warned), warned


def test_a_resize_nothing_holds_names_nothing(tmp_path, caplog):
    """A conv model with a Slice on channels only: a spatial resize is fine and silent."""

    class Channels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x):
            return self.conv(x)[:, :4].relu() + torch.ones(1, 4, 1, 1)

    path = _export(Channels(), [1, 3, 16, 16], tmp_path / "ch.onnx")
    proto = onnx.load(str(path))
    proto.graph.output[0].type.tensor_type.ClearField("shape")  # the output's traced shape left open
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))
    assert not _warnings(caplog, path, [1, 3, 32, 32])
    loaded = model_module.load(str(path), {"x": [1, 3, 32, 32]})
    assert [d.dim_value for d in loaded.graph.output[0].type.tensor_type.shape.dim] == [1, 4, 32, 32]
