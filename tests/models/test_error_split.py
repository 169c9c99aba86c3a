"""Weights-or-activations error split (npuflow.analyze.error_split) on the MNIST CNN, B4096."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from npuflow.analyze import error_split
from npuflow.analyze.compare import activation_points
from npuflow.analyze.sensitivity import similarity_metric
from npuflow.quant.algorithms.capture import run_outputs

pytestmark = pytest.mark.models

DPU = "DPUCZDX8G_ISA1_B4096"


def test_both_halves_float_is_the_float_model(quantized, digits):
    q = quantized.model
    layers, tensors = error_split.weight_names(q), error_split.activation_names(q)
    assert len(layers) == 5 and len(tensors) >= 5
    both = error_split.activations_float(error_split.weights_float(q, quantized.float_model, layers), tensors)
    assert activation_points(both) == []
    assert [o.name for o in both.graph.output] == [o.name for o in q.graph.output]
    got = run_outputs(both, digits[12:])
    want = run_outputs(quantized.float_model, digits[12:])
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g[0], w[0], rtol=1e-4, atol=1e-4)
    # one half alone is neither the float model nor the quantized one
    half = run_outputs(error_split.weights_float(q, quantized.float_model, layers), digits[12:13])[0][0]
    assert not np.allclose(half, want[0][0], atol=1e-4)
    assert not np.allclose(half, run_outputs(q, digits[12:13])[0][0], atol=1e-4)


def test_split_report_ranks_the_weights_of_a_4_bit_model(quantized, digits):
    metric = similarity_metric(quantized.float_model, digits[12:])
    seen = []
    report = error_split.split(quantized, metric=metric, metric_name="cosine", progress=lambda *a: seen.append(a))
    q = quantized.model
    assert report.quantized_score == pytest.approx(metric(q))
    kinds = [r.kind for r in report.rows]
    assert kinds.count(error_split.WEIGHTS) == 5
    assert kinds.count(error_split.ACTIVATION) == len(error_split.activation_names(q))
    assert len(seen) == len(report.rows) and seen[-1][1:] == (len(seen), len(seen))
    gains = [r.gain for r in report.rows]
    assert gains == sorted(gains, reverse=True)
    # 4-bit weights against 8-bit activations: all weights in float recover more than all activations
    assert report.all_weights_float > report.all_activations_float > report.quantized_score - 1e-9
    assert report.rows[0].kind == error_split.WEIGHTS and report.rows[0].gain > 0
    assert report.fast_finetune is None and not report.include_cle
    assert "the weights are the larger half" in error_split.reading(report)
    assert "halves interact" not in error_split.reading(report)
    # a removal that loses more than the other half gains (PP-OCR cls, random inputs: -0.0128 / +0.0015)
    lost = dataclasses.replace(report, all_activations_float=2 * report.quantized_score - report.all_weights_float - 1e-6)
    assert "the weights are the larger half" in error_split.reading(lost) and "halves interact" in error_split.reading(lost)


@pytest.mark.parametrize("config, field, says", [
    ({"fast_finetune": {"method": "adaround", "iters": 20}}, "fast_finetune", "halves depend on each other"),
    ({"include_cle": True}, "include_cle", "unequalised"),
])
def test_reading_warns_when_the_halves_are_not_independent(models, digits, config, field, says):
    """After AdaRound (EfficientNet-Lite0: every removal lowered agreement) or CLE the report says
    the split no longer locates the error, whatever the two all-float scores are."""
    from npuflow.quant import quantize

    q = quantize(str(models.mnist_cnn()), digits[:12], DPU,
                 config={"include_bias_corr": False, "weight": {"bit_width": 4}, **config})
    report = error_split.split(q, digits[12:])
    assert report.to_dict()[field] in ("adaround", True)
    assert report.all_weights_float > report.quantized_score  # the scores alone would read "weights"
    text = error_split.reading(report)
    assert says in text and "larger half" not in text and error_split.summary_lines(report)[-1] == text


def test_groups_and_unknown_names(quantized):
    q = quantized.model
    report_groups = error_split._groups(error_split.weight_names(q), lambda name: "all")
    assert list(report_groups) == ["all"] and len(report_groups["all"]) == 5
    with pytest.raises(ValueError, match="no float weight"):
        error_split.weights_float(q, quantized.float_model, ["not-a-layer"])
    with pytest.raises(ValueError, match="no activation quantize step"):
        error_split.activations_float(q, ["not-a-tensor"])
