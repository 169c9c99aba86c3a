"""Accuracy-targeted quantization: the ladder runs cheapest first, keeps only steps that help,
stops at the target or the time budget, and never moves layers to the CPU unless allowed."""

from __future__ import annotations

import numpy as np

from npuflow.analyze.auto_quant import LADDER, auto_quantize
from tests.unit.quant_nets import two_conv_net

DPU = "DPUCZDX8G_ISA1_B4096"


def _calib():
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32) for _ in range(8)]


def test_a_reached_target_stops_the_ladder():
    result = auto_quantize(two_conv_net(), _calib(), DPU, min_similarity=0.5)
    assert result.met and result.steps[0].kept
    assert [s.score for s in result.steps[1:]] == [None] * len(LADDER)
    assert all(s.note == "target met" for s in result.steps[1:])


def test_an_unreachable_target_runs_the_ladder_and_keeps_the_best():
    calls = []

    def metric(q):
        calls.append(q)
        return float(len(calls) == 3)  # only the third configuration (equalisation) "helps"

    result = auto_quantize(two_conv_net(), _calib(), DPU, metric=metric, min_metric=2.0,
                           config={"fast_finetune": None})
    assert not result.met and result.cpu_fallback is None  # no CPU fallback unless allowed
    assert [s.name for s in result.steps] == ["target defaults", *[n for n, _, _ in LADDER]]
    assert [s.kept for s in result.steps] == [True, False, True, False, False, False]
    assert result.score == 1.0 and result.config.include_cle is True
    assert result.quantized is calls[2]


def test_the_time_budget_stops_before_a_step():
    result = auto_quantize(two_conv_net(), _calib(), DPU, min_similarity=1.1, time_budget_s=0.0)
    assert all(s.score is None and "time budget" in s.note for s in result.steps[1:])


def test_cpu_fallback_keeps_the_fewest_layers_of_the_plan_in_float():
    """The fallback is the quantization plan with float overrides (no calibration again): the
    layers it names are plan layers, they are float in the returned model, the rest is int8."""
    # 0.9999: one of the two convolutions goes to float (at 0.999999 both did, a float model the
    # ladder no longer keeps: test_newuser15b_build_fallback_all_layers)
    result = auto_quantize(two_conv_net(), _calib(), DPU, min_similarity=0.9999, time_budget_s=0,
                           allow_cpu_fallback=True)
    assert result.steps[-1].name == "CPU fallback" and result.cpu_fallback is not None
    assert 0 < len(result.cpu_fallback["layers"]) < len(result.quantized.requantizer.layers)
    q = result.quantized
    floats = set(result.cpu_fallback["layers"])
    assert floats and floats <= set(q.requantizer.layers)
    dequantized = {n.output[0] for n in q.model.graph.node if n.op_type == "DequantizeLinear"}
    for name, layer in q.requantizer.layers.items():
        node = next(n for n in q.model.graph.node if n.name == name)
        assert (node.input[1] in dequantized) == (name not in floats), name  # its weights
    assert result.cpu_fallback["mixed_latency_ms"] != result.cpu_fallback["latency_ms"]


def test_finetune_rungs_after_a_kept_search_also_try_the_finetune_default_ranges():
    """A kept calibration search sets percentile ranges; the first finetune rung (GPTQ) then runs on
    the finetune default (MSE positions on the DPU) and on them, and keeps the better, naming it."""
    seen = []

    def metric(q):
        seen.append(q.config.model_dump(exclude_unset=True))
        act = seen[-1].get("activation", {}).get("method")
        ff = seen[-1].get("fast_finetune")
        if ff is None:
            return 1.0 if act == "percentile" else 0.0  # the search helps plain rounding
        return 3.0 if act is None else 2.0  # learned rounding prefers the default ranges

    result = auto_quantize(two_conv_net(), _calib(), DPU, metric=metric, min_metric=2.5,
                           config={"fast_finetune": None})
    names = [s.name for s in result.steps]
    adaround = result.steps[names.index("GPTQ")]
    assert result.steps[names.index("calibration search")].kept
    assert adaround.kept and adaround.score == 3.0
    assert adaround.note == "finetune default ranges: 3; ranges of the best model so far (percentile): 2"
    finetuned = [c for c in seen if c.get("fast_finetune")]
    assert [c.get("activation", {}).get("method") for c in finetuned[:2]] == [None, "percentile"]
    assert "percentile_candidates" not in finetuned[0]
    assert result.met and "activation" not in result.config.model_dump(exclude_unset=True)


def test_without_a_search_finetune_rungs_try_min_max_beside_the_mse_default():
    """On a power-of-two target the plain model's min/max ranges differ from finetuning's MSE
    default: the first finetune rung (GPTQ) runs on both, and the step names the min/max start when it wins."""
    seen = []

    def metric(q):
        seen.append(q.config.model_dump(exclude_unset=True))
        if seen[-1].get("fast_finetune") is None:
            return 0.0
        return 2.0 if seen[-1].get("activation", {}).get("method") == "minmax" else 1.0

    result = auto_quantize(two_conv_net(), _calib(), DPU, metric=metric, min_metric=1.5,
                           config={"fast_finetune": None})
    adaround = next(s for s in result.steps if s.name == "GPTQ")
    assert adaround.kept and adaround.score == 2.0
    assert adaround.note == "finetune default ranges: 1; ranges of the best model so far (minmax): 2"
    assert result.config.model_dump(exclude_unset=True)["activation"]["method"] == "minmax"


def test_a_float_scale_target_finetunes_once_on_its_default_ranges():
    """cpu-int8's finetune default equals its plain default (percentile): one run of each finetune rung."""
    seen = []

    def metric(q):
        seen.append(q.config.fast_finetune is not None)
        return 0.0

    auto_quantize(two_conv_net(), _calib(), "cpu-int8", metric=metric, min_metric=1.0,
                  config={"fast_finetune": None})
    assert seen.count(True) == 3  # GPTQ, AdaRound and block reconstruction once each


def test_a_step_note_separates_the_scores_from_the_verdict():
    """One start tried and no gain: 'finetune default ranges: S; no gain: not kept'."""
    result = auto_quantize(two_conv_net(), _calib(), "cpu-int8", metric=lambda q: 0.0, min_metric=1.0,
                           config={"fast_finetune": None})
    adaround = next(s for s in result.steps if s.name == "AdaRound")
    assert adaround.note == "finetune default ranges: 0; no gain: not kept"


def test_gptq_is_the_first_finetune_rung_and_runs_gptq():
    """The closed-form GPTQ rung comes after equalisation and before the learned rounding, and
    quantizes with ``fast_finetune: {method: gptq}``; it is kept only when it raises the score."""
    methods = []

    def metric(q):
        ff = q.config.fast_finetune
        methods.append(None if ff is None else ff.method)
        return {None: 0.0, "gptq": 2.0}.get(methods[-1], 1.0)

    result = auto_quantize(two_conv_net(), _calib(), "cpu-int8", metric=metric, min_metric=3.0,
                           config={"fast_finetune": None})
    names = [s.name for s in result.steps]
    assert names.index("equalisation") < names.index("GPTQ") < names.index("AdaRound")
    assert [m for m in methods if m] == ["gptq", "adaround", "brecq"]
    gptq = result.steps[names.index("GPTQ")]
    assert gptq.kept and gptq.score == 2.0
    assert not result.steps[names.index("AdaRound")].kept
    assert result.config.fast_finetune.method == "gptq"
