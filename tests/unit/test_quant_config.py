"""QuantConfig: layering (target -> overall -> kind -> op type -> layer), validation, JSON/YAML round trip."""

from __future__ import annotations

import pytest

from npuflow.errors import NpuflowError
from npuflow.numerics import RoundMode
from npuflow.quant import QuantConfig
from npuflow.targets import load_target

DPU = load_target("DPUCZDX8G_ISA1_B4096")
CPU = load_target("cpu-int8")


def test_defaults_come_from_the_target():
    cfg = QuantConfig()
    w, b, a = (cfg.resolve(DPU, k) for k in ("weight", "bias", "activation"))
    assert (w.scale_type, w.per_channel, w.round_mode) == ("power_of_two", False, RoundMode.STD_ROUND)
    assert b.round_mode is RoundMode.STD_ROUND and b.bit_width == 32
    assert (a.round_mode, a.symmetric, a.signed) == (RoundMode.HALF_UP, True, True)
    w, a = cfg.resolve(CPU, "weight"), cfg.resolve(CPU, "activation")
    assert (w.scale_type, w.per_channel, w.symmetric, w.narrow_range) == ("float", True, True, True)
    assert (a.symmetric, a.round_mode) == (False, RoundMode.HALF_EVEN)


def test_fast_finetune_takes_mse_activation_positions_on_power_of_two_targets():
    """Reconstruction learns against clipped inputs but not against a coarse grid's rounding noise,
    so with fast finetune a DPU's activations default to the MSE position; a user's method wins,
    and neither float-scale targets nor the model input change."""
    tuned = QuantConfig.from_dict({"fast_finetune": {"method": "adaround"}})
    assert QuantConfig().resolve(DPU, "activation", "Conv").method == "minmax"
    assert tuned.resolve(DPU, "activation", "Conv").method == "mse"
    assert tuned.resolve(DPU, "input").method == "minmax"
    assert tuned.resolve(CPU, "activation", "Conv").method == "percentile"
    chosen = QuantConfig.from_dict({"fast_finetune": {"method": "adaquant"}, "activation": {"method": "minmax"}})
    assert chosen.resolve(DPU, "activation", "Conv").method == "minmax"


def test_layers_override_in_order():
    cfg = QuantConfig.from_dict({
        "overall": {"method": "percentile", "percentile": 99.9},
        "activation": {"method": "mse"},
        "op_types": {"Conv": {"activation": {"method": "entropy"}, "weight": {"method": "mse"}}},
        "layers": [{"name_regex": "conv.*", "overall": {"round_mode": "half_even"}},
                   {"name": "conv2", "activation": {"method": "minmax"}}],
    })
    assert cfg.resolve(DPU, "input").method == "percentile"
    assert cfg.resolve(DPU, "activation", "Relu", "relu1").method == "mse"
    assert cfg.resolve(DPU, "activation", "Conv", "other").method == "entropy"
    conv1 = cfg.resolve(DPU, "activation", "Conv", "conv1")
    assert conv1.method == "entropy" and conv1.round_mode is RoundMode.HALF_EVEN
    assert cfg.resolve(DPU, "activation", "Conv", "conv2").method == "minmax"
    assert cfg.resolve(DPU, "weight", "Conv", "x").method == "mse"


@pytest.mark.parametrize("data", [
    # asymmetric activations take entropy/mse (thresholds.asymmetric_range); asymmetric weights would ignore them
    {"weight": {"method": "entropy", "symmetric": False, "scale_type": "float"}},
    {"weight": {"method": "mse", "symmetric": False, "scale_type": "float"}},
    {"activation": {"symmetric": False}},  # power_of_two needs symmetric
    {"activation": {"per_channel": True}},
    {"weight": {"signed": False}},
])
def test_conflicting_settings_are_rejected(data):
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict(data).validate_against(DPU)
    assert exc.value.code == "NPF_QUANT_CONFIG_CONFLICT"


def test_bit_widths_checked_against_target():
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"activation": {"bit_width": 16}}).validate_against(DPU)
    assert exc.value.code == "NPF_QUANT_BITS_UNSUPPORTED"
    QuantConfig.from_dict({"activation": {"bit_width": 16}}).validate_against(CPU)
    QuantConfig.from_dict({"weight": {"bit_width": 4}}).validate_against(DPU)
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"activation": {"bit_width": 4}}).validate_against(CPU)
    assert exc.value.code == "NPF_QUANT_BITS_UNSUPPORTED"


@pytest.mark.parametrize("data", [
    {"activation": {"bit_width": 12}}, {"overall": {"method": "kl"}}, {"unknown_key": 1},
    {"activation": {"percentile": 120}}, {"layers": [{"activation": {}}]}, {"layers": [{"name_regex": "("}]},
    {"fast_finetune": {"method": "adaround", "iters": 0}},
])
def test_invalid_values_are_coded(data):
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict(data)
    assert exc.value.code == "NPF_QUANT_BAD_CONFIG"


def test_unknown_layer_names_fail():
    cfg = QuantConfig.from_dict({"layers": [{"name_regex": "fc.*", "weight": {"method": "mse"}}]})
    cfg.check_names(["fc1", "conv"])
    with pytest.raises(NpuflowError) as exc:
        cfg.check_names(["conv"])
    assert exc.value.code == "NPF_QUANT_UNKNOWN_LAYER"


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_dump_and_load_round_trip(tmp_path, suffix):
    cfg = QuantConfig.from_dict({
        "activation": {"method": "percentile", "percentile": 99.99}, "keep_float": ["head"],
        "layers": [{"name": "conv1", "weight": {"bit_width": 4}}], "include_bias_corr": True,
        "fast_finetune": {"method": "adaquant", "iters": 10}, "calib_shapes": {"x": [1, 3, 8, 8]},
    })
    path = tmp_path / f"cfg{suffix}"
    cfg.dump(path)
    assert QuantConfig.load(path) == cfg


def test_config_file_errors(tmp_path):
    for path, text in ((tmp_path / "missing.json", None), (tmp_path / "bad.yaml", "a: [1,"),
                       (tmp_path / "list.yaml", "- 1\n")):
        if text is not None:
            path.write_text(text)
        with pytest.raises(NpuflowError) as exc:
            QuantConfig.load(path)
        assert exc.value.code == "NPF_QUANT_CONFIG_FILE"
