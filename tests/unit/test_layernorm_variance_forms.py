"""One-pass LayerNorm variances ``mean(x*x) - mean(x)**2`` whose graph has no ``x - mean`` from that
mean (``passes/variance.py`` adds one): the two exporter patterns below, built with onnx.helper as
the exporters write them."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.passes.variance import one_pass_variances, stable_variances
from tests.unit.test_placement_agreement import _sides, compiled_devices

D = 64


def _layernorm(form: str, seed: int = 0) -> onnx.ModelProto:
    """``x [1, 16, D] -> MatMul -> LayerNorm(one-pass variance) -> MatMul``.

    ``torch``: ``(x - x.mean(-1, keepdim=True)) / torch.sqrt((x * x).mean(-1, keepdim=True) -
    x.mean(-1, keepdim=True).pow(2) + eps)``: torch.onnx writes each ``x.mean`` call as its own
    ReduceMean, so the deviation reads another mean than the variance.  ``tf``: TensorFlow's
    ``batch_normalization`` form ``x * inv + (beta - mean * inv)``, ``inv = gamma / sqrt(var + eps)``:
    no deviation at all."""
    rng = np.random.default_rng(seed)
    inits = {"w1": (rng.standard_normal((D, D)) * 0.2).astype(np.float32),
             "b1": np.full(D, 8.0, np.float32),  # a mean large against the spread: the cancellation case
             "w2": (rng.standard_normal((D, 8)) * 0.2).astype(np.float32),
             "eps": np.array(1e-5, np.float32), "two": np.array(2.0, np.float32),
             "gamma": rng.uniform(0.5, 1.5, D).astype(np.float32), "beta": (rng.standard_normal(D) * 0.1).astype(np.float32)}
    mean = dict(axes=[-1], keepdims=1)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="fc1"), helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("ReduceMean", ["h"], ["m"], name="mean", **mean),
             helper.make_node("Mul", ["h", "h"], ["sq"], name="square"),
             helper.make_node("ReduceMean", ["sq"], ["msq"], name="mean_of_squares", **mean),
             helper.make_node("Pow", ["m", "two"], ["m2"], name="mean_squared"),
             helper.make_node("Sub", ["msq", "m2"], ["var"], name="variance"),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="var_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt")]
    if form == "torch":
        nodes += [helper.make_node("ReduceMean", ["h"], ["m_again"], name="mean_again", **mean),
                  helper.make_node("Sub", ["h", "m_again"], ["dev"], name="deviation"),
                  helper.make_node("Div", ["dev", "sd"], ["n"], name="normalise"),
                  helper.make_node("Mul", ["n", "gamma"], ["g"], name="scale"),
                  helper.make_node("Add", ["g", "beta"], ["ln"], name="shift")]
    else:
        nodes += [helper.make_node("Div", ["gamma", "sd"], ["inv"], name="inv"),
                  helper.make_node("Mul", ["h", "inv"], ["hx"], name="x_inv"),
                  helper.make_node("Mul", ["m", "inv"], ["mx"], name="mean_inv"),
                  helper.make_node("Sub", ["beta", "mx"], ["shift"], name="shift"),
                  helper.make_node("Add", ["hx", "shift"], ["ln"], name="ln")]
    nodes.append(helper.make_node("MatMul", ["ln", "w2"], ["y"], name="fc2"))
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, D])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _samples(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 16, D)).astype(np.float32) * 0.3} for _ in range(n)]


@pytest.mark.parametrize("form", ["torch", "tf"])
def test_the_variance_is_found_and_rewritten_with_a_deviation_of_its_own(form):
    model = _layernorm(form)
    found = one_pass_variances(model)
    assert [v.sub.name for v in found] == ["variance"]
    stable = stable_variances(model)
    onnx.checker.check_model(stable)
    assert one_pass_variances(stable) == []
    names = [n.name for n in stable.graph.node]
    assert "variance" not in names and "mean_squared" not in names and "variance_deviation" in names
    square = next(n for n in stable.graph.node if n.name == "square")
    assert list(square.input) == ["var_deviation", "var_deviation"]
    x = _samples(1, 7)[0]
    before = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    after = ort.InferenceSession(stable.SerializeToString()).run(None, x)[0]
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("form, target, floor", [("torch", "DPUCZDX8G_ISA1_B4096", 0.994), ("torch", "cpu-int8", 0.998),
                                                ("tf", "cpu-int8", 0.994)])
def test_output_cosine_and_check_judges_the_rewritten_graph(form, target, floor):
    """A mean of 8 against a spread of about 0.5: each term took a grid set by ``x^2``'s range (about
    64) where the variance is about 0.2.  Output cosine on 8 calibration samples before -> after
    (2026-12-06): torch B4096 0.9893 -> 0.9965, cpu-int8 0.8608 -> 0.9991; tf cpu-int8 0.9661 -> 0.9963.
    The tf form on B4096 is not here (0.9704 -> 0.9650): its output ``x * inv - mean * inv`` cancels
    the same way on one power-of-two grid, which no variance rewrite changes."""
    model = _layernorm(form)
    q = npuflow.quantize(model, _samples(8), target)
    assert q.report.calibration_outputs["y"] > floor, q.report.calibration_outputs
    checked = _sides(npuflow.check(model, target))
    compiled = compiled_devices(npuflow.compile(q.model, target))
    assert "variance_deviation" in checked and "variance_deviation" in compiled
    # before the value_info of the added Sub, check found no static shape for it and put it and the square on the CPU
    assert [(n, checked[n], compiled[n]) for n in checked if n in compiled and checked[n] != compiled[n]] == []
