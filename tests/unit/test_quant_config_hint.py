"""entropy/mse/auto on unsigned activations (cpu-int8): once NPF_QUANT_CONFIG_CONFLICT, now accepted.

Before: "method 'entropy' needs symmetric quantization (set symmetric: true)"; doing just that on
cpu-int8 gives symmetric *unsigned* activations, the range [0, t], which clips every negative
value (PP-OCR cls: output cosine 0.831, a MatMul at -0.64; with signed: true as well 0.997).
"""

from __future__ import annotations

import pytest

from npuflow.quant import QuantConfig
from npuflow.targets import load_target

CPU = load_target("cpu-int8")
DPU = load_target("DPUCZDX8G_ISA1_B4096")


@pytest.mark.parametrize("method", ["entropy", "mse", "auto"])
def test_unsigned_asymmetric_activations_take_the_method(method):
    """Since the asymmetric range search (thresholds.asymmetric_range) there is nothing to fix:
    cpu-int8's uint8 activations take entropy/mse/auto as they are, and symmetric + signed still works."""
    QuantConfig.from_dict({"activation": {"method": method}}).validate_against(CPU)
    QuantConfig.from_dict({"activation": {"method": method, "symmetric": True, "signed": True}}).validate_against(CPU)


def test_signed_asymmetric_activations_take_the_method():
    QuantConfig.from_dict({"activation": {"method": "mse", "symmetric": False, "scale_type": "float"}}).validate_against(DPU)
