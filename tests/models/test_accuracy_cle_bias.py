"""Cross-layer equalisation and bias correction on EfficientNet-Lite0 (depthwise, ReLU6)."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.passes.fold_constants import fold_constants
from npuflow.quant.algorithms import bias_correction, cle
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.algorithms.layers import weight_layers
from tests.models.photo_crops import photo_crops
from tests.unit.qdq_toy import toy_qdq

pytestmark = pytest.mark.models


@pytest.fixture(scope="session")
def effnet(models):
    return fold_constants(npuflow.load(models.efficientnet_lite0()))


@pytest.fixture(scope="session")
def crops():
    return [{"input": x} for x in photo_crops(8)]


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_cle_preserves_outputs_and_balances_depthwise_ranges(effnet, crops):
    eq, report = cle.equalize(effnet)  # per-channel clip bounds: exact for any input
    assert len(report.pairs) >= 20
    assert any(p.clip_max == 6.0 for p in report.pairs)
    for a, b in zip(run_outputs(eq, crops), run_outputs(effnet, crops)):
        assert _rel_err(a[0], b[0]) < 1e-4
    dw = [l.name for l in weight_layers(effnet) if l.is_depthwise]
    before = [cle.channel_range_spread(effnet, n) for n in dw]
    after = [cle.channel_range_spread(eq, n) for n in dw]
    assert np.mean(np.log(after)) < np.mean(np.log(before)) - 0.5
    assert sum(a < b * 0.99 for a, b in zip(after, before)) >= len(dw) * 2 // 3


def test_cle_calibrated_policy_keeps_clip_and_is_exact_on_its_data(effnet, crops):
    eq, report = cle.equalize(effnet, crops[:4], clip_policy="calibrated")
    assert sum(n.op_type == "Clip" for n in eq.graph.node) == sum(n.op_type == "Clip" for n in effnet.graph.node)
    assert any(p.min_scale < 0.9 for p in report.pairs)
    for a, b in zip(run_outputs(eq, crops[:4]), run_outputs(effnet, crops[:4])):
        assert _rel_err(a[0], b[0]) < 1e-4
    eq, report = cle.equalize(effnet, None, clip_policy="calibrated")
    assert all(p.clip_max is None for p in report.pairs)
    assert any("calibration" in r for _, _, r in report.skipped)


def _cos(model, ref, feeds):
    out = run_outputs(model, feeds)
    return float(np.mean([np.dot(a[0].ravel(), b[0].ravel()) / np.linalg.norm(a[0]) / np.linalg.norm(b[0])
                          for a, b in zip(out, ref)]))


def test_empirical_bias_correction_reduces_output_error(effnet, crops):
    q = toy_qdq(effnet, crops[:4])
    corrected, names = bias_correction.correct_empirical(effnet, q, crops[:4], "std_round")
    assert len(names) >= 40
    ref = run_outputs(effnet, crops[4:])
    assert _cos(corrected, ref, crops[4:]) > _cos(q, ref, crops[4:]) + 0.05
