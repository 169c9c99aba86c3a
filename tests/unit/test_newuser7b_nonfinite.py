"""Tensors that hold -inf/NaN on the calibration data (newuser_flows7b): an attention mask's
``Where(mask, 0, -inf)`` added to the scores, as torch exports ``F.scaled_dot_product_attention``
with a mask or ``is_causal`` (``dynamo=True`` writes ``finfo(float32).min`` instead of ``-inf``: output
cosine 0.975 without a warning before).  Before: ``OverflowError`` from the histogram observer on cpu-int8 and
bernoulli2, a scale of 0 on B4096 (compile refused the file); now the nodes that write or read such
tensors stay float and the rest is quantized."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import CPU
from npuflow.errors import NpuflowError
from npuflow.quant.observers import HistogramObserver, MinMaxObserver


def _masked_attention(fill: float = -np.inf) -> onnx.ModelProto:
    """x (1, 8, 16) -> scores = x @ W -> + where(mask, 0, -inf) -> Softmax -> @ V -> y (mask: a bool input)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.3).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((1, 8, 16)) * 0.5).astype(np.float32), "v"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([fill], np.float32), "ninf")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["s"], name="scores"),
             helper.make_node("Where", ["mask", "zero", "ninf"], ["m"], name="mask_where"),
             helper.make_node("Add", ["s", "m"], ["sm"], name="mask_add"),
             helper.make_node("Softmax", ["sm"], ["p"], name="softmax", axis=-1),
             helper.make_node("MatMul", ["p", "v"], ["y"], name="attend")]
    graph = helper.make_graph(nodes, "masked_attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16]),
                                                          helper.make_tensor_value_info("mask", TensorProto.BOOL, [1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _samples(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    causal = np.tril(np.ones((8, 8), bool))[None]
    return [{"x": rng.standard_normal((1, 8, 16)).astype(np.float32), "mask": causal} for _ in range(n)]


def test_observers_count_nonfinite_values_apart():
    x = np.array([1.5, -np.inf, -2.0, np.nan, 0.0], np.float32)
    hist, mm = HistogramObserver(16), MinMaxObserver()
    lo, hi, finite, bad = hist.update(x)
    mm.update_range(lo, hi, finite, bad)
    assert (lo, hi, finite, bad) == (-2.0, 1.5, 3, 2)
    assert hist.range == 2.0 and int(hist.counts.sum()) == 3
    plain = MinMaxObserver()
    plain.update(x)
    assert (plain.min, plain.max, plain.count, plain.nonfinite) == (mm.min, mm.max, 3, 2)
    assert math.isfinite(plain.amax)
    sentinel = MinMaxObserver()  # torch.finfo(float32).min, dynamo's mask value, is no data either
    sentinel.update(np.array([np.finfo(np.float32).min, 0.5, -0.25], np.float32))
    assert (sentinel.min, sentinel.max, sentinel.nonfinite) == (-0.25, 0.5, 1)



def test_float16_values_are_counted_apart_without_a_numpy_warning():
    """A float16 tensor's infinities: the float32 sentinel casts to float16's inf (the corpus' ONNX
    float16 node cases printed 'overflow encountered in cast' on the user's terminal)."""
    import warnings

    from npuflow.check.nonfinite import finite_values

    v = np.array([1.5, np.inf, -2.0, -np.inf], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        finite, lo, hi, bad = finite_values(v, -np.inf, np.inf)
    assert finite.tolist() == [1.5, -2.0] and (lo, hi, bad) == (-2.0, 1.5, 2)


# default exporter, dynamo=True, Hugging Face's BERT, others: finite masks read 0.88 before the MASK_FLOOR rule
@pytest.mark.parametrize("fill", [-np.inf, float(np.finfo(np.float32).min), -1e4, -1e9])
@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_masked_attention_quantizes_with_the_mask_in_float(target, fill, caplog):
    model = _masked_attention(fill)
    samples = _samples()
    q = npuflow.quantize(model, samples, target, warn=False)
    if target == "cpu-int8":  # the plan takes every lowered op there; the calibration keeps the mask float
        assert {"mask_where", "mask_add"} <= set(q.config.keep_float)
        assert "kept in float" in caplog.text
    # on accelerator targets check of the float model keeps the mask's Add on the CPU already
    # (check.nonfinite, the same test), so the plan never quantizes it
    assert npuflow.check(q.model, target).node("mask_add").device == CPU
    scales = [numpy_helper.to_array(i) for i in q.model.graph.initializer if i.name.endswith("_scale")]
    assert scales and all(np.all(s > 0) and np.all(np.isfinite(s)) for s in scales)
    compiled = npuflow.compile(q.model, target)
    got = npuflow.Session(compiled).run(samples[0])["y"]
    import onnxruntime as ort
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, samples[0])[0]
    cos = float(got.ravel() @ ref.ravel() / (np.linalg.norm(got) * np.linalg.norm(ref)))
    assert cos > 0.99, cos


def test_nonfinite_graph_input_stays_a_coded_error():
    model = _masked_attention()
    samples = _samples()
    samples[1]["x"][0, 0, 0] = np.inf
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(model, samples, "cpu-int8", warn=False)
    assert err.value.code == "NPF_QUANT_CALIB_NONFINITE"


def test_nonfinite_tensor_the_plan_still_quantizes_is_a_coded_error():
    """When keeping every writer and reader of such a tensor float does not take it out of the plan
    (they are float already), quantize stops with NPF_QUANT_NONFINITE_TENSOR naming the tensor
    rather than calibrating an infinite range."""
    from types import SimpleNamespace

    from npuflow.quant.config import QuantConfig
    from npuflow.quant.pipeline import _keep_nonfinite_float
    from npuflow.quant.plan import node_key
    from npuflow.targets import load_target

    model = _masked_attention()
    keys = [node_key(n) for n in model.graph.node if n.name in ("mask_where", "mask_add")]
    cfg = QuantConfig(keep_float=keys)
    plan = SimpleNamespace(points={"m": None})
    stats = SimpleNamespace(minmax={"m": SimpleNamespace(nonfinite=64)})
    with pytest.raises(NpuflowError) as err:
        _keep_nonfinite_float(model, load_target("cpu-int8"), cfg, None, plan, stats)
    assert err.value.code == "NPF_QUANT_NONFINITE_TENSOR" and "m" in str(err.value)


def test_a_finite_mask_counts_only_where_it_reaches_a_softmax():
    """Hugging Face's ``(1 - mask) * -10000`` added to the scores is a mask (its Mul, the Add and
    the Softmax input carry it); the same magnitude in a plain Add that no Softmax reads is data."""
    from npuflow.check.nonfinite import sentinel_tensors
    from npuflow.graph import GraphView

    def model(softmax: bool) -> onnx.ModelProto:
        nodes = [helper.make_node("Sub", ["one", "maskf"], ["inv"], name="inv"),
                 helper.make_node("Mul", ["inv", "big"], ["ext"], name="ext"),
                 helper.make_node("Add", ["x", "ext"], ["sm"], name="mask_add"),
                 helper.make_node("Softmax" if softmax else "Relu", ["sm"], ["y"], name="last")]
        inits = [numpy_helper.from_array(np.array([1.0], np.float32), "one"),
                 numpy_helper.from_array(np.array([-10000.0], np.float32), "big")]
        graph = helper.make_graph(nodes, "hf_mask", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
                                                     helper.make_tensor_value_info("maskf", TensorProto.FLOAT, [1, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    assert set(sentinel_tensors(GraphView(model(True).graph))) == {"big", "ext", "sm"}
    assert sentinel_tensors(GraphView(model(False).graph)) == {}


def test_a_float16_constant_beyond_the_sentinel_raises_no_numpy_warning():
    """The sentinel (2**127) casts to inf in float16: the corpus benchmark's float16 operator cases
    printed numpy's "overflow encountered in cast" from check's -inf test; both masks now agree."""
    import warnings

    from npuflow.check.nonfinite import _only_neg_inf, finite_values

    v = np.array([1.0, -np.inf, 65504.0], np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _only_neg_inf(v)
        finite, lo, hi, apart = finite_values(v, -math.inf, 65504.0)
    assert (lo, hi, apart) == (1.0, 65504.0, 1)
