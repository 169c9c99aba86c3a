"""A power-of-two CPU island with ``MatMul -> Div`` joins its neighbours (``runtime/joined.py``, issue 19).

Such an island runs at ONNX Runtime's basic level; at the full level ``MatMulScaleFusion`` would fold the
``Div`` into a ``FusedMatMul``'s alpha (other float rounding), so ``level_free`` refused it, and the
EfficientFormer-style net on B4096 stayed 5 calls a frame (its two attention islands alone).  A joined
session never runs that fusion (``fused.DISABLED_OPTIMIZERS``): compared at the full level less it, the
island runs its two kernels there too and joins: one call, equal to the kernels."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime import executors, joined
from tests.unit.test_runtime_joined_seams import compile_effformer


def test_matmul_then_div_of_activations_is_level_free():
    s = numpy_helper.from_array(np.array(0.125, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    d = numpy_helper.from_array(np.array(2.8284271, np.float32), "d")
    nodes = [helper.make_node("DequantizeLinear", ["a", "s", "z"], ["af"]),
             helper.make_node("DequantizeLinear", ["b", "s", "z"], ["bf"]),
             helper.make_node("MatMul", ["af", "bf"], ["m"]), helper.make_node("Div", ["m", "d"], ["y"])]
    graph = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("a", TensorProto.INT8, [2, 16, 8]),
                                           helper.make_tensor_value_info("b", TensorProto.INT8, [2, 8, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16, 16])], [s, z, d])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert executors.cpu_level(model) == "basic"
    assert joined.level_free(model, {})  # refused before: FusedMatMul at the full level


@pytest.fixture(scope="module")
def effformer_b4096(tmp_path_factory):
    return compile_effformer(tmp_path_factory, "DPUCZDX8G_ISA1_B4096")


def test_effformer_b4096_is_one_call_equal_to_the_kernels(effformer_b4096, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the verdicts found here, not stored before
    compiled, frames = effformer_b4096
    session, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps  # 5 steps before
    assert isinstance(step.executor, joined.Joined) and len(step.indices) == len(compiled.subgraphs) > 20
    for x in frames:
        a, b = session.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in b)
