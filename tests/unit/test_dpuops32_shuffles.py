"""PixelShuffle / PixelUnshuffle on the DPU families and the BPU.

UG1414 Table 28's ``reorg`` row is one cell for all seven DPU columns (reverse == false, SpaceToDepth:
``stride ^ 2 * input_channel <= 256 * channel_parallel``; reverse == true, DepthToSpace:
``input_channel <= 256 * channel_parallel``), and Horizon's hardware table lists the block-2 forms
("stack neighbor", "reorder upscale").  Before session 32 only DPUCZDX8G listed ``depth_to_space``: a
shuffle between two convolutions ran on the CPU with a float round trip (three subgraphs)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import NPU
from tests.compile_check import one_accelerator_program_equal_to_ort
from tests.unit.test_block_shuffle_lowering import _model
from tests.unit.test_placement_agreement import compiled_devices

CASES = [("SpaceToDepth", None, "DPUCZDX8G_ISA1_B4096", "DPU_Reorg"),
         ("SpaceToDepth", None, "DPUCVDX8G_ISA3_C32B3", "DPU_Reorg"),
         ("SpaceToDepth", None, "bernoulli2", "HzQuantizedReshape"),
         ("DepthToSpace", "CRD", "DPUCAHX8L_ISA0", "DPU_Tile"),
         ("DepthToSpace", "DCR", "bernoulli2", "HzQuantizedReshape")]


@pytest.mark.parametrize("op, mode, target, kernel", CASES)
def test_shuffle_between_convs_runs_in_one_accelerator_program_equal_to_onnx_runtime(op, mode, target, kernel,
                                                                                      tmp_path):
    model = _model(op, mode)
    node = npuflow.check(model, target).nodes[2]
    assert (node.device, node.kernel_type) == (NPU, kernel), node.reasons
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    _, compiled = one_accelerator_program_equal_to_ort(model, calib, target, tmp_path / "m.npuf")
    assert compiled_devices(compiled)["shuffle"] == "ACC"


def test_bernoulli2_keeps_a_block_4_unshuffle_on_the_cpu_with_the_block_named():
    """The BPU's "stack neighbor" is block 2 only; a block-4 SpaceToDepth stays on the CPU, saying why."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
         helper.make_node("SpaceToDepth", ["a"], ["y"], name="shuffle", blocksize=4)],
        "unshuffle4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 2, 2])],
        [numpy_helper.from_array(np.full((4, 4, 1, 1), 0.1, np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    node = npuflow.check(model, "bernoulli2").nodes[1]
    assert node.device != NPU and any(r.startswith("block_size 4") for r in node.reasons), node.reasons
