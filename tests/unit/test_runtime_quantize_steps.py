"""A model's quantize and dequantize steps and single-row fully connected layers in the fused runs
(``runtime/fused_qlinear.py``, ``fused_graph.rows_channels_last``): ``QuantizeLinear`` and
``DequantizeLinear`` where ONNX Runtime's kernels are ``numerics``' arithmetic, one ``Reshape``
instead of transposes around fully connected layers; codes equal to the kernels' on ties and at the
extremes, and the float forms where the check refuses the kernel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import fused, fused_graph, fused_qgemm, fused_qlinear
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import CPU, DPU

IN_SCALE, IN_ZP = 0.043, 119


def _classifier(mode: str, rows: int) -> Builder:
    """float input -> uint8 quantize -> conv 3x3 + Relu -> flatten -> fc -> fc -> float output
    (``mode``'s tie rule; uint8 activations with zero points off 0, per-channel weights)."""
    rng = np.random.default_rng(61)
    b = Builder(mode)
    x = b.input("x", [rows, 2, 5, 5], IN_SCALE, IN_ZP, "uint8")
    w = b.weight("w", rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), np.linspace(0.004, 0.009, 4).astype(np.float32),
                 axis=0)
    c = b.quantize(b.node("Relu", [b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1])], "relu"), 0.021, 0, "uint8")
    f = b.quantize(b.node("Flatten", [b.dq(c)], "flatten"), 0.021, 0, "uint8")
    w1 = b.weight("w1", rng.normal(0, 0.2, (100, 24)).astype(np.float32), np.full(24, 0.0041, np.float32), axis=1)
    h = b.quantize(b.node("MatMul", [b.dq(f), w1], "fc1"), 0.05, 131, "uint8")
    w2 = b.weight("w2", rng.normal(0, 0.2, (24, 10)).astype(np.float32), np.full(10, 0.0077, np.float32), axis=1)
    b.output(b.quantize(b.node("MatMul", [b.dq(h), w2], "fc2"), 0.061, 97, "uint8"), "logits")
    return b


def _inputs(rows: int) -> dict[str, list[np.ndarray]]:
    """Everyday values, the ties of every code and their float32 neighbours, and the extremes
    (far beyond both ends of the codes: saturation at 0 and 255)."""
    n = rows * 2 * 5 * 5
    rng = np.random.default_rng(5)
    ties = ((np.arange(n) % 260 - 2 - IN_ZP + 0.5) * np.float64(np.float32(IN_SCALE))).astype(np.float32)
    up = np.nextafter(ties, np.float32(np.inf))
    extreme = np.where(rng.random(n) < 0.5, -100.0, 100.0).astype(np.float32)
    return {"x": [v.reshape(rows, 2, 5, 5) for v in (rng.normal(0, 2.0, n).astype(np.float32), ties, up, extreme)]}


def _live(session: npuflow.Session) -> list[str]:
    run = next(it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
               if isinstance(it, fused.FusedRun))
    g = run.graph()
    heads = [g.bytes[t] if t in g.bytes else g.names[t] for t in run.outputs]
    return [n.op_type for n in fused_graph.live(g.nodes, g.inits, heads)[0]]


def _optimized(session: npuflow.Session, path: Path) -> list:
    """The nodes of the graph ONNX Runtime runs for ``session``'s fused run, with the session's
    own graph optimisations (``optimized_model_filepath``)."""
    import onnx
    import onnxruntime as ort

    run = next(it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
               if isinstance(it, fused.FusedRun))
    g = run.graph()
    model, arrays = g.model([onnx.helper.make_tensor_value_info(
        f"out{k}", fused_graph.elem_type(g.tensors[t]["dtype"]), None) for k, t in enumerate(run.outputs)],
        [onnx.helper.make_node("Identity", [g.bytes.get(t) or g.names[t]], [f"out{k}"])
         for k, t in enumerate(run.outputs)])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(path), 3
    if arrays:
        opts.add_external_initializers(list(arrays), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()])
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                         disabled_optimizers=fused.DISABLED_OPTIMIZERS)
    return list(onnx.load(str(path)).graph.node)


def _equal_to_kernels(model, inputs: dict[str, list[np.ndarray]], target: str, tmp: Path) -> npuflow.Session:
    """Outputs and every dumped integer tensor of the fused runs equal the kernels' on each input."""
    compiled = npuflow.compile(model, target)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for k, x in enumerate(inputs["x"]):
        a, b = fast.run({"x": x}, dump_dir=tmp / f"fast{k}"), ref.run({"x": x}, dump_dir=tmp / f"ref{k}")
        for name in a:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        index = json.loads((tmp / f"ref{k}" / "index.json").read_text())
        assert index and json.loads((tmp / f"fast{k}" / "index.json").read_text()).keys() >= index.keys()
        for name, file in index.items():
            got = np.load(tmp / f"fast{k}" / json.loads((tmp / f"fast{k}" / "index.json").read_text())[name])
            assert np.array_equal(got, np.load(tmp / f"ref{k}" / file)), name
    return fast


