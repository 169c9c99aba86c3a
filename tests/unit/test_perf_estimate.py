"""The static cost model: parallelism padding, engines, memory-bound detection, multi-core, tiling."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.placement import NodePlacement
from npuflow.perf import estimate
from npuflow.perf.cost import compute_cycles, layer_cost
from npuflow.perf.layers import model_geometry, node_name

B4096 = "DPUCZDX8G_ISA1_B4096"


def conv_net(layers: list[tuple[int, int, int, int]], size: int, cin: int = 3) -> onnx.ModelProto:
    """Conv chain from (out_channels, kernel, stride, group) tuples; group == -1 means depthwise."""
    nodes, inits, x, rng, cin0 = [], [], "x", np.random.default_rng(0), cin
    for i, (cout, k, s, g) in enumerate(layers):
        g = cin if g == -1 else g
        if g == cin and g > 1:
            cout = cin
        w = numpy_helper.from_array(rng.standard_normal((cout, cin // g, k, k)).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", kernel_shape=[k, k],
                                      strides=[s, s], pads=[k // 2] * 4, group=g))
        x, cin = f"c{i}", cout
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin0, size, size])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return npuflow.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def all_npu(model: onnx.ModelProto) -> dict[str, Placement]:
    return {node_name(n, i): NodePlacement("NPU", "npu_subgraph_0") for i, n in enumerate(model.graph.node)}


@pytest.fixture(scope="module")
def target():
    return npuflow.load_target(B4096)


@pytest.fixture(scope="module")
def mixed():
    """A MobileNet-like block: full conv, depthwise 3x3, pointwise 1x1."""
    return conv_net([(32, 3, 2, 1), (32, 3, 1, -1), (64, 1, 1, 1), (64, 3, 1, -1), (128, 1, 1, 1)], 64)


def test_channels_pad_up_to_the_parallelism(target):
    three = model_geometry(conv_net([(16, 3, 1, 1)], 32, cin=3))["conv0"]
    sixteen = model_geometry(conv_net([(16, 3, 1, 1)], 32, cin=16))["conv0"]
    assert three.macs * 16 == sixteen.macs * 3
    # 3 input channels occupy a whole 16-channel step: same cycles as 16
    assert compute_cycles(three, target)[1] == compute_cycles(sixteen, target)[1]
    # and 8 x 16 x 16 parallelism: rows * ceil(32/8) * ceil(3/16) * ceil(16/16) * 9
    assert compute_cycles(three, target)[1] == 32 * 4 * 1 * 1 * 9


def test_b1024_is_slower_than_b4096(target, mixed):
    fast = estimate(mixed, target, all_npu(mixed), measure_cpu=False)
    b1024 = npuflow.load_target("DPUCZDX8G_ISA1_B1024")  # 8 x 8 x 8 conv engine, same family
    slow = estimate(mixed, b1024, all_npu(mixed), measure_cpu=False)
    assert slow.npu_ms > fast.npu_ms
    conv_fast = next(layer for layer in fast.layers if layer.name == "conv4")
    conv_slow = next(layer for layer in slow.layers if layer.name == "conv4")
    assert conv_slow.compute_cycles == 4 * conv_fast.compute_cycles  # 2048 vs 512 MACs/cycle
    assert slow.fps_all_cores < fast.fps_all_cores


def test_depthwise_runs_on_its_engine_at_lower_utilisation(target, mixed):
    r = estimate(mixed, target, all_npu(mixed), measure_cpu=False)
    by = {layer.name: layer for layer in r.layers}
    assert by["conv1"].engine == "depthwise" and by["conv3"].engine == "depthwise"
    assert by["conv2"].engine == "conv" and by["conv4"].engine == "conv"
    assert max(by["conv1"].utilisation, by["conv3"].utilisation) < min(by["conv2"].utilisation,
                                                                         by["conv4"].utilisation)
    # B4096: the depthwise engine has 16x fewer MACs per cycle than the conv engine
    assert target.engines.conv.macs_per_cycle == 16 * target.engines.depthwise.macs_per_cycle
    assert by["conv1"].utilisation <= 1 / 16


def test_tiny_channel_layer_is_memory_bound(target):
    m = conv_net([(16, 1, 1, 1)], 64, cin=16)
    (layer,) = estimate(m, target, all_npu(m), measure_cpu=False).layers
    assert layer.bound == "memory"
    assert layer.memory_cycles > layer.compute_cycles
    deep = conv_net([(256, 3, 1, 1)], 16, cin=256)
    (layer,) = estimate(deep, target, all_npu(deep), measure_cpu=False).layers
    assert layer.bound == "compute"


def test_multi_core_throughput_is_bounded_by_cores_times_single(target, mixed):
    r = estimate(mixed, target, all_npu(mixed), measure_cpu=False)
    assert target.cores == 3
    assert r.fps_single_core < r.fps_all_cores <= target.cores * r.fps_single_core
    starved = target.model_copy(update={"ddr_bandwidth_gbps": 0.5})
    r2 = estimate(mixed, starved, all_npu(mixed), measure_cpu=False)
    assert r2.fps_all_cores < 0.5 * target.cores * r2.fps_single_core  # shared DDR limits 3 cores


def test_weights_and_feature_maps_too_big_for_the_banks_are_reloaded(target):
    m = conv_net([(512, 3, 1, 1)], 64, cin=256)  # 1.2 MB weights, 1 MB + 2 MB feature maps
    g = model_geometry(m)["conv0"]
    c = layer_cost(g, target)
    assert c.reload_bytes > 0
    assert c.load_fmap_bytes > g.in_bytes  # halo rows between tiles
    small = model_geometry(conv_net([(16, 3, 1, 1)], 16, cin=16))["conv0"]
    assert layer_cost(small, target).reload_bytes == 0


def test_overheads_and_traffic_add_up(target, mixed):
    r = estimate(mixed, target, all_npu(mixed), measure_cpu=False)
    (sg,) = r.subgraphs
    assert sg.latency_ms == pytest.approx(sum(layer.latency_ms for layer in r.layers)
                                          + target.overheads.subgraph_us / 1e3)
    assert all(layer.cycles >= target.overheads.layer_cycles for layer in r.layers)
    assert r.loaded_bytes_per_frame + r.stored_bytes_per_frame == pytest.approx(r.ddr_mb_per_frame * 1e6)
    assert sg.ops == 2 * sum(layer.macs for layer in r.layers)


def test_cpu_parts_are_measured_and_boundaries_cost_a_transfer(target, mixed):
    place = all_npu(mixed)
    place["conv2"] = NodePlacement("CPU", "cpu_conv2")
    r = estimate(mixed, target, place)
    assert {s.device for s in r.subgraphs} == {"NPU", "CPU"}
    assert "conv2" not in {layer.name for layer in r.layers}  # CPU nodes are not costed as NPU layers
    cpu = [s for s in r.subgraphs if s.device == "CPU"]
    assert cpu and cpu[0].latency_ms > 0 and "host CPU" in cpu[0].source
    assert len(r.transfers) == 2 and r.transfer_ms > 0
    assert r.latency_ms == pytest.approx(r.npu_ms + r.cpu_ms + r.transfer_ms)


def test_quantized_model_through_the_checker_groups_cpu_nodes():
    from npuflow.perf import perf

    from .test_profile_bench import tiny_qdq

    r = perf(tiny_qdq(), B4096)
    assert [(s.name, s.device) for s in r.subgraphs] == [
        ("npu_subgraph_0", "NPU"), ("cpu_subgraph_0", "CPU"), ("npu_subgraph_1", "NPU")]
    assert r.subgraphs[1].nodes == ["relu1_dq", "sig", "sig_q"]  # connected CPU nodes: one timed part
    assert [(t.tensor, t.src, t.dst) for t in r.transfers] == [
        ("relu1_q", "npu_subgraph_0", "cpu_subgraph_0"), ("sig_q", "cpu_subgraph_0", "npu_subgraph_1")]
    by = {layer.name: layer for layer in r.layers}
    assert by["conv1"].engine == "conv" and by["dw"].engine == "depthwise"
    assert by["conv1"].weight_bytes == 16 * 8 * 9 + 4 * 16  # int8 weights behind DequantizeLinear + int32 bias
    assert by["relu1"].bound == "fused" and by["relu1"].cycles == 0
