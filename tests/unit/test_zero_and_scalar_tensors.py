"""Tensors at the edges of what a program holds, found on openWakeWord's mel model (a
``Sub(x, 0)`` and a ``Sub(ReduceMax(x), 80)`` on one number): a constant that is all zero gets
the unit scale (any scale holds zero; the smallest float32 one made a 105-bit alignment shift
the .npuf loader refuses), and a scalar (rank 0) stays on the CPU instead of compiling to an op
whose output shape the loader rejects."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.quant.config import QuantConfig
from npuflow.quant.params import weight_params
from npuflow.targets import load_target
from tests.unit.quant_nets import run, samples


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_an_all_zero_constant_gets_the_unit_scale(target):
    settings = QuantConfig().resolve(load_target(target), "weight", "Sub", "sub")
    zero = weight_params("zero", np.zeros((1, 1, 1, 1), np.float32), settings, None, kind="constant")
    assert float(zero.scale) == 1.0  # 2**0 on the DPU; 127 / 127 on float scales
    half = weight_params("half", np.full((1,), 0.5, np.float32), settings, None, kind="constant")
    assert float(half.scale) < 0.01  # a real value keeps its fitted scale


def _sub_zero_then_scalar() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.4, (4, 3, 3, 3)).astype(np.float32), "w")
    inits = [w, numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["c", "zero"], ["d"], name="sub_zero"),
             helper.make_node("ReduceMax", ["d"], ["m"], name="rmax", keepdims=0),
             helper.make_node("ReduceMin", ["d"], ["n"], name="rmin", keepdims=0),
             helper.make_node("Add", ["m", "n"], ["lo"], name="scalar_add"),
             helper.make_node("Max", ["d", "lo"], ["y"], name="floor")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8", "bernoulli2"])
def test_zero_constant_and_scalar_ops_compile_and_run(target, tmp_path):
    model = _sub_zero_then_scalar()
    report = npuflow.check(model, target)
    scalar = report.node("scalar_add")
    assert scalar.device == "CPU"
    dpu = target.startswith("DPU")  # the DPU has no Sub of a constant at all: both run in float there
    assert dpu or any("scalar (rank 0)" in r for r in scalar.reasons), scalar.reasons
    q = npuflow.quantize(model, samples([1, 3, 8, 8], n=6), target=target)
    path = tmp_path / "m.npuf"
    npuflow.compile(q.model, target).save(path)
    x = samples([1, 3, 8, 8], n=1, seed=4)[0]
    got = npuflow.Session(path).run({"x": x})["y"]  # the loader accepted the file
    ref = run(q.model, {"x": x})[0]
    assert got.shape == ref.shape and np.isfinite(got).all()
