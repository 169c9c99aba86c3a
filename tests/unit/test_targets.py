"""Target descriptions: lookup by name, fingerprint and arch.json; formulas are safe."""

from __future__ import annotations

import json

import pytest

from npuflow.errors import NpuflowError
from npuflow.targets import list_targets, load_target
from npuflow.targets.expr import ExprError, evaluate, names_in


def test_lookup_by_name_fingerprint_and_arch_json(tmp_path):
    by_name = load_target("DPUCZDX8G_ISA1_B4096")
    assert load_target("dpuczdx8g_isa1_b4096") is by_name
    assert load_target("0x101000016010407") is by_name
    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps({"target": "DPUCZDX8G_ISA1_B4096"}))
    assert load_target(arch) is by_name
    arch.write_text(json.dumps({"fingerprint": "0x101000016010407"}))
    assert load_target(str(arch)) is by_name


def test_every_target_has_unique_name_and_fingerprint():
    targets = list_targets()
    assert len({t.name for t in targets}) == len(targets)
    assert len({int(t.fingerprint, 16) for t in targets}) == len(targets)


def test_b4096_parallelism_and_peak():
    t = load_target("DPUCZDX8G_ISA1_B4096")
    assert t.engines.conv.macs_per_cycle == 2048  # B4096 = 4096 ops per cycle
    assert t.engines.depthwise.macs_per_cycle < t.engines.conv.macs_per_cycle
    assert t.numerics.scale_type == "power_of_two"
    assert t.numerics.round_mode.activation.value == "half_up"


def test_cpu_int8_numerics():
    t = load_target("cpu-int8")
    assert t.kind == "cpu" and t.numerics.scale_type == "float" and t.numerics.weight_per_channel


def test_formulas():
    names = {"kernel_w": 3, "kernel_h": 3, "input_channel": 64, "channel_parallel": 16, "bank_depth": 2048}
    assert evaluate("kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth", names) is True
    assert evaluate("min(kernel_w - 1, 15) * 2", names) == 4
    assert names_in("ceil(a / b) <= c") == {"a", "b", "c"}
    with pytest.raises(ExprError):
        evaluate("__import__('os')", {})
    with pytest.raises(ExprError):
        evaluate("kernel_w.real", names)
    with pytest.raises(ExprError):
        evaluate("unknown_name + 1", names)


def test_unknown_target_and_bad_arch_json(tmp_path):
    with pytest.raises(NpuflowError) as e:
        load_target("DPU_DOES_NOT_EXIST")
    assert e.value.code == "NPF_TARGET_UNKNOWN"
    bad = tmp_path / "arch.json"
    bad.write_text("{not json")
    with pytest.raises(NpuflowError) as e:
        load_target(bad)
    assert e.value.code == "NPF_TARGET_BAD_ARCH_JSON"
    bad.write_text(json.dumps({"board": "zcu102"}))
    with pytest.raises(NpuflowError) as e:
        load_target(bad)
    assert e.value.code == "NPF_TARGET_BAD_ARCH_JSON"


def test_bad_target_file(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("name: x\nfingerprint: '0x1'\nfamily: X\nclock_mhz: fast\nddr_bandwidth_gbps: 1\n")
    with pytest.raises(NpuflowError) as e:
        load_target(f)
    assert e.value.code == "NPF_TARGET_BAD_FILE" and "clock_mhz" in e.value.message


@pytest.mark.parametrize("spec", [[{"x": 1}], 3, "x" * 5000])
def test_a_target_that_is_not_a_name_or_path_is_a_coded_error(spec):
    """Calibration samples passed in the target's place (``quantize(model, target, calib)``) or a
    name too long for the OS to look up raised ``OSError: File name too long`` from ``is_file``."""
    with pytest.raises(NpuflowError) as err:
        load_target(spec)
    assert err.value.code == "NPF_TARGET_UNKNOWN"
    assert len(err.value.render()) < 600
    if not isinstance(spec, str):
        assert type(spec).__name__ in str(err.value) and "calib_data, target" in err.value.render()
