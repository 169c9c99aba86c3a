"""NPF_QUANT_CONFIG_CONFLICT's fix for entropy/mse/auto on unsigned activations (cpu-int8).

Before: "method 'entropy' needs symmetric quantization (set symmetric: true)"; doing just that on
cpu-int8 gives symmetric *unsigned* activations, the range [0, t], which clips every negative
value (PP-OCR cls: output cosine 0.831, a MatMul at -0.64; with signed: true as well 0.997).
"""

from __future__ import annotations

import pytest

from npuflow.errors import NpuflowError
from npuflow.quant import QuantConfig
from npuflow.targets import load_target

CPU = load_target("cpu-int8")
DPU = load_target("DPUCZDX8G_ISA1_B4096")


@pytest.mark.parametrize("method", ["entropy", "mse", "auto"])
def test_unsigned_activation_fix_names_signed(method):
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"activation": {"method": method}}).validate_against(CPU)
    assert exc.value.code == "NPF_QUANT_CONFIG_CONFLICT"
    assert "symmetric: true and signed: true" in exc.value.message
    QuantConfig.from_dict({"activation": {"method": method, "symmetric": True, "signed": True}}).validate_against(CPU)


def test_signed_activation_fix_is_symmetric_alone():
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"activation": {"method": "mse", "symmetric": False, "scale_type": "float"}}).validate_against(DPU)
    assert "(set symmetric: true)" in exc.value.message
