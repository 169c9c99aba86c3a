"""Round 12 (round 10's open item 2): the held-size search compared constants with the resized
dimension's old size itself, so a size the export derived from it named nothing and the refusal
blamed the node where shapes clashed: ``F.interpolate(z, size=(x.size(2) // 2, x.size(3) // 2))``
traced at 16x16 and asked at 32x32 blamed the ``Add`` after it; ``y[..., : x.size(2) // 2]``
(the width cut at half the traced height) blamed the ``Relu``.  Both name the node now."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from npuflow import model as model_module
from npuflow.errors import NpuflowError

nn = torch.nn
F = nn.functional


class HalfSizeUpsample(nn.Module):
    """A coarse map upsampled to half the input's traced size and added to a pooled map."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=4, padding=1)

    def forward(self, x):
        y = F.max_pool2d(self.a(x), 2)
        return y + F.interpolate(self.b(y), size=(x.size(2) // 2, x.size(3) // 2), mode="nearest")


class WidthFromHeight(nn.Module):
    """A feature map cut to half the traced height along its width."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        return self.a(x)[..., : x.size(2) // 2].relu()


def _refusal(module: nn.Module, traced: list[int], asked: list[int], path: Path) -> str:
    torch.manual_seed(0)
    torch.onnx.export(module.eval(), (torch.randn(*traced),), str(path), input_names=["x"], output_names=["y"],
                      opset_version=17, dynamo=False)
    with pytest.raises(NpuflowError) as exc:
        model_module.load(str(path), {"x": asked})
    assert exc.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE", exc.value
    return exc.value.message


def test_resize_to_a_size_derived_from_the_traced_one_is_named(tmp_path):
    message = _refusal(HalfSizeUpsample(), [1, 3, 16, 16], [1, 3, 32, 32], tmp_path / "half_up.onnx")
    assert ("node '/Resize' resizes to sizes ending in the constant [8, 8], which keeps dimension #2 at 8 "
            "(a size derived from its old size 16)") in message, message


def test_slice_end_derived_from_another_resized_dimension_is_named(tmp_path):
    message = _refusal(WidthFromHeight(), [1, 3, 16, 32], [1, 3, 32, 32], tmp_path / "w_from_h.onnx")
    assert "node '/Slice' slices dimension #3 to the constant end 8, a size derived from dimension #2's old size 16" \
        in message, message
