"""Sensitivity ranking and automatic mixed precision on the MNIST CNN, through the API and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npuflow.analyze import error_split, mixed_precision, sensitivity

pytestmark = pytest.mark.models

DPU = "DPUCZDX8G_ISA1_B4096"


def test_sensitivity_ranking_is_deterministic_and_json_complete(quantized, digits):
    a = sensitivity.analyze(quantized, digits[12:])
    b = sensitivity.analyze(quantized, digits[12:])
    assert a.ranking() == b.ranking()
    layers = quantized.requantizer.layers
    names = list(layers)
    assert sorted(a.ranking()) == sorted(names)
    # the 5 weighted layers, then the weightless ops with a quantized output of their own (MaxPool, Reshape)
    weighted = [n for n, layer in layers.items() if layer.weighted]
    assert len(weighted) == 5 and names[:5] == weighted
    assert {layer.op_type for layer in layers.values() if not layer.weighted} == {"MaxPool", "Reshape"}
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
    everything = {name: "float" for name in quantized.requantizer.layers}
    assert metric(quantized.requantizer.export(everything)) > max(base, 0.9999)
    int16 = {n: "int16" for n in everything}
    assert metric(quantized.requantizer.export(int16)) > base


@pytest.mark.parametrize("precision", ["float", "int16"])
def test_auto_mixed_precision_reaches_requested_similarity(quantized, digits, precision):
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    base = metric(quantized.model)
    raised = {name: precision for name in quantized.requantizer.layers}
    best = metric(quantized.requantizer.export(raised))
    target = base + (best - base) * 0.5
    result = mixed_precision.search(quantized, digits[12:],
                                    min_similarity=target, precision=precision)
    assert result.met and result.score >= target
    assert 1 <= len(result.changes) < 5 and set(result.changes.values()) == {precision}
    assert metric(result.model) == pytest.approx(result.score)
    key = "keep_float" if precision == "float" else "layers"
    assert result.config_overrides[key]


def _calib_folder(digits, tmp_path):
    """The first 8 digits as a folder of .npy files, what ``--calib`` reads."""
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, d in enumerate(digits[:8]):
        np.save(calib / f"{i:03d}.npy", d["input"])
    return calib


def test_analyze_cli_prints_ranking_and_writes_json(cli, models, digits, tmp_path):
    calib = _calib_folder(digits, tmp_path)
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


def test_error_split_cli_prints_the_top_rows_and_writes_every_row(cli, models, digits, tmp_path):
    """The CLI's report is the Python API's on the same quantization: 4-bit weights (the fixture
    ``quantized``'s config), so the weights are the larger half and lead the table."""
    from npuflow.quant import quantize

    calib = _calib_folder(digits, tmp_path)
    config = {"include_bias_corr": False, "weight": {"bit_width": 4}}
    (tmp_path / "q.json").write_text(json.dumps(config))
    out = tmp_path / "split.json"
    proc = cli("analyze", "error-split", models.mnist_cnn(), "--calib", calib, "--target", DPU, "-c",
               tmp_path / "q.json", "--samples", "4", "--top", "3", "--json", out)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    q = quantize(str(models.mnist_cnn()), digits[:8], DPU, config=config)
    want = error_split.split(q, digits[:4])
    assert got == json.loads(json.dumps(want.to_dict()))
    kinds = [r["kind"] for r in got["rows"]]
    assert kinds.count("weights") == 5 and kinds.count("activation") == len(error_split.activation_names(q.model))
    assert [r["gain"] for r in got["rows"]] == sorted((r["gain"] for r in got["rows"]), reverse=True)
    assert all(r["gain"] == pytest.approx(r["score"] - got["quantized_score"]) for r in got["rows"])
    assert got["rows"][0]["kind"] == "weights" and got["all_weights_float"] > got["all_activations_float"]
    assert got["fast_finetune"] is None and not got["include_cle"]
    assert "Weights or activations" in proc.stdout and "error split" in proc.stderr
    flat = " ".join(proc.stdout.split())
    assert all(" ".join(line.split()) in flat for line in error_split.summary_lines(want))
    assert "the weights are the larger half" in flat
    table = [line.split("│")[1:-1] for line in proc.stdout.splitlines() if line.startswith("│")]
    assert [(kind.strip(), name.strip()) for _, kind, name, _, _ in table] == [
        (r["kind"], r["group"]) for r in got["rows"][:3]]
    proc = cli("analyze", "error-split", models.mnist_cnn(), "--calib", tmp_path / "nowhere", "--target", DPU)
    assert proc.returncode == 2 and "NPF_QUANT_CALIB_SOURCE" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("analyze", "error-split", models.mnist_cnn(), "--calib", calib, "--target", DPU,
               "--input-shape", "images=1x1x28x28")
    assert proc.returncode == 2 and "NPF_MODEL_UNKNOWN_INPUT" in proc.stderr and "Traceback" not in proc.stderr


def test_weightless_points_can_be_kept_in_float_or_raised_to_int16(quantized, digits):
    rq = quantized.requantizer
    name, layer = next((n, l) for n, l in rq.layers.items() if not l.weighted)
    tensor, = layer.outputs
    assert layer.readers

    def quantized_at(model) -> dict[str, str]:
        """Activation tensor -> the op type of its quantize step."""
        return {n.input[0]: n.op_type for n in model.graph.node if n.name.endswith("_q")}

    # alone it stays quantized: the integer layer reading it needs integers (a CPU -> DPU boundary)
    assert tensor in quantized_at(rq.export({name: "float"}))
    edited = rq.export({n: "float" for n in [name, *layer.readers]})
    assert tensor not in quantized_at(edited)
    # int16: its quantize step and those it shares a scale with (a MaxPool's input) are 16-bit
    raised = quantized_at(rq.export({name: "int16"}))
    assert raised[tensor].endswith("_int16")
    assert sum(op.endswith("_int16") for op in raised.values()) == len(quantized.requantizer.plan.groups().get(
        quantized.requantizer.plan.find(tensor), [tensor]))
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    assert metric(edited) >= metric(quantized.model) - 1e-4  # a float point never costs accuracy here


def test_mixed_precision_changes_nothing_when_the_target_already_holds(quantized, digits):
    base = sensitivity.similarity_metric(quantized.float_model, digits[12:])(quantized.model)
    mp = mixed_precision.search(quantized, digits[12:], min_similarity=base - 0.01)
    assert mp.met and mp.changes == {} and mp.evaluations == 1 and mp.sensitivity.layers == []


class _Budget:
    """A search clock whose budget is spent after ``calls`` questions (the search's own steps,
    no wall time: the same cut on every machine); ``left`` None lets the sensitivity run whole."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self, monkeypatch) -> None:
        asked = []

        def spent(_clock) -> bool:
            asked.append(1)
            return len(asked) > self.calls

        monkeypatch.setattr(mixed_precision._Clock, "spent", spent)
        monkeypatch.setattr(mixed_precision._Clock, "left", lambda _clock: None)


@pytest.mark.parametrize("calls", [0, 1, 2, 3, 100])
def test_spent_budget_ends_the_search_with_a_plan_that_meets_the_target(quantized, digits, monkeypatch, caplog,
                                                                        calls):
    """basic-pitch (175 layers) ran past a user's 500 s with no result: a spent budget returns the
    last plan measured to meet the target, says so, and warns."""
    metric = sensitivity.similarity_metric(quantized.float_model, digits[12:])
    base = metric(quantized.model)
    best = metric(quantized.requantizer.export({n: "float" for n in quantized.requantizer.layers}))
    target = base + (best - base) * 0.5
    whole = mixed_precision.search(quantized, digits[12:], min_similarity=target)
    assert whole.met and not whole.budget_spent
    _Budget(calls)(monkeypatch)
    seen = []
    cut = mixed_precision.search(quantized, digits[12:], min_similarity=target,
                                 progress=lambda name, done, total: seen.append((name, done, total)))
    assert cut.met and cut.score >= target and metric(cut.model) == pytest.approx(cut.score)
    assert len(cut.changes) >= len(whole.changes)
    if calls == 0:  # not one step of the binary search: every ranked layer stays raised
        assert cut.budget_spent and len(cut.changes) >= len(quantized.requantizer.layers)
    if calls == 100:
        assert not cut.budget_spent and cut.changes == whole.changes and cut.evaluations == whole.evaluations
    warned = [r for r in caplog.records if "time budget ran out" in r.getMessage()]
    assert bool(warned) == cut.budget_spent and cut.summary()["budget_spent"] == cut.budget_spent
    steps = [(done, total) for name, done, total in seen if name.startswith("search: ")]
    assert steps and all(d <= t for d, t in steps) and [d for d, _ in steps] == sorted(d for d, _ in steps)


def test_budget_spent_before_any_layer_is_scored_is_not_met_and_warned(quantized, digits, caplog):
    base = sensitivity.similarity_metric(quantized.float_model, digits[12:])(quantized.model)
    mp = mixed_precision.search(quantized, digits[12:], min_similarity=min(base + 1e-4, 1.0), time_budget=1e-9)
    assert not mp.met and mp.budget_spent and mp.changes == {} and mp.score == pytest.approx(base)
    assert mp.sensitivity.layers == [] and len(mp.sensitivity.skipped) == len(quantized.requantizer.layers)
    assert mp.summary()["not_scored"] == mp.sensitivity.skipped
    assert any("were not scored" in r.getMessage() for r in caplog.records)
