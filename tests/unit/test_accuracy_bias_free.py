"""Data-free bias correction from BN statistics, and the fast-finetune driver's cache."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from npuflow.quant.algorithms import bias_correction
from npuflow.quant.algorithms.fast_finetune import FinetuneSettings, fast_finetune
from npuflow.quant.algorithms.capture import capture, run_outputs

from .qdq_toy import toy_qdq


def _bn_net(seed: int = 0):
    """x -> Conv1 -> BN -> Relu -> Conv2 (3x3) with BN statistics matching Conv1's real outputs."""
    rng = np.random.default_rng(seed)
    w1 = (rng.normal(size=(16, 3, 3, 3)) * 0.3).astype(np.float32)
    w2 = (rng.normal(size=(8, 16, 3, 3)) * 0.05 + 0.02).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, 16).astype(np.float32)
    beta = rng.normal(size=16).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (w1, "w1"), (np.zeros(16, np.float32), "b1"), (w2, "w2"), (np.zeros(8, np.float32), "b2"),
        (gamma, "gamma"), (beta, "beta"), (np.zeros(16, np.float32), "mean"), (np.ones(16, np.float32), "var"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mean", "var"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu1"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "bn_net", [helper.make_tensor_value_info("x", 1, [1, 3, 12, 12])],
                              [helper.make_tensor_value_info("y", 1, [1, 8, 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    feeds = [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(16)]
    acts = []
    capture(model, feeds, ["c1"], lambda _, v: acts.append(v["c1"]))
    a = np.concatenate(acts)
    for t in model.graph.initializer:
        if t.name == "mean":
            t.CopyFrom(numpy_helper.from_array(a.mean(axis=(0, 2, 3)).astype(np.float32), "mean"))
        if t.name == "var":
            t.CopyFrom(numpy_helper.from_array(a.var(axis=(0, 2, 3)).astype(np.float32), "var"))
    return model, feeds


def _mean_error(model, qmodel, feeds) -> float:
    ref = np.concatenate([o[0] for o in run_outputs(model, feeds)])
    out = np.concatenate([o[0] for o in run_outputs(qmodel, feeds)])
    return float(np.abs((out - ref).mean(axis=(0, 2, 3))).mean())


def test_data_free_bias_correction_uses_bn_statistics():
    model, feeds = _bn_net()
    q = toy_qdq(model, feeds, weights_only=True)
    corrected, names = bias_correction.correct_data_free(model, q, "std_round")
    assert names == ["conv2"]  # only the layer behind the BN has statistics
    assert set(bias_correction.bn_input_means(model)) == {"conv2"}
    assert _mean_error(model, corrected, feeds) < 0.5 * _mean_error(model, q, feeds)


def test_fast_finetune_reduces_layer_error_and_reuses_its_cache(tmp_path):
    model, feeds = _bn_net(1)
    q = toy_qdq(model, feeds)
    for method in ("adaround", "adaquant"):
        st = FinetuneSettings(method=method, iters=60, samples=512, round_mode="std_round", bias_round_mode="std_round")
        tuned, rep = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
        assert [r.name for r in rep.layers] == ["conv1", "conv2"] and not any(r.cached for r in rep.layers)
        assert all(r.error_after <= r.error_before for r in rep.layers)
        assert sum(r.error_after for r in rep.layers) < sum(r.error_before for r in rep.layers)
        again, rep2 = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
        assert all(r.cached for r in rep2.layers)
        assert onnx.printer.to_text(again.graph) == onnx.printer.to_text(tuned.graph)
        assert [t.raw_data for t in again.graph.initializer] == [t.raw_data for t in tuned.graph.initializer]


def test_fast_finetune_solves_each_layer_on_the_inputs_the_finetuned_model_feeds_it(tmp_path):
    """Sequential finetune: conv2's problem uses conv1's finetuned codes, not its nearest rounding.

    Rebuilding every layer's problem from the finished model must give the errors the report
    recorded; with inputs collected once from the un-finetuned model conv2's would differ.
    """
    from npuflow.quant.algorithms import fast_finetune as ff
    from npuflow.quant.algorithms.patches import grouped_weight
    from npuflow.quant.algorithms.qdq_weights import read_codes

    model, feeds = _bn_net(0)
    q = toy_qdq(model, feeds)
    st = FinetuneSettings(method="adaround", iters=60, samples=512, round_mode="std_round", bias_round_mode="std_round")
    tuned, rep = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
    jobs = ff.layer_jobs(model, tuned, 512 // len(feeds), [])
    fx = ff._collect(model, feeds, {j.ql.name: (j.fl.node.input[0], j.sampler) for j in jobs})
    stale = ff.layer_problem(model, jobs[1], ff.QuantizedInputs(q, feeds), fx["conv2"], st.round_mode)
    for job, result in zip(jobs, rep.layers, strict=True):
        prob = ff.layer_problem(model, job, ff.QuantizedInputs(tuned, feeds), fx[job.ql.name], st.round_mode)
        codes = grouped_weight(read_codes(tuned, job.ql), job.sampler.groups)
        assert np.isclose(prob.error(codes), result.error_after, rtol=1e-6)
    assert not np.allclose(stale.x, prob.x)  # conv1's finetune changed what conv2 sees


def test_upstream_slice_keeps_only_what_a_tensor_needs():
    from npuflow.graph import slice_model

    model, feeds = _bn_net(0)
    part = slice_model(model, ["r"])
    assert [n.name for n in part.graph.node] == ["conv1", "bn1", "relu1"]
    assert {t.name for t in part.graph.initializer} == {"w1", "b1", "gamma", "beta", "mean", "var"}
    got, want = [], []
    capture(part, feeds[:2], ["r"], lambda _, v: got.append(v["r"]))
    capture(model, feeds[:2], ["r"], lambda _, v: want.append(v["r"]))
    assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))


def test_quantized_inputs_from_kept_tensors_equal_a_run_from_the_model_inputs():
    from npuflow.quant.algorithms.fast_finetune import QuantizedInputs

    model, feeds = _bn_net(0)
    q = toy_qdq(model, feeds)
    conv2_input = next(n for n in q.graph.node if n.name == "conv2").input[0]
    conv1_input = next(n for n in q.graph.node if n.name == "conv1").input[0]
    kept = QuantizedInputs(q, feeds)
    kept.get(conv1_input)
    from_kept = kept.get(conv2_input)
    assert list(kept.values) == [conv1_input, conv2_input]
    nothing_kept = QuantizedInputs(q, feeds, budget=0)
    nothing_kept.get(conv1_input)
    from_inputs = nothing_kept.get(conv2_input)
    assert list(nothing_kept.values) == [conv2_input]  # the budget evicted conv1's input
    assert all(np.array_equal(a, b) for a, b in zip(from_kept, from_inputs, strict=True))
