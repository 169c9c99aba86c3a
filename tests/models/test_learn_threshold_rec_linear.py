"""A moved weight fix position of a ``MatMul`` whose bias is the int32 ``Add`` after it moves that
bias's scale with it (``learn_threshold``, issue 18).

ONNX Runtime fuses ``DQ -> MatMul -> Add(DQ(int32 b))`` into one QGemm that reads the bias codes at
``s_in * s_w``.  Until 418651d a moved position left the Add's codes at the old ``s_in * s_w``
(PP-OCRv4 rec's attention linears read their biases at 2x and 0.5x); 418651d kept those layers'
positions, which cost PP-OCRv4 rec's seed 0 two points.  Now the Add's scale moves with the
weight's and its codes are AdaQuant's learned bias rounded on the new grid (the Add's bias is part of
the layer's problem: :mod:`tests.models.test_adaquant_matmul_bias_rec`).

The layer is PP-OCRv4 rec's attention linear ``p2o.MatMul.18`` with its bias ``Add``, cut out of
the optimised float model and fed its real inputs on rendered text lines.  Which position AdaQuant
learns is :mod:`tests.unit.test_tqt_ptq`'s subject; here the solver's answer is forced to the better
neighbour of the calibrated position (alone, this layer keeps its position: no move to write).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
from npuflow import numerics
from npuflow.numerics import RoundMode
from npuflow.graph import GraphView, slice_model
from npuflow.model import infer_static_shapes, load
from npuflow.ort_session import open_session
from npuflow.passes.linear_bias import linear_bias
from npuflow.passes.optimize import optimize_float
from npuflow.quant.pipeline import config_of
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.adaquant import adaquant
from npuflow.quant.algorithms.capture import capture
from npuflow.quant.algorithms.layer_problem import LayerProblem
from npuflow.targets import load_target
from tests import fixture_models
from tests.compile_check import compare_layerwise_with_ort

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"
LAYER = "p2o.MatMul.18"
CONFIG = {"fast_finetune": {"method": "adaquant", "iters": 100, "learn_threshold": True}}


def _lines(n: int) -> list[dict[str, np.ndarray]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import datasets

    return datasets.ocr_lines("calib", n)[0]


@pytest.fixture(scope="module")
def rec_linear() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]], np.ndarray]:
    """``(float MatMul + bias Add of PP-OCRv4 rec, its inputs on 8 text lines, the float bias)``."""
    lines = _lines(8)
    rec = infer_static_shapes(optimize_float(load(fixture_models.ppocr_rec(), {"x": list(lines[0]["x"].shape)}),
                                             load_target(DPU)))
    view = GraphView(rec)
    (mm,) = [n for n in rec.graph.node if n.name == LAYER]
    found = linear_bias(mm, view)
    assert found is not None, "the attention linear is no longer MatMul + bias Add"
    got: list[np.ndarray] = []
    capture(rec, lines, [mm.input[0]], lambda _, v: got.append(v[mm.input[0]]))
    sub = slice_model(rec, [found.output], [mm.input[0]])
    return sub, [{mm.input[0]: x} for x in got], np.asarray(view.value(found.bias), np.float32).reshape(-1)


def _better_neighbour(p: LayerProblem, iters: int, lr: float, batch: int, **kwargs) -> tuple[np.ndarray, ...]:
    """Stands in for :func:`.adaquant.adaquant_threshold`: AdaQuant at ``p-1`` and at ``p+1``, the one
    that reproduces the layer's float output better."""
    moved = [p.at_scale((p.s * np.float32(2.0 ** -d)).astype(np.float32)) for d in (-1, 1)]
    solved = [(*adaquant(q, iters, lr, batch, seed=kwargs.get("seed", 0)), q.s) for q in moved]
    return min(solved, key=lambda r: p.error(*r))


def _scales(model: onnx.ModelProto) -> tuple[float, float, float, np.ndarray, float]:
    """``(s_in, s_w, bias scale, bias codes, output scale)`` of the quantized linear."""
    view = GraphView(model)
    (mm,) = [n for n in model.graph.node if n.op_type == "MatMul"]
    bias_dq = view.producer_node(linear_bias(mm, view).bias)
    out_q = view.only_consumer(view.only_consumer(mm.output[0]).output[0])
    assert out_q is not None and "Quantize" in out_q.op_type
    return (float(view.const(view.producer_node(mm.input[0]).input[1])),
            float(view.const(view.producer_node(mm.input[1]).input[1])),
            float(view.const(bias_dq.input[1])), view.const(bias_dq.input[0]), float(view.const(out_q.input[1])))


def _float_bias_model(model: onnx.ModelProto, bias: np.ndarray) -> onnx.ModelProto:
    """``model`` with its bias Add reading the float ``bias`` instead of the dequantized int32 codes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    (mm,) = [n for n in out.graph.node if n.op_type == "MatMul"]
    found = linear_bias(mm, view)
    out.graph.initializer.append(numpy_helper.from_array(bias, "float_bias"))
    for k, t in enumerate(found.add.input):
        if t == found.bias:
            found.add.input[k] = "float_bias"
    return out


def test_moved_matmul_position_moves_its_add_bias_scale(rec_linear, monkeypatch, tmp_path):
    sub, feeds, _ = rec_linear
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    s_in0, s_w0, s_b0, _, _ = _scales(npuflow.quantize(sub, feeds, DPU, {"fast_finetune": {"method": "adaquant",
                                                                                         "iters": 20}}, warn=False).model)
    chosen: list[tuple[np.ndarray, ...]] = []

    def solver(*args, **kwargs) -> tuple[np.ndarray, ...]:
        chosen.append(_better_neighbour(*args, **kwargs))
        return chosen[-1]

    monkeypatch.setattr(ff, "adaquant_threshold", solver)
    q = npuflow.quantize(sub, feeds, DPU, CONFIG, warn=False)
    s_in, s_w, s_b, codes, s_out = _scales(q.model)

    assert s_in == s_in0 and s_b0 == s_in0 * s_w0
    assert s_w in (s_w0 / 2, s_w0 * 2), f"the fix position did not move ({s_w0} -> {s_w})"
    assert s_b == s_in * s_w  # before: the Add kept s_in * s_w0 (QGemm read the bias at 2x / 0.5x)
    rule = RoundMode(config_of(CONFIG).resolve(load_target(DPU), "bias").round_mode)  # the target's bias rule
    learned = np.asarray(chosen[-1][1], np.float32).reshape(-1)
    want = numerics.quantize(learned, np.float32(s_b), 0, bits=32, round_mode=rule)
    np.testing.assert_array_equal(codes, want)  # the learned bias on the new grid, not the old codes

    fused = open_session(q.model, level="all")   # ONNX Runtime's QGemm fusion reads the codes at s_in * s_w
    reference = open_session(_float_bias_model(q.model, learned), level="disable")
    for feed in feeds:
        got, want_out = fused.run(None, feed)[0], reference.run(None, feed)[0]
        assert np.abs(got - want_out).max() <= s_out * (1 + 1e-6)

    diffs = compare_layerwise_with_ort(q.model, feeds[0], DPU)
    assert diffs and max(diffs.values()) == 0, diffs