@pytest.mark.parametrize("rows", [1, 3])
def test_quantize_steps_and_fully_connected_layers_on_onnxruntime_nodes_exactly(rows, tmp_path, monkeypatch):
    b = _classifier("half_even", rows)
    x = _inputs(rows)
    codes = nm.quantize(x["x"][3], IN_SCALE, IN_ZP, bits=8, signed=False, round_mode="half_even")
    assert {0, 255} <= set(np.unique(codes).tolist())  # the extremes saturate both ends
    ops = _live(_equal_to_kernels(b.model(), x, CPU, tmp_path / "qgemm"))
    # (the float32 input's Cast to float32 is ONNX Runtime's to drop; the conv's 2 input channels
    # are padded to 4 first, fused_qlinear.input_padding)
    after = ops[ops.index("QuantizeLinear") + 1:]
    assert after[:2] == ["Pad", "QLinearConv"] and ops[-1] == "DequantizeLinear", ops
    assert not {"Div", "Round", "Mul"} & set(ops), ops
    if fused_qgemm.qgemm_exact():  # one multiplier per layer: QGemm of the rows, no layout nodes
        assert ops.count("QGemm") == 2 and "Transpose" not in ops, ops
    # the convolution form (where QGemm is not exact): channels-last, so rows of K values are its
    # layout already and no transpose is written around the layers, for one row or several
    monkeypatch.setattr(fused_qgemm, "qgemm_exact", lambda: False)
    session = _equal_to_kernels(b.model(), x, CPU, tmp_path / "conv")
    ops = _live(session)
    assert "QGemm" not in ops and "Transpose" not in ops, ops
    fc = ops.index("QLinearConv", ops.index("QLinearConv") + 1)
    assert ops[fc - 1] == "Reshape" and ops[fc + 1] == "QLinearConv", ops  # no Reshape between the layers
    # and none from ONNX Runtime's layout pass: the graph it runs has no Transpose after the
    # first convolution's (which the classifier's flatten needs back in channels-first order)
    optimized = _optimized(session, tmp_path / "optimized.onnx")
    assert [n.op_type for n in optimized].count("Transpose") == 2, [n.op_type for n in optimized]
    fcs = [n for n in optimized if n.op_type == "QLinearConv"][1:]
    assert len(fcs) == 2 and all(n.domain == "com.microsoft" for n in fcs)


def test_half_up_quantize_step_keeps_the_float_form(tmp_path):
    # QuantizeLinear rounds ties to even: a DPU's half-up input step stays the float division and rounding
    b = Builder("half_up")
    x = b.input("x", [1, 2, 5, 5], 2.0 ** -4)
    w = b.weight("w", np.random.default_rng(3).normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32), 2.0 ** -7)
    b.output(b.quantize(b.node("Conv", [b.dq(x), w], "conv", pads=[1, 1, 1, 1]), 2.0 ** -3), "out")
    ties = ((np.arange(50) - 25.5) * 2.0 ** -4).astype(np.float32).reshape(1, 2, 5, 5)
    ops = _live(_equal_to_kernels(b.model(), {"x": [ties, ties * 100]}, DPU, tmp_path))
    assert "QuantizeLinear" not in ops and "Floor" in ops, ops


def test_float_forms_serve_where_the_checks_refuse_the_kernels(monkeypatch, tmp_path):
    monkeypatch.setattr(fused_qlinear, "_quantize_matches", lambda scale, zp: False)
    monkeypatch.setattr(fused_qlinear, "_dequantize_matches", lambda scale, zp: False)
    ops = _live(_equal_to_kernels(_classifier("half_even", 1).model(), _inputs(1), CPU, tmp_path))
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops and "Div" in ops, ops


@pytest.mark.parametrize("scale,zp", [(0.043, 119), (1.0, 0), (0.1, 255), (3e-5, 128), (7.3, 3)])
def test_onnxruntimes_quantize_and_dequantize_pass_their_checks(scale, zp):
    assert fused_qlinear._quantize_matches(float(np.float32(scale)), zp)
    assert fused_qlinear._dequantize_matches(float(np.float32(scale)), zp)


@pytest.mark.parametrize("scale", [0.043, 0.1, 0.0037, 7.3])
def test_quantize_check_tells_a_reciprocal_product_from_the_division(scale):
    # a kernel that multiplied by 1/scale instead of dividing rounds some value next to a tie the
    # other way: the check's values find it
    s = np.float32(scale)
    x = fused_qlinear.quantize_probe_values(s, 119)
    with np.errstate(over="ignore", invalid="ignore"):
        divided = np.clip(np.rint(x / s) + 119, 0, 255)
        multiplied = np.clip(np.rint(x * (np.float32(1) / s)) + 119, 0, 255)
    assert np.any(divided != multiplied)
