"""ONNX Runtime's ``quantize_static`` keywords ported into npuflow's config (new-user round 15b).

Before: ``config={"extra_options": {...}}`` and ``{"quant_format": "QDQ"}`` read only "Extra
inputs are not permitted", with no word of where npuflow says the same."""

from __future__ import annotations

import pytest

import npuflow
from npuflow.errors import NpuflowError


@pytest.mark.parametrize("key, value, words", [
    ("extra_options", {"ActivationSymmetric": True}, "activation: {symmetric: true}"),
    ("quant_format", "QDQ", "every npuflow model is QDQ"),
])
def test_onnx_runtime_keys_name_npuflow_s_form(key, value, words):
    with pytest.raises(NpuflowError) as err:
        npuflow.QuantConfig(**{key: value})
    assert err.value.code == "NPF_QUANT_BAD_CONFIG" and words in err.value.message


def test_the_named_forms_are_valid():
    npuflow.QuantConfig(activation={"symmetric": True}, weight={"symmetric": True})
