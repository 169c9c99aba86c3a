"""npuflow.torch.inspect: checker placement mapped back to module paths and source lines."""

from __future__ import annotations

import inspect as pyinspect

import pytest
import torch
from torch import nn

from npuflow.errors import NpuflowError
from npuflow.torch import inspect as torch_inspect
from npuflow.torch.inspect import module_path

DPU = "DPUCZDX8G_ISA1_B4096"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return torch.sigmoid(y) * x  # GATE_LINE: sigmoid has no DPU kernel


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = Block()

    def forward(self, x):
        x = torch.relu(self.stem(x))  # STEM_LINE
        return self.block(x)


def _line(cls, marker: str) -> int:
    lines, start = pyinspect.getsourcelines(cls)
    return start + next(i for i, text in enumerate(lines) if marker in text)


@pytest.fixture(scope="module")
def report_and_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("inspect")
    report = torch_inspect(Net(), torch.zeros(1, 3, 16, 16), DPU, output_dir=out, verbose=2)
    return report, out


def test_every_node_has_a_module_path_and_source_line(report_and_dir):
    report, _ = report_and_dir
    here = __file__
    sig = next(n for n in report.nodes if n.op_type == "Sigmoid")
    assert sig.device == "CPU" and sig.module == "block"
    assert sig.source_range[0] == f"{here}:{_line(Block, 'GATE_LINE')} in forward"
    assert any(f.endswith("in forward") and f"{here}:" in f for f in sig.source_range[1:])  # caller too
    conv = next(n for n in report.nodes if n.op_type == "Conv" and n.module == "block.conv")
    assert conv.device == "NPU"
    stem = next(n for n in report.nodes if n.op_type == "Conv" and n.module == "stem")
    assert stem.source_range[0] == f"{here}:{_line(Net, 'STEM_LINE')} in forward"
    assert all(n.source_range for n in report.nodes)


def test_report_files_carry_the_source_range(report_and_dir):
    _, out = report_and_dir
    text = (out / f"inspect_{DPU}.txt").read_text()
    assert "source range:" in text and f":{_line(Block, 'GATE_LINE')} in forward" in text
    assert "module:                block.conv" in text
    assert (out / f"inspect_{DPU}.json").exists() and (out / f"inspect_{DPU}.gv").exists()
    assert '"source_range"' in (out / f"inspect_{DPU}.json").read_text()


def test_module_path_from_exporter_scopes():
    assert module_path("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert module_path("/b/c/Conv") == "b.c"
    assert module_path("/Add") == ""


def test_bad_image_format_is_a_coded_error():
    with pytest.raises(NpuflowError) as err:
        torch_inspect(Net(), torch.zeros(1, 3, 16, 16), DPU, image_format="jpg")
    assert err.value.code == "NPF_TORCH_IMAGE_FORMAT"
