"""An accelerator conv that reads the image beside a CPU op of the same image (newuser_flows26: ERFNet's
downsampler, ``cat([conv_s2(x), max_pool(x)])``, whose max pool of the graph input runs on the CPU on
DPUCZDX8G).  check put the stem conv in the concat's DPU subgraph (1 DPU subgraph); the compiled model
has an input quantize step before the conv, and the partition joined only units that read nothing
to their readers: the conv became a DPU subgraph of its own (3 subgraphs, 2 on the DPU).  Now a unit
fed only by such units of its own device joins its readers too: 2 subgraphs, 1 on the DPU, as check says."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.placement import Device, partition

TARGET = "DPUCZDX8G_ISA1_B4096"


def test_a_chain_fed_by_graph_inputs_joins_its_readers():
    npu, cpu = Device.NPU, Device.CPU
    # 0 quantize(x) -> 1 conv;  2 max_pool(x) -> 3 quantize;  4 concat(1, 3) -> 5 conv
    groups = partition([npu, npu, cpu, cpu, npu, npu], [[], [0], [], [2], [1, 3], [4]])
    assert groups[0] == groups[1] == groups[4] == groups[5]
    assert groups[2] == groups[3] != groups[4]
    assert len(set(groups)) == 2


def test_a_producer_read_on_two_levels_stays_at_the_first():
    npu, cpu = Device.NPU, Device.CPU
    # 0 conv(x) read by 1 relu (same level) and by 3 add after a CPU op 2: 0 stays with 1, 3 is later
    groups = partition([npu, npu, cpu, npu], [[], [0], [1], [0, 2]])
    assert groups[0] == groups[1] != groups[3]


def _downsampler() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((13, 3, 3, 3)) * 0.3).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((8, 16, 3, 3)) * 0.2).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="stem", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Concat", ["c", "p"], ["cat"], name="cat", axis=1),
             helper.make_node("Relu", ["cat"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "down", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_compiled_subgraphs_match_check_for_a_downsampler():
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(_downsampler(), samples, TARGET, warn=False)
    report = npuflow.check(q.model, TARGET)
    assert report.node("pool").device == Device.CPU
    compiled = npuflow.compile(q.model, TARGET)
    on_dpu = [s for s in compiled.subgraphs if s.device != Device.CPU]
    assert len(on_dpu) == report.summary["npu_subgraphs"] == 1
    assert len(compiled.subgraphs) == 2
