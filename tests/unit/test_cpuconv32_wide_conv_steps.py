"""A strided convolution whose stride the target's ``SpaceToDepth`` does not take as one block is
rewritten in steps of a block that divides it (``passes/wide_conv._steps``): on bernoulli2
(SpaceToDepth block 2 only, kernels up to 7x7) a 16x16 stride-4 conv is ``SpaceToDepth(2)``, a
stride-2 8x8 conv on 4x the channels, then ``SpaceToDepth(2)`` again and a stride-1 4x4 conv on 16x
the channels.  Before session 32 it stayed on the CPU in float ("block_size 4 not in {2}")."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.check.report import NPU
from npuflow.passes.optimize import optimize_float
from npuflow.targets import load_target
from tests.compile_check import one_accelerator_program_equal_to_ort
from tests.qdq_builder import ort_values
from tests.unit.test_dpuops32_wide_conv import _disagreements, _wide

GEOMETRIES = [  # (kh, kw, stride, pads, input HxW): the topic's; a crop then a pad; no padding
    (16, 16, 4, [6, 6, 6, 6], (32, 32)),
    (15, 15, 4, [3, 2, 5, 1], (29, 31)),
    (12, 12, 4, [0, 0, 0, 0], (16, 16)),
]


@pytest.mark.parametrize("kh, kw, stride, pads, hw", GEOMETRIES)
def test_a_stride_4_wide_conv_is_two_block_2_steps_with_the_same_float_function(kh, kw, stride, pads, hw):
    model = _wide(kh, kw, stride, pads, hw)
    rewrites: list = []
    out = optimize_float(model, load_target("bernoulli2"), rewrites)
    assert [(r.rewrite, r.applied) for r in rewrites] == [("wide_conv_as_space_to_depth", True)], rewrites
    assert [n.op_type for n in out.graph.node].count("SpaceToDepth") == 2
    conv = next(n for n in out.graph.node if n.name == "wide")
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    assert (attrs["kernel_shape"], attrs["strides"]) == ([-(-kh // 4), -(-kw // 4)], [1, 1])
    x = {"x": np.random.default_rng(1).standard_normal((1, 2, *hw)).astype(np.float32)}
    np.testing.assert_allclose(ort_values(out, x, ["y"])["y"], ort_values(model, x, ["y"])["y"], rtol=1e-5, atol=1e-5)
    assert npuflow.check(model, "bernoulli2").node("wide").device == NPU


def test_the_two_steps_run_in_one_bpu_program_equal_to_onnx_runtime(tmp_path):
    model = _wide(16, 16, 4, [6, 6, 6, 6], (32, 32))
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 2, 32, 32)).astype(np.float32)} for _ in range(4)]
    q, compiled = one_accelerator_program_equal_to_ort(model, calib, "bernoulli2", tmp_path / "m.npuf")
    assert _disagreements(model, q, compiled) == {}
