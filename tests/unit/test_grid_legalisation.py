"""The quantize step the compiler adds after a grid-preserving op is exact, and so is its reference
(issue 16: PP-OCRv4 rec x bernoulli2 read "3 LSB at squeeze_0.tmp_0_grid_quantized").

``DQ -> Squeeze -> MatMul`` gets ``Q -> DQ`` of its input's parameters after the Squeeze
(``foreign._propagate_through_grid_ops``), so the Squeeze runs on the accelerator as a plain move
of codes.  The layer-wise check feeds that move ORT's codes of its input, taken from ORT on the
model with every compared tensor exposed, and compared its output with ORT on the legalised model
run with only the new tensor exposed.  At level "all" ORT fuses ``DQ, DQ -> Add -> Q`` into
``QLinearAdd`` only when the Add's quantized operands are graph outputs (otherwise it first moves
one of them to uint8 and the Add stays float), and the two kernels round ties differently: the two
runs disagreed upstream, and a move of codes read as a wrong result (3 LSB after PP-OCR's neck,
1 LSB here).  The move itself and the legalised model were exact all along.
"""

from __future__ import annotations

import numpy as np
import onnx

import npuflow
from npuflow.compiler import foreign
from npuflow.model import load
from npuflow.targets import load_target
from tests.compile_check import accelerator_ops, compare_layerwise_with_ort
from tests.qdq_builder import Builder, ort_values

TARGET = "bernoulli2"  # float scales: the target where the corpus found it
SHAPE = [1, 1, 32, 16]


def _tie_model() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """``r = Q(DQ(a) + DQ(c))`` at twice their scale (every odd code sum is a tie), then
    ``DQ -> Squeeze -> MatMul`` with an int8 weight and a float output (no quantize step after the
    Squeeze: the grid pattern; the compiler adds the step only before a layer whose weight is
    quantized)."""
    rng = np.random.default_rng(16)
    b = Builder("half_even")
    a = b.dq(b.input("a", SHAPE, 0.05))
    r = b.quantize(b.node("Add", [a, b.dq(b.input("c", SHAPE, 0.05))], "r"), 0.1)
    s = b.node("Squeeze", [b.dq(r), b.const("axes", np.array([1]))], "s")
    b.float_output(b.node("MatMul", [s, b.weight("w", rng.normal(0, 0.3, (16, 5)).astype(np.float32), 0.01)], "y"))
    b.float_output(b.node("Mul", [a, b.const("two", np.float32(2))], "z"))  # a second reader of DQ(a)
    feeds = {k: rng.normal(0, 2, SHAPE).astype(np.float32) for k in "ac"}
    return b.model(), feeds


def _legalised(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    legal = load(model)
    return legal, foreign.legalize(legal, load_target(TARGET))


def test_the_pattern_makes_ort_depend_on_what_it_exposes():
    """Precondition of the regression test: ORT's codes of ``r_q`` at level "all" change with the
    tensors a run exposes (fused ``QLinearAdd`` against float ``Add`` on ties)."""
    model, feeds = _tie_model()
    alone = ort_values(model, feeds, ["s"], "all")["s"] / np.float32(0.1)
    exposed = ort_values(model, feeds, ["r_q", "a_q", "c_q"], "all")["r_q"]
    assert np.any(np.rint(alone).astype(np.int64).reshape(-1) != exposed.astype(np.int64).reshape(-1))


def test_legalisation_adds_an_exact_grid_step_and_says_so():
    model, feeds = _tie_model()
    legal, notes = _legalised(model)
    assert any("propagated quantization through 1 Squeeze" in n for n in notes), notes
    assert "s_grid_quantized" in {o for n in legal.graph.node for o in n.output}
    for level in ("all", "disable"):  # the model's outputs as ORT computes them: unchanged
        want, got = ort_values(model, feeds, ["y", "z"], level), ort_values(legal, feeds, ["y", "z"], level)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{level}:{name}")


def test_grid_step_is_zero_lsb_layerwise():
    """The Squeeze moves codes: fed ORT's codes of its input it must give ORT's codes exactly, at
    both optimisation levels (it read 1 LSB before the reference exposed the same tensors)."""
    model, feeds = _tie_model()
    kinds = {op["outputs"][0]: op["kind"] for op in accelerator_ops(npuflow.compile(model, TARGET))}
    assert kinds.get("s_grid_quantized") == "reshape", kinds
    diffs = compare_layerwise_with_ort(model, feeds, TARGET)
    assert diffs["s_grid_quantized"] == 0, diffs
    assert max(diffs.values()) <= 1, diffs
