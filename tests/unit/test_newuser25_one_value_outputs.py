"""New-user round 25b: outputs of one value per sample are judged over the samples.

DeepFM's click probability is ``(N, 1)``: the accuracy check judged each sample's output by its
cosine, which for one value is +-1 (0 for a zero), so a held-out probability went 0.956 -> 0.008
(its label flipped) with no warning, and quantize printed "cosine similarity 0.000000" for two
near-zero outputs that quantized to exactly 0.  Such an output is now judged over the samples (its
largest error against its range, ``NPF_QUANT_OUTPUT_ERROR``), and a sigmoid's probability is read
as a label at 0.5 (``NPF_QUANT_LABEL_MARGIN``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.cli.similarity import output_figure
from npuflow.quant.output_kinds import few_value_error

BATCH, FIELDS, VOCAB, DIM = 1, 4, 10, 4


def _click_model(spread: float) -> onnx.ModelProto:
    """A DeepFM-like click model: int64 field ids [1, 4] -> embedding Gather -> sum over fields ->
    Gemm to two features ``[spread * s0 + s1, spread * s0]`` -> their difference (the logit) ->
    Sigmoid -> p [1, 1].  With a large ``spread`` the two features span a wide int8 grid whose
    step is larger than the logit they differ by: labels near 0.5 flip once quantized."""
    rng = np.random.default_rng(25)
    emb = rng.normal(0.0, 1.0, (FIELDS * VOCAB, DIM)).astype(np.float32)
    w1 = np.zeros((DIM, 2), np.float32)
    w1[0, :], w1[1, 0] = spread, 1.0
    inits = [numpy_helper.from_array(emb, "emb"),
             numpy_helper.from_array(np.arange(FIELDS, dtype=np.int64) * VOCAB, "offs"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(np.array([[1.0], [-1.0]], np.float32), "w2")]
    nodes = [helper.make_node("Add", ["ids", "offs"], ["i"], name="offset"),
             helper.make_node("Gather", ["emb", "i"], ["e"], name="embed"),
             helper.make_node("ReduceSum", ["e", "axis1"], ["s"], name="fields", keepdims=0),
             helper.make_node("Gemm", ["s", "w1"], ["h"], name="features"),
             helper.make_node("Gemm", ["h", "w2"], ["logit"], name="difference"),
             helper.make_node("Sigmoid", ["logit"], ["p"], name="click")]
    graph = helper.make_graph(nodes, "click", [helper.make_tensor_value_info("ids", TensorProto.INT64, [BATCH, FIELDS])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [BATCH, 1])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calibration(n: int = 32) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [{"ids": rng.integers(0, VOCAB, (BATCH, FIELDS), dtype=np.int64)} for _ in range(n)]


def test_a_flipped_click_label_warns():
    result = npuflow.quantize(_click_model(spread=60.0), _calibration(), "cpu-int8", warn=False)
    report = result.report
    few = report.few_values["p"]
    assert few.fixed and (few.low, few.high) == (0.0, 1.0)
    (check,) = report.label_checks
    assert check.tensor == "p" and "0.5" in check.read_by
    assert check.margin.rows == report.similarity_samples * BATCH
    assert check.margin.changed > 0.0  # labels did flip on the check's own samples
    codes = {w.code for w in report.warnings}
    assert {"NPF_QUANT_LABEL_MARGIN", "NPF_QUANT_OUTPUT_ERROR"} <= codes
    assert "p" not in report.worst_samples  # one value's cosine (+-1) judges nothing
    line = output_figure(report.to_json(), "p")
    assert "cosine similarity" not in line and "largest error" in line and "[0, 1]" in line


def test_a_well_quantized_click_model_does_not_warn():
    report = npuflow.quantize(_click_model(spread=0.0), _calibration(), "cpu-int8", warn=False).report
    assert report.few_values["p"].share < 0.1
    assert not {w.code for w in report.warnings} & {"NPF_QUANT_LABEL_MARGIN", "NPF_QUANT_OUTPUT_ERROR"}


def test_near_zero_outputs_quantized_to_zero_are_a_small_error_not_cosine_zero():
    """Round 25's "cosine similarity 0.000000": two float probabilities ~1e-5, both quantized to 0."""
    found = few_value_error([np.array([[1e-5]]), np.array([[2e-5]])], [np.zeros((1, 1))] * 2, (0.0, 1.0))
    assert found.max_error == 2e-5 and found.share < 1e-4
    figure = output_figure({"outputs": {"p": 0.0}, "few_values": {"p": found.to_json()}, "similarity_samples": 2}, "p")
    assert "0.000000" not in figure and "cosine similarity" not in figure


def test_few_values_are_counted_per_batch_row_and_a_1d_output_whole():
    from npuflow.quant.output_kinds import is_few_values
    assert is_few_values((1, 1)) and is_few_values((16, 1)) and is_few_values(())
    assert not is_few_values((1, 10)) and not is_few_values((512,))  # a class row; an embedding without its batch axis
