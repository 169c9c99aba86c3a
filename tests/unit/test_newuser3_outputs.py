"""Model outputs a new user brings (round 3): a sequence output (sklearn's ZipMap) is refused with a code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from npuflow.errors import NpuflowError
from npuflow.quant.pipeline import quantize


def _sequence_output_model() -> onnx.ModelProto:
    """x -> MatMul -> y (tensor output) and SequenceConstruct(y) (a sequence output, as ZipMap's)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.linspace(-1, 1, 12, dtype=np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("SequenceConstruct", ["y"], ["probs"], name="zip")]
    seq = helper.make_tensor_sequence_value_info("probs", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3]), seq], [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_sequence_output_is_refused_naming_the_output(target):
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)} for i in range(4)]
    with pytest.raises(NpuflowError) as info:
        quantize(_sequence_output_model(), calib, target)
    assert info.value.code == "NPF_QUANT_NON_TENSOR_OUTPUT"
    assert "'probs'" in str(info.value) and "SequenceConstruct" in str(info.value)


def _cpu_only_model() -> onnx.ModelProto:
    """x -> Cos -> y: no node any target's accelerator runs (sklearn's LinearClassifier alike)."""
    graph = helper.make_graph([helper.make_node("Cos", ["x"], ["y"], name="cos")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_quantize_warns_when_nothing_runs_on_the_accelerator(caplog):
    calib = [{"x": np.random.default_rng(i).standard_normal((1, 4)).astype(np.float32)} for i in range(4)]
    with caplog.at_level("WARNING", logger="npuflow.quant.pipeline"):
        quantize(_cpu_only_model(), calib, "DPUCZDX8G_ISA1_B4096")
    assert any("nothing is quantized" in r.getMessage() and "NPF_COMPILE_NOT_QUANTIZED" in r.getMessage()
               for r in caplog.records)


def _embedding_model() -> onnx.ModelProto:
    """ids (int64) -> Gather(10-row table) -> MatMul -> y: a token-id model, as a BERT's embedding."""
    rng = np.random.default_rng(0)
    table = helper.make_tensor("table", TensorProto.FLOAT, [10, 8], rng.standard_normal(80).astype(np.float32))
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 8], rng.standard_normal(64).astype(np.float32))
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="emb"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])], [table, w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def embedding_session():
    import npuflow
    calib = [{"ids": np.array([[i % 10, 1, 2, 3]], np.int64)} for i in range(4)]
    qm = quantize(_embedding_model(), calib, "cpu-int8")
    return npuflow.Session(npuflow.compile(qm.model, "cpu-int8"))


def test_out_of_range_token_id_is_a_coded_error_naming_the_subgraph(embedding_session):
    with pytest.raises(NpuflowError) as info:
        embedding_session.run({"ids": np.array([[150, 1, 2, 3]], np.int64)})
    assert info.value.code == "NPF_RUNTIME_SUBGRAPH_FAILED"
    assert "Gather" in str(info.value) and "_cpu" in str(info.value)


def test_bench_runs_a_token_id_model_on_its_random_inputs(embedding_session):
    from npuflow.profile.bench import bench, random_inputs
    ids = random_inputs(embedding_session)["ids"]
    assert ids.min() >= 0 and ids.max() <= 1
    assert bench(embedding_session, frame_count=3).frame_count == 3


def _collapsing_model() -> onnx.ModelProto:
    """y = Concat(a * 2000, a)[:, 8:] with a = Conv(x): y shares the concat's grid, 2000x too coarse."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3], (rng.standard_normal(216) * 0.3).astype(np.float32))
    k = helper.make_tensor("k", TensorProto.FLOAT, [], [2000.0])
    starts, ends, axes = (helper.make_tensor(n, TensorProto.INT64, [1], [v])
                          for n, v in (("starts", 8), ("ends", 16), ("axes", 1)))
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "k"], ["big"], name="scale"),
             helper.make_node("Concat", ["big", "a"], ["c"], name="cat", axis=1),
             helper.make_node("Slice", ["c", "starts", "ends", "axes"], ["y"], name="small")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
                              [w, k, starts, ends, axes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_collapsed_on_a_shared_grid_is_warned_not_passed_as_within_one_step():
    calib = [np.random.default_rng(i).standard_normal((1, 3, 8, 8)).astype(np.float32) for i in range(4)]
    q = quantize(_collapsing_model(), calib, "DPUCZDX8G_ISA1_B4096", warn=False)
    assert q.report.calibration_outputs["y"] < 0.5  # every value rounds to 0 on the concat's grid
    assert q.report.within_one_step == []
    assert q.problem is not None and q.problem.code == "NPF_QUANT_LOW_SIMILARITY"
