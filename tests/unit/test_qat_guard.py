"""The QAT guard's measures on synthetic models (``npuflow.torch.qat_guard``): the greedy CTC
decode, and for a recogniser's ``(N, T, C)`` probabilities the per-step argmax agreement that
decides on a small guard next to the per-sample sequence agreement that decides on a large one."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.quant.output_kinds import ctc_greedy_sequences, is_sequence_output
from npuflow.torch.qat_guard import SEQUENCE_GUARD_SAMPLES, Guard, choose

T, C = 4, 3


def _model(bias: np.ndarray, shape: list[int]) -> onnx.ModelProto:
    """``softmax(x + bias)`` over the last axis, or ``x + bias`` (logits) for a 2-D ``shape``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    nodes = [helper.make_node("Add", ["x", "b"], ["z" if len(shape) == 3 else "y"])]
    if len(shape) == 3:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=-1))
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(bias.astype(np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _one_hot(classes: list[int]) -> np.ndarray:
    """Logits whose argmax per step is ``classes``."""
    x = np.zeros((1, len(classes), C), dtype=np.float32)
    x[0, np.arange(len(classes)), classes] = 5.0
    return x


def test_greedy_decode_merges_repeats_and_drops_the_blank():
    probs = np.concatenate([_one_hot([1, 1, 0, 1]), _one_hot([2, 0, 2, 2]), _one_hot([0, 0, 0, 0])])
    assert ctc_greedy_sequences(probs) == [(1, 1), (2, 2), ()]
    assert ctc_greedy_sequences(probs[0]) == [(1, 1)]  # one (T, C) sample
    assert ctc_greedy_sequences(_one_hot([1, 2, 2, 1])) == [(1, 2, 1)]


def test_sequence_output_is_probability_rows_over_steps():
    probs = np.full((2, T, C), 1.0 / C)
    assert is_sequence_output(probs)
    assert not is_sequence_output(probs[:, 0])  # (N, C): a classifier
    assert not is_sequence_output(probs * 2)  # rows that do not sum to 1: not probabilities


def test_step_agreement_decides_and_sequence_agreement_is_reported():
    """Two candidates that each change one step of each of two samples: equal step agreement,
    different sequence agreement; the step agreement is the score."""
    samples = [{"x": _one_hot([1, 1, 0, 2])}, {"x": _one_hot([2, 0, 1, 0])}]
    guard = Guard(_model(np.zeros((1, T, C)), [1, T, C]), samples, ["x"], ["y"])
    assert guard.measure == "argmax agreement" and guard.sequence_outputs == [0]
    same_lines = np.zeros((1, T, C))
    same_lines[0, 1, 0] = 10.0  # step 1 -> blank: (1, 1, 0, 2) still reads (1, 2); the second's step 1 is blank already
    other_line = np.zeros((1, T, C))
    other_line[0, 3, 1] = 10.0  # step 3 -> 1: the first reads (1, 1), not (1, 2); the second (2, 0, 1, 1) still (2, 1)
    fp32 = guard.judge(_model(np.zeros((1, T, C)), [1, T, C]))
    kept = guard.judge(_model(same_lines, [1, T, C]))
    changed = guard.judge(_model(other_line, [1, T, C]))
    assert fp32.score == fp32.agreement == 1.0 and fp32.sequences == 1.0
    assert kept.agreement == 7 / 8 and kept.sequences == 1.0 and kept.score == kept.agreement
    assert changed.agreement == 6 / 8 and changed.sequences == 0.5 and changed.score == changed.agreement


def test_classifier_has_no_sequence_agreement():
    samples = [{"x": np.array([[0.0, 2.0, 1.0]], dtype=np.float32)}, {"x": np.array([[3.0, 0.0, 1.0]], dtype=np.float32)}]
    guard = Guard(_model(np.zeros((1, C)), [1, C]), samples, ["x"], ["y"])
    shifted = np.array([[0.0, 0.0, 5.0]])  # both samples now read class 2
    judged = guard.judge(_model(shifted, [1, C]))
    assert guard.sequence_outputs == [] and judged.sequences is None
    assert judged.score == judged.agreement == 0.0



def _bias(step: int, cls: int) -> np.ndarray:
    """A bias that makes ``cls`` the argmax of ``step`` on every sample."""
    b = np.zeros((1, T, C))
    b[0, step, cls] = 10.0
    return b


def test_a_large_guard_decides_a_recogniser_by_whole_lines():
    """From SEQUENCE_GUARD_SAMPLES held-out samples on, the greedy-decoded line decides: of two
    candidates that each change one step in four, the one whose lines still read as FP32's scores
    1, the other 0, and one line is the resolution the margin rule reads."""
    n = SEQUENCE_GUARD_SAMPLES
    samples = [{"x": _one_hot([1, 0, 0, 2])} for _ in range(n)]  # every line reads (1, 2)
    guard = Guard(_model(np.zeros((1, T, C)), [1, T, C]), samples, ["x"], ["y"])
    assert guard.measure == "sequence agreement" and guard.by_line == [0]
    same_line = guard.judge(_model(_bias(1, 1), [1, T, C]))  # (1, 1, 0, 2) still reads (1, 2)
    other_line = guard.judge(_model(_bias(3, 1), [1, T, C]))  # (1, 0, 0, 1) reads (1, 1)
    assert same_line.agreement == other_line.agreement == 0.75
    assert (same_line.score, same_line.sequences) == (1.0, 1.0)
    assert (other_line.score, other_line.sequences) == (0.0, 0.0)
    assert same_line.resolution == pytest.approx(1.0 / n)
    assert choose([("trained", same_line), ("ptq start", other_line)]) == "trained"


def test_a_small_guard_keeps_the_step_agreement():
    """One sample fewer: the per-step agreement decides, and the two candidates above tie."""
    samples = [{"x": _one_hot([1, 0, 0, 2])} for _ in range(SEQUENCE_GUARD_SAMPLES - 1)]
    guard = Guard(_model(np.zeros((1, T, C)), [1, T, C]), samples, ["x"], ["y"])
    assert guard.measure == "argmax agreement" and guard.by_line == []
    same_line = guard.judge(_model(_bias(1, 1), [1, T, C]))
    other_line = guard.judge(_model(_bias(3, 1), [1, T, C]))
    assert same_line.score == other_line.score == 0.75 and same_line.sequences == 1.0
    assert choose([("trained", same_line), ("ptq start", other_line)]) == "ptq start"
