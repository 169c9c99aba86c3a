"""A user's own target file: a bundled target copied elsewhere and edited (docs/targets.md)."""

from __future__ import annotations

import pytest

from npuflow.errors import NpuflowError
from npuflow.targets import DATA_DIR, load_target


def _copy(tmp_path, old: str = "", new: str = "", extra: str = ""):
    text = (DATA_DIR / "DPUCZDX8G_ISA1_B4096.yaml").read_text().replace("name: DPUCZDX8G_ISA1_B4096", "name: MyDPU")
    if old:
        assert old in text
        text = text.replace(old, new)
    f = tmp_path / "my_dpu.yaml"
    f.write_text(text + extra)
    return f


def test_copied_target_finds_its_bundled_base(tmp_path):
    # before: NPF_TARGET_BAD_FILE "target file _dpuczdx8g.yaml is invalid: [Errno 2] No such file"
    t = load_target(_copy(tmp_path, "clock_mhz: 281", "clock_mhz: 150"))
    assert (t.name, t.clock_mhz) == ("MyDPU", 150)
    assert t.rule("conv2d") == load_target("DPUCZDX8G_ISA1_B4096").rule("conv2d")


def test_missing_base_names_the_field(tmp_path):
    with pytest.raises(NpuflowError) as e:
        load_target(_copy(tmp_path, "base: _dpuczdx8g.yaml", "base: _dpuczdx9g.yaml"))
    assert e.value.code == "NPF_TARGET_BAD_FILE"
    assert "base: _dpuczdx9g.yaml" in e.value.message and "_dpuczdx8g.yaml" in e.value.message


@pytest.mark.parametrize("old,new,extra,field", [
    # before: accepted; perf then raised ZeroDivisionError (a traceback)
    ("conv: {pixel_parallel: 8,", "conv: {pixel_parallel: 0,", "", "engines.conv.pixel_parallel"),
    ("", "", "ddr_bandwidth_gbps: 0\n", "ddr_bandwidth_gbps"),
    # before: accepted; perf estimated 3 cores' frame rate for -1
    ("cores: 3", "cores: -1", "", "cores"),
    # before: accepted; every convolution fell to the CPU ("kernel_w 3 not in [16, 1]")
    ("", "", "ops:\n  conv2d:\n    params:\n      kernel_w: {range: [16, 1]}\n", "ops.conv2d.params.kernel_w.range"),
    # before: accepted; the misspelt activation fused nothing
    ("", "", "ops:\n  conv2d:\n    activations: [relu, relu_6]\n", "ops.conv2d.activations"),
])
def test_malformed_field_is_coded_and_named(tmp_path, old, new, extra, field):
    with pytest.raises(NpuflowError) as e:
        load_target(_copy(tmp_path, old, new, extra))
    assert e.value.code == "NPF_TARGET_BAD_FILE" and field in e.value.message
