"""``QuantConfig`` built by hand in Python (newuser round 5).  Before, ``QuantConfig(activation=
{"method": "msee"})`` raised pydantic's ``ValidationError`` (a traceback) while the same dict given to
``npuflow.quantize(config=...)`` or a file was ``NPF_QUANT_BAD_CONFIG``; now every way of writing a
config gives the coded error, with the key path and the nearest valid name."""

from __future__ import annotations

import pytest

import npuflow
from npuflow.quant.config import TensorSpec


@pytest.mark.parametrize("build, where, near", [
    (lambda: npuflow.QuantConfig(activation={"method": "msee"}), "activation.method", "mse"),
    (lambda: npuflow.QuantConfig(actvation={"method": "mse"}), "actvation", "activation"),
    (lambda: npuflow.QuantConfig(layers=[{"name": "a", "activation": {"methd": "mse"}}]), "layers.0.activation.methd", "method"),
    (lambda: npuflow.QuantConfig(percentile_candidates=[200.0]), "percentile_candidates", None),
    (lambda: TensorSpec(methd="mse"), "methd", "method"),
])
def test_bad_config_built_by_hand_is_coded(build, where, near):
    with pytest.raises(npuflow.NpuflowError) as err:
        build()
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"
    assert f"{where}:" in str(err.value)
    if near:
        assert f"did you mean {near!r}" in str(err.value)


def test_dict_and_hand_built_configs_agree():
    by_hand = npuflow.QuantConfig(activation={"method": "mse"}, include_cle=True)
    assert by_hand == npuflow.QuantConfig.from_dict({"activation": {"method": "mse"}, "include_cle": True})
    assert by_hand.activation.method == "mse"
    with pytest.raises(npuflow.NpuflowError) as err:  # nested errors keep their path through from_dict
        npuflow.QuantConfig.from_dict({"activation": {"methd": "mse"}})
    assert "activation.methd:" in str(err.value)
