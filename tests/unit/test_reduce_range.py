"""7-bit weights (ONNX Runtime's ``reduce_range``) on cpu-int8: codes in [-64, 63], so no pair of
products can leave MLAS' 16-bit lanes on CPUs without VNNI; the fused runtime then takes the fast
uint8 x int8 kernels everywhere and still equals ONNX Runtime on the quantized model."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import numpy_helper

import npuflow
from npuflow import ort_kernels
from npuflow.errors import NpuflowError
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import conv_net, samples


def _weights(model) -> list[np.ndarray]:
    return [a for a in (numpy_helper.to_array(t) for t in model.graph.initializer) if a.dtype == np.int8 and a.ndim == 4]


def test_seven_bit_weights_fit_every_lane_and_stay_exact():
    calib = samples([1, 3, 8, 8], n=8)
    q8 = npuflow.quantize(conv_net(), calib, target="cpu-int8")
    q7 = npuflow.quantize(conv_net(), calib, target="cpu-int8", config={"weight": {"bit_width": 7}})
    w8, w7 = _weights(q8.model), _weights(q7.model)
    assert max(int(np.abs(w).max()) for w in w8) == 127
    assert all(w.min() >= -64 and w.max() <= 63 for w in w7)
    assert all(ort_kernels.saturation_free(w, 1) for w in w7)
    assert q7.report.outputs["y"] > 0.99
    diffs = compare_layerwise_with_ort(q7.model, {"x": samples([1, 3, 8, 8], n=1, seed=5)[0]}, "cpu-int8",
                                       levels=("all",))
    assert max(diffs.values()) == 0, diffs


def test_seven_bits_are_for_weights_only():
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=2), target="cpu-int8",
                         config={"activation": {"bit_width": 7}})
    assert err.value.code == "NPF_QUANT_BITS_UNSUPPORTED"
