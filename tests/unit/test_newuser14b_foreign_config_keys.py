"""A config dict ported from another quantizer's Python API (new-user round 14b): ONNX Runtime's
``quantize_static(per_channel=True, calibrate_method=CalibrationMethod.Entropy)``, rknn-toolkit2's
``RKNN.config(quantized_algorithm='kl_divergence')``.  Before: "per_channel: Extra inputs are not
permitted" and nothing more; now the message says how npuflow's config writes it."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.fixture_models import mnist_cnn


@pytest.mark.parametrize("key, value, says", [("per_channel", True, "weight: {per_channel: true}"),
                                              ("calibrate_method", "Entropy", "activation: {method:"),
                                              ("quantized_algorithm", "kl_divergence", "activation: {method:"),
                                              ("nodes_to_exclude", ["conv1"], "keep_float")])
def test_foreign_keys_say_the_npuflow_form(key, value, says):
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.quantize(mnist_cnn(), [np.zeros((1, 1, 28, 28), np.float32)], "cpu-int8", config={key: value})
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"
    assert f"{key}: not a key of npuflow's config" in err.value.message and says in err.value.message


def test_the_forms_named_are_valid():
    config = npuflow.QuantConfig(weight={"per_channel": True}, activation={"method": "entropy"}, keep_float=["conv1"])
    assert config.weight.per_channel and config.activation.method == "entropy"


def test_a_misspelt_npuflow_key_still_gets_the_nearest():
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.QuantConfig(include_cel=True)
    assert "did you mean 'include_cle'" in err.value.message
