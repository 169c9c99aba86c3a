"""entropy / mse / auto calibration on asymmetric (zero-point) activations, e.g. cpu-int8's uint8.

These methods used to be refused there (NPF_QUANT_CONFIG_CONFLICT "needs symmetric
quantization"); they now search a (lo, hi) range with the real zero-point quantizer
(:func:`npuflow.quant.thresholds.asymmetric_range`)."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from npuflow.quant import QuantConfig
from npuflow.quant.observers import HistogramObserver
from npuflow.quant.thresholds import asymmetric_range, asymmetric_sq_errors, signed_grid
from npuflow.targets import load_target

from .quant_nets import conv_net, samples

METHODS = ["minmax", "percentile", "entropy", "mse", "auto"]
RNG = np.random.default_rng(0)
TENSORS = {
    # a ReLU output: 60 % exact zeros, a half-normal body and ten far outliers
    "relu": np.concatenate([np.zeros(120_000), np.abs(RNG.normal(size=80_000)), np.full(10, 9.0)]),
    # two-sided, skewed: a narrow negative lump and a long exponential positive tail
    "skewed": np.concatenate([RNG.normal(-0.2, 0.1, 100_000), RNG.exponential(0.5, 100_000)]),
    # a point mass at zero with a little uniform spread around it
    "point0": np.concatenate([np.zeros(100_000), RNG.uniform(-1.0, 3.0, 1_000)]),
}


def observed(x: np.ndarray) -> tuple[HistogramObserver, float, float]:
    h = HistogramObserver(2048)
    h.update(x.astype(np.float32))
    return h, float(x.min()), float(x.max())


def error(h: HistogramObserver, r: tuple[float, float]) -> float:
    centres, counts = signed_grid(h)
    return float(asymmetric_sq_errors(centres, counts, [r], 8, False, "half_even")[0])


@pytest.mark.parametrize("name", sorted(TENSORS))
@pytest.mark.parametrize("method", METHODS)
def test_range_contains_zero_and_lies_within_min_max(name, method):
    h, lo, hi = observed(TENSORS[name])
    a, b = asymmetric_range(method, lo, hi, h, 8, False, 99.999, "half_even")
    assert lo <= a <= 0.0 <= b <= hi
    assert b > a


@pytest.mark.parametrize("name", sorted(TENSORS))
def test_mse_error_is_at_most_minmax_error(name):
    h, lo, hi = observed(TENSORS[name])
    mse = asymmetric_range("mse", lo, hi, h, 8, False, 99.999, "half_even")
    assert error(h, mse) <= error(h, (lo, hi))


def test_entropy_and_mse_clip_the_long_tail():
    for name in ("relu", "skewed"):
        h, lo, hi = observed(TENSORS[name])
        assert asymmetric_range("entropy", lo, hi, h, 8, False, 99.999, "half_even")[1] < 0.9 * hi
        assert asymmetric_range("mse", lo, hi, h, 8, False, 99.999, "half_even")[1] < hi


def test_one_sided_tensor_keeps_lo_at_zero():
    h, lo, hi = observed(TENSORS["relu"])
    for method in METHODS:
        assert asymmetric_range(method, lo, hi, h, 8, False, 99.999, "half_even")[0] == 0.0


def test_point_mass_at_zero_does_not_collapse_the_range():
    """Exact zeros are exact at any range: the uniform spread decides, and nothing of it is
    worth clipping (no method goes below 0.9 of either side)."""
    h, lo, hi = observed(TENSORS["point0"])
    for method in ("entropy", "mse", "auto"):
        a, b = asymmetric_range(method, lo, hi, h, 8, False, 99.999, "half_even")
        assert a <= 0.9 * lo and b >= 0.9 * hi


def test_auto_does_not_clip_where_clipping_does_not_clearly_pay():
    """auto keeps min/max unless a candidate's expected error is less than 1/1.5 of min/max's."""
    h, lo, hi = observed(TENSORS["point0"])
    assert asymmetric_range("auto", lo, hi, h, 8, False, 99.999, "half_even") == (lo, hi)
    h, lo, hi = observed(TENSORS["relu"])
    r = asymmetric_range("auto", lo, hi, h, 8, False, 99.999, "half_even")
    assert error(h, r) <= error(h, (lo, hi))


CPU = load_target("cpu-int8")


@pytest.mark.parametrize("method", ["entropy", "mse", "auto"])
def test_methods_are_accepted_on_asymmetric_activations(method):
    QuantConfig.from_dict({"activation": {"method": method}}).validate_against(CPU)


def test_power_of_two_asymmetric_still_conflicts():
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"activation": {"scale_type": "power_of_two", "symmetric": False}}).validate_against(CPU)
    assert exc.value.code == "NPF_QUANT_CONFIG_CONFLICT"
    assert "power_of_two" in exc.value.message


def test_asymmetric_weights_with_a_searching_method_conflict():
    """An asymmetric constant is quantized over its own min/max: the method would be ignored."""
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict({"weight": {"method": "mse", "symmetric": False}}).validate_against(CPU)
    assert "asymmetric weights take their min/max" in exc.value.message


@pytest.mark.parametrize("method", METHODS)
def test_quantize_on_cpu_int8_gives_zero_points_in_range(method):
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=8), target="cpu-int8",
                         config={"activation": {"method": method}})
    activations = [t for t in q.quant_params.values() if t.kind == "activation"]
    assert activations
    for t in activations:
        zp = np.asarray(t.zero_point)
        assert not t.signed and (0 <= zp).all() and (zp <= 255).all()
        assert t.method == method
    assert all(c > 0.9 for c in q.report.calibration_outputs.values())
