"""``DepthToSpace`` (DCR, CRD) and ``SpaceToDepth`` move integer codes, so the integer program runs
them on cpu-int8 (``lower_block_shuffle``: a reshape into blocks, a transpose and a reshape, as ONNX
defines them).  Before, they had no operator entry: check put them on the CPU (``has no CPU-INT8
implementation``) and compile split ``Conv -> Relu -> DepthToSpace -> Conv`` into two integer
subgraphs with a dequantize / quantize round trip through ONNX between them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.check.report import NPU
from tests.compile_check import one_accelerator_program_equal_to_ort
from tests.qdq_builder import ort_values
from tests.unit.test_placement_agreement import compiled_devices, disagreements

CASES = [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)]


def _model(op: str, mode: str | None) -> onnx.ModelProto:
    """``x -> Conv(16 channels) -> Relu -> op(blocksize 2) -> Conv 1x1``, x of 1x4x8x8."""
    rng = np.random.default_rng(0)
    cin = 4 if op == "DepthToSpace" else 64
    attrs = {"blocksize": 2, **({"mode": mode} if mode else {})}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node(op, ["r"], ["d"], name="shuffle", **attrs),
             helper.make_node("Conv", ["d", "w2"], ["y"], name="conv2")]
    out = [1, 8, 16, 16] if op == "DepthToSpace" else [1, 8, 4, 4]
    graph = helper.make_graph(
        nodes, "shuffle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array((rng.standard_normal((16, 4, 3, 3)) * 0.2).astype(np.float32), "w1"),
         numpy_helper.from_array((rng.standard_normal((8, cin, 1, 1)) * 0.2).astype(np.float32), "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op, mode", CASES)
def test_cpu_int8_runs_the_shuffle_in_one_integer_program_equal_to_onnx_runtime(op, mode, tmp_path):
    model = _model(op, mode)
    assert npuflow.check(model, "cpu-int8").nodes[2].device == NPU
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, calib, "cpu-int8", warn=False)
    compiled = npuflow.compile(q.model, "cpu-int8")
    assert compiled_devices(compiled)["shuffle"] == "ACC"
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True]  # one program, no ONNX round trip
    assert {op_["kind"] for sg in compiled.subgraphs for op_ in sg.ops} >= {
        "depth_to_space" if op == "DepthToSpace" else "space_to_depth"}
    session = npuflow.Session(npuflow.CompiledModel.load(compiled.save(tmp_path / "m.npuf")))
    for feeds in calib[:2]:
        np.testing.assert_array_equal(session.run(feeds)["y"], ort_values(q.model, feeds, ["y"])["y"])


@pytest.mark.parametrize("op, mode", CASES)
@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2", "DPUCZDX8G_ISA1_B4096"])
def test_check_float_check_quantized_and_compile_agree(op, mode, target, tmp_path):
    """Targets whose files list no such kind keep it on the CPU in all three."""
    assert disagreements(_model(op, mode), target, str(tmp_path)) == []


@pytest.mark.parametrize("op, mode", CASES)
def test_fused_runner_runs_the_shuffle_in_its_graph_equal_to_kernels_and_onnx_runtime(op, mode):
    """The fused runner writes the shuffle as Reshape -> Transpose -> Reshape on the codes, so
    ``conv1 .. conv2`` is one fused run; before, the shuffle ran as its kernel between two graphs."""
    from npuflow.runtime import fused
    rng = np.random.default_rng(3)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_model(op, mode), calib, "cpu-int8", warn=False)
    compiled = npuflow.compile(q.model, "cpu-int8")
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    plans = [ex.plan for ex in fast._executors if hasattr(ex, "plan")]
    assert [[type(it).__name__ for it in p.items] for p in plans] == [["FusedRun"]], [p.reasons for p in plans]
    kinds = {n.op_type for p in plans for it in p.items if isinstance(it, fused.FusedRun) for n in it.graph().nodes}
    assert "Transpose" in kinds, kinds
    for feeds in calib[:2]:
        y = fast.run(feeds)["y"]
        np.testing.assert_array_equal(y, ref.run(feeds)["y"])
        np.testing.assert_array_equal(y, ort_values(q.model, feeds, ["y"])["y"])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_dpuczdx8g_runs_pixel_shuffle_after_a_conv_in_one_dpu_program_equal_to_onnx_runtime(mode, tmp_path):
    """UG1414 maps PixelShuffle after a convolution to the DPU (``tile``); before the rule the B4096
    target put the shuffle on the CPU: three subgraphs with a float round trip between the convs."""
    target = "DPUCZDX8G_ISA1_B4096"
    model = _model("DepthToSpace", mode)
    node = npuflow.check(model, target).nodes[2]
    assert (node.device, node.kernel_type) == (NPU, "DPU_Tile")
    rng = np.random.default_rng(2)
    calib = [{"x": rng.standard_normal((1, 4, 8, 8)).astype(np.float32)} for _ in range(4)]
    _, compiled = one_accelerator_program_equal_to_ort(model, calib, target, tmp_path / "m.npuf")
    assert compiled_devices(compiled)["shuffle"] == "ACC"


def test_dpuczdx8g_keeps_a_pixel_shuffle_over_the_reorg_channel_limit_on_the_cpu():
    """Reorg's reverse limit on B4096: input_channel <= 256 * 16 = 4096."""
    rng = np.random.default_rng(0)

    def model(channels: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),
             helper.make_node("DepthToSpace", ["a"], ["y"], name="shuffle", blocksize=2)],
            "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels // 4, 2, 2])],
            [numpy_helper.from_array((rng.standard_normal((channels, 4, 1, 1)) * 0.2).astype(np.float32), "w")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    fits = npuflow.check(model(4096), "DPUCZDX8G_ISA1_B4096").nodes[1]
    wide = npuflow.check(model(4100), "DPUCZDX8G_ISA1_B4096").nodes[1]
    assert fits.device == NPU
    assert wide.device != NPU and any("4100 > 256*16=4096" in r for r in wide.reasons), wide.reasons
