"""A LayerNorm's one-pass variance ``mean(x*x) - mean(x)**2`` (tf2onnx from JAX: Magika 1.0.3's
file-type model) on a power-of-two target: the two terms each took an 8-bit grid set by the range
of ``x^2`` (step 1/256 for values up to 0.46) while their difference, the variance, lies in
[0.0003, 0.023]: the rounding of both terms landed on it whole (relative error 0.30), the
reciprocal square root after it read 0.62 cosine, and the model's output 0.970 on DPUCZDX8G_ISA1_B4096.
``passes/variance.py`` rewrites it as ``mean((x - mean(x))**2)`` in float before quantization; check
judges the rewritten graph too (its placement must equal compile's)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import npuflow
from npuflow.passes.variance import one_pass_variances, stable_variances

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture_models  # noqa: E402
from test_placement_agreement import _sides, compiled_devices  # noqa: E402

SHAPES = {"bytes": [1, 2048]}


def _bytes(seed: int) -> np.ndarray:
    """A random file's first 1500 bytes, then Magika's padding token 256."""
    a = np.random.default_rng(seed).integers(0, 256, size=(1, 2048)).astype(np.int32)
    a[:, 1500:] = 256
    return a


@pytest.fixture(scope="module")
def magika() -> onnx.ModelProto:
    return npuflow.model.load(fixture_models.magika(), SHAPES)


def test_both_layernorms_are_found_and_the_rewrite_computes_the_same(magika):
    found = one_pass_variances(magika)
    assert sorted(v.sub.name.rsplit("/", 2)[-2] for v in found) == ["LayerNorm_0", "LayerNorm_1"]
    stable = stable_variances(magika)
    assert one_pass_variances(stable) == []
    onnx.checker.check_model(stable)
    x = _bytes(100)
    before = ort.InferenceSession(magika.SerializeToString()).run(None, {"bytes": x})[0]
    after = ort.InferenceSession(stable.SerializeToString()).run(None, {"bytes": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shapes", [SHAPES, None], ids=["batch-1", "dynamic-batch"])
def test_power_of_two_calibration_cosine(shapes):
    """Without ``--input-shape`` the graph keeps its dynamic batch and computes its broadcast
    shapes at run time: the pass still proves the deviation's broadcast (shape inference with
    data propagation)."""
    q = npuflow.quantize(str(fixture_models.magika()), [_bytes(k) for k in range(8)], "DPUCZDX8G_ISA1_B4096",
                         input_shapes=shapes)
    assert q.report.calibration_outputs["target_label"] > 0.9995, q.report.calibration_outputs


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "bernoulli2"])
def test_check_places_as_compile_runs_and_the_npuf_runs(magika, target, tmp_path):
    q = npuflow.quantize(magika, [_bytes(k) for k in range(4)], target, input_shapes=SHAPES)
    checked = _sides(npuflow.check(magika, target, input_shapes=SHAPES))
    program = npuflow.compile(q.model, target, input_shapes=SHAPES)
    compiled = compiled_devices(program)
    common = [n for n in checked if n in compiled]
    assert len(common) > 50
    assert [(n, checked[n], compiled[n]) for n in common if checked[n] != compiled[n]] == []
    program.save(tmp_path / "m.npuf")
    x = _bytes(200)
    got = npuflow.Session(tmp_path / "m.npuf").run({"bytes": x})["target_label"]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(q.model.SerializeToString(), so).run(None, {"bytes": x})[0]
    np.testing.assert_array_equal(got, ref)
