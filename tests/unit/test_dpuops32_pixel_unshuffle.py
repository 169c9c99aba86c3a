"""PyTorch's ``nn.PixelUnshuffle`` (exported as ``Reshape -> Transpose -> Reshape``) on bernoulli2, which has no
transpose: ``passes/pixel_unshuffle.py`` writes it as ``SpaceToDepth`` with the reading Conv's input channels
permuted.  Before, the three nodes ran on the CPU between two BPU programs (3 subgraphs)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow.check.report import NPU
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests import onnx_builders as B
from tests.compile_check import one_accelerator_program_equal_to_ort
from tests.qdq_builder import ort_values

C, H, W = 4, 8, 8


def _unshuffle(block: int = 2, reader: str = "Conv") -> onnx.ModelProto:
    """``x -> Conv 3x3 (C) -> Relu -> Reshape/Transpose/Reshape (torch's PixelUnshuffle(block)) -> reader``."""
    rng = np.random.default_rng(0)
    b, cb = block, C * block * block
    inits = [numpy_helper.from_array((rng.standard_normal((C, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((6, cb, 3, 3)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, C, H // b, b, W // b, b], np.int64), "s1"),
             numpy_helper.from_array(np.array([1, cb, H // b, W // b], np.int64), "s2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="stem", pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "s1"], ["t6"], name="down/Reshape"),
             helper.make_node("Transpose", ["t6"], ["p6"], name="down/Transpose", perm=[0, 1, 3, 5, 2, 4]),
             helper.make_node("Reshape", ["p6", "s2"], ["d"], name="down/Reshape_1")]
    if reader == "Conv":
        nodes.append(helper.make_node("Conv", ["d", "w2"], ["y"], name="mix", pads=[1] * 4))
    else:
        nodes.append(helper.make_node(reader, ["d"], ["y"], name="mix"))
    m = B.model(nodes, [B.vi("x", [1, 3, H, W])], [onnx.ValueInfoProto(name="y")], inits)
    m.ir_version = 9
    return m


def test_the_rewrite_keeps_the_float_function():
    model = _unshuffle()
    rewrites: list = []
    out = optimize_float(model, load_target("bernoulli2"), rewrites)
    assert [(r.rewrite, r.applied) for r in rewrites] == [("pixel_unshuffle_as_space_to_depth", True)]
    assert [n.op_type for n in out.graph.node] == ["Conv", "Relu", "SpaceToDepth", "Conv"]
    x = {"x": np.random.default_rng(1).standard_normal((1, 3, H, W)).astype(np.float32)}
    np.testing.assert_allclose(ort_values(out, x, ["y"])["y"], ort_values(model, x, ["y"])["y"], rtol=1e-5, atol=1e-5)


def test_bernoulli2_runs_it_in_one_bpu_program_equal_to_onnx_runtime(tmp_path):
    model = _unshuffle()
    report = npuflow.check(model, "bernoulli2")
    assert all(n.device == NPU for n in report.nodes), [(n.name, n.reasons) for n in report.nodes]
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 3, H, W)).astype(np.float32)} for _ in range(4)]
    one_accelerator_program_equal_to_ort(model, calib, "bernoulli2", tmp_path / "m.npuf")


@pytest.mark.parametrize("block, reader, why", [(2, "Relu", "read by mix"), (4, "Conv", "block_size 4")])
def test_left_where_a_reader_is_no_conv_or_the_block_is_not_2(block, reader, why):
    rewrites: list = []
    out = optimize_float(_unshuffle(block, reader), load_target("bernoulli2"), rewrites)
    assert [(r.applied, why in r.detail) for r in rewrites] == [(False, True)], rewrites
    assert "Transpose" in [n.op_type for n in out.graph.node]


def test_a_dpu_runs_the_transpose_so_nothing_changes():
    rewrites: list = []
    out = optimize_float(_unshuffle(), load_target("DPUCZDX8G_ISA1_B4096"), rewrites)
    assert not rewrites and "Transpose" in [n.op_type for n in out.graph.node]
