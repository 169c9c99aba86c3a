"""Placement, fusion and partition rules of ``npuflow.check`` on small hand-built graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import helper

import npuflow
from npuflow.check import CPU, NPU
from tests import onnx_builders as B

DPU = "DPUCZDX8G_ISA1_B4096"


def _bn(name, src, dst, c):
    inits = [B.const(f"{name}.{p}", np.full(c, v, np.float32)) for p, v in
             (("scale", 1.0), ("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    return helper.make_node("BatchNormalization", [src] + [i.name for i in inits], [dst], name=name), inits


def test_seed004_example_on_bernoulli2():
    r = npuflow.check(B.seed004(), "bernoulli2")
    rows = [(n.name, r.device_name(n), n.subgraph, n.kernel_type) for n in r.nodes]
    assert rows == [("Convolution1", "BPU", 0, "HzSQuantizedConv"), ("Convolution2", "CPU", None, "Conv"),
                    ("Convolution3", "BPU", 1, "HzSQuantizedConv")]
    bad = r.node("Convolution2")
    assert bad.reasons == ["kernel 9x9 outside [1,7]x[1,7]"] and "kernel" in bad.hint
    assert [(s.id, s.nodes, s.inputs, s.outputs) for s in r.subgraphs] == [
        (0, ["Convolution1"], ["data"], ["c1"]), (1, ["Convolution3"], ["c2"], ["c3"])]
    assert r.summary["npu_subgraphs"] == 2 and r.summary["cpu_op_types"] == {"Conv": 1}
    # the same graph fits the DPU (kernels up to 16x16): one subgraph
    assert npuflow.check(B.seed004(), DPU).summary["npu_subgraphs"] == 1


def _conv_act_bn(order: str):
    c = 8
    conv, w = B.conv_node("conv", "x", "c", c, c)
    bn, bn_inits = _bn("bn", "c" if order == "bn_relu" else "r", "b" if order == "bn_relu" else "y", c)
    relu = helper.make_node("Relu", ["b" if order == "bn_relu" else "c"], ["y" if order == "bn_relu" else "r"],
                            name="relu")
    nodes = [conv, bn, relu] if order == "bn_relu" else [conv, relu, bn]
    return B.model(nodes, [B.vi("x", [1, c, 8, 8])], [B.vi("y", None)], [w, *bn_inits])


def test_conv_bn_relu_fuses_but_conv_relu_bn_does_not():
    r = npuflow.check(_conv_act_bn("bn_relu"), DPU)
    assert [(n.name, n.device, n.fused_into) for n in r.nodes] == [
        ("conv", NPU, None), ("bn", NPU, "conv"), ("relu", NPU, "conv")]
    assert r.summary["npu_subgraphs"] == 1
    r = npuflow.check(_conv_act_bn("relu_bn"), DPU)
    assert r.node("relu").fused_into == "conv" and r.node("bn").fused_into is None
    # a BN no layer absorbs runs as the 1x1 depthwise convolution the float passes make of it
    assert (r.node("bn").device, r.node("bn").op_kind) == (NPU, "depthwise_conv2d")


def _conv_then(act_nodes, c=8, group=1):
    conv, w = B.conv_node("conv", "x", "c", c, c, group=group)
    return B.model([conv, *act_nodes], [B.vi("x", [1, c, 8, 8])], [B.vi("y", None)], [w])


def test_activation_fuses_only_when_the_op_lists_it():
    leaky = helper.make_node("LeakyRelu", ["c"], ["y"], name="act", alpha=0.1)
    # DPUCZDX8G conv2d fuses LeakyReLU; depthwise does not (Table 28 note 6), it runs as its own op
    assert npuflow.check(_conv_then([leaky]), DPU).node("act").fused_into == "conv"
    dw = npuflow.check(_conv_then([leaky], group=8), DPU)
    assert dw.node("conv").op_kind == "depthwise_conv2d"
    assert dw.node("act").fused_into is None and dw.node("act").device == NPU
    # DPUCAHX8L conv2d fuses ReLU/ReLU6 only and has no standalone LeakyReLU
    ahx = npuflow.check(_conv_then([leaky]), "DPUCAHX8L_ISA0")
    assert ahx.node("act").device == CPU and ahx.node("conv").device == NPU
    # a slope the DPU does not implement is not fused either
    bad = npuflow.check(_conv_then([helper.make_node("LeakyRelu", ["c"], ["y"], name="act", alpha=0.3)]), DPU)
    assert bad.node("act").fused_into is None and bad.node("act").device == CPU
    assert bad.node("act").reasons[0].startswith("Slope: abs(alpha - 26 / 256) <= 0.01 is false")


def test_relu6_and_hard_swish_patterns_fuse():
    six = [B.const("zero", np.float32(0)), B.const("six", np.float32(6))]
    clip = helper.make_node("Clip", ["c", "zero", "six"], ["y"], name="act")
    m = _conv_then([clip])
    m.graph.initializer.extend(six)
    r = npuflow.check(m, DPU)
    assert r.node("act").op_kind == "relu6" and r.node("act").fused_into == "conv"
    hs = [helper.make_node("HardSigmoid", ["c"], ["h"], name="hsig", alpha=1 / 6, beta=0.5),
          helper.make_node("Mul", ["c", "h"], ["y"], name="hswish")]
    r = npuflow.check(_conv_then(hs), DPU)
    assert r.node("hswish").op_kind == "hard_swish"
    assert r.node("hswish").fused_into == "conv" and r.node("hsig").fused_into == "conv"
    # x * relu6(x + 3) / 6 (PaddlePaddle's export) is the same activation
    consts = [B.const("three", np.float32(3)), B.const("zero", np.float32(0)), B.const("six", np.float32(6))]
    nodes = [helper.make_node("Add", ["c", "three"], ["a"], name="add3"),
             helper.make_node("Clip", ["a", "zero", "six"], ["cl"], name="clip"),
             helper.make_node("Mul", ["c", "cl"], ["m"], name="mul"),
             helper.make_node("Div", ["m", "six"], ["y"], name="div6")]
    m = _conv_then(nodes)
    m.graph.initializer.extend(consts)
    r = npuflow.check(m, DPU)
    assert r.node("div6").op_kind == "hard_swish"
    assert {n.name: n.fused_into for n in r.nodes} == {"conv": None, "add3": "conv", "clip": "conv", "mul": "conv",
                                                        "div6": "conv"}


def test_cpu_node_in_the_middle_splits_and_layout_ops_follow():
    c = 8
    c1, w1 = B.conv_node("conv1", "x", "a", c, c)
    sig = helper.make_node("Sigmoid", ["a"], ["s"], name="sigmoid")
    c2, w2 = B.conv_node("conv2", "s", "b", c, c)
    shape = B.const("shape", np.array([1, c * 64], np.int64))
    flat = helper.make_node("Reshape", ["b", "shape"], ["f"], name="flatten")
    fc_w = B.weight("fc.w", (c * 64, 10))
    fc = helper.make_node("MatMul", ["f", "fc.w"], ["y"], name="fc")
    m = B.model([c1, sig, c2, flat, fc], [B.vi("x", [1, c, 8, 8])], [B.vi("y", None)], [w1, w2, shape, fc_w])
    r = npuflow.check(m, DPU)
    assert [(n.name, n.device, n.subgraph) for n in r.nodes] == [
        ("conv1", NPU, 0), ("sigmoid", CPU, None), ("conv2", NPU, 1), ("flatten", NPU, 1), ("fc", NPU, 1)]
    assert r.node("fc").op_kind == "fc" and r.node("sigmoid").reasons[0].startswith("Sigmoid (sigmoid)")
    # bernoulli2 runs Sigmoid as a lookup table: one subgraph
    b2 = npuflow.check(m, "bernoulli2")
    assert b2.node("sigmoid").kernel_type == "HzLut" and b2.summary["npu_subgraphs"] == 1
    # a reshape between CPU ops does not become a subgraph of its own
    nodes = [helper.make_node("Sigmoid", ["x"], ["s"], name="s1"),
             helper.make_node("Reshape", ["s", "shape"], ["r"], name="reshape"),
             helper.make_node("Softmax", ["r"], ["y"], name="softmax")]
    r = npuflow.check(B.model(nodes, [B.vi("x", [1, c, 8, 8])], [B.vi("y", None)], [shape]), DPU)
    assert r.node("reshape").device == CPU and r.subgraphs == []
    assert "no DPU neighbour" in r.node("reshape").reasons[0]


def test_tail_concat_of_a_cpu_result_runs_on_the_cpu():
    """YOLOv8's output: NPU boxes joined with CPU class scores would share one scale on the DPU."""
    c = 8
    c1, w1 = B.conv_node("conv1", "x", "a", c, c)
    c2, w2 = B.conv_node("conv2", "x", "b", c, c)
    sig = helper.make_node("Sigmoid", ["b"], ["s"], name="sigmoid")
    shape = B.const("shape", np.array([1, c, 64], np.int64))
    boxes = helper.make_node("Reshape", ["a", "shape"], ["ra"], name="boxes")
    scores = helper.make_node("Reshape", ["s", "shape"], ["rs"], name="scores")
    cat = helper.make_node("Concat", ["ra", "rs"], ["y"], name="cat", axis=1)
    m = B.model([c1, c2, sig, boxes, scores, cat], [B.vi("x", [1, c, 8, 8])], [B.vi("y", None)], [w1, w2, shape])
    r = npuflow.check(m, DPU)
    assert r.node("cat").device == CPU and "comes from the CPU" in r.node("cat").reasons[0]
    assert r.node("scores").device == CPU  # follows the demoted concat: it only moves CPU data
    assert r.node("boxes").device == NPU and r.node("conv1").device == NPU
    # the same concat feeding NPU work stays on the NPU (the scores must go up anyway)
    c3, w3 = B.conv_node("conv3", "y2", "z", 2 * c, c)
    cat2 = helper.make_node("Concat", ["a", "s"], ["y2"], name="cat", axis=1)
    m2 = B.model([c1, c2, sig, cat2, c3], [B.vi("x", [1, c, 8, 8])], [B.vi("z", None)], [w1, w2, w3])
    assert npuflow.check(m2, DPU).node("cat").device == NPU


def test_shape_arithmetic_is_folded_and_does_not_split():
    c = 4
    c1, w1 = B.conv_node("conv1", "x", "a", c, c)
    nodes = [c1,
             helper.make_node("Shape", ["a"], ["sh"], name="shape"),
             helper.make_node("Gather", ["sh", "zero"], ["n"], name="gather", axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"], name="unsq"),
             helper.make_node("Concat", ["n1", "minus1"], ["target"], name="concat", axis=0),
             helper.make_node("Reshape", ["a", "target"], ["f"], name="reshape"),
             helper.make_node("MatMul", ["f", "fc.w"], ["y"], name="fc")]
    inits = [w1, B.const("zero", np.array(0, np.int64)), B.const("axes", np.array([0], np.int64)),
             B.const("minus1", np.array([-1], np.int64)), B.weight("fc.w", (c * 36, 3))]
    r = npuflow.check(B.model(nodes, [B.vi("x", [1, c, 6, 6])], [B.vi("y", None)], inits), DPU)
    assert [n.op_type for n in r.nodes] == ["Conv", "Reshape", "MatMul"]  # the shape chain was folded
    assert r.summary["npu_subgraphs"] == 1 and not r.cpu_nodes


def _qdq(m, names_to_quantize):
    """Wrap a float model into QDQ form: int8 weights through DequantizeLinear, Q/DQ on activations."""
    from onnx import numpy_helper

    g = m.graph
    new_inits, new_nodes = [], []
    for t in list(g.initializer):
        if t.name.endswith(".w"):
            arr = numpy_helper.to_array(t)
            q = np.clip(np.round(arr / 0.01), -127, 127).astype(np.int8)
            new_inits += [numpy_helper.from_array(q, t.name + "_q"), B.const(t.name + "_s", np.float32(0.01)),
                          B.const(t.name + "_z", np.int8(0))]
            new_nodes.append(helper.make_node("DequantizeLinear", [t.name + "_q", t.name + "_s", t.name + "_z"],
                                              [t.name], name=t.name + "_dq"))
            g.initializer.remove(t)
    out_nodes = []
    for i in g.input:  # a quantized graph input: its readers take the dequantized copy
        if i.name in names_to_quantize:
            out_nodes += [helper.make_node("QuantizeLinear", [i.name, "act_s", "act_z"], [i.name + "_q"]),
                          helper.make_node("DequantizeLinear", [i.name + "_q", "act_s", "act_z"], [i.name + "_dq"])]
            for n in g.node:
                n.input[:] = [i.name + "_dq" if t == i.name else t for t in n.input]
    for n in g.node:
        out_nodes.append(n)
        for o in n.output:
            if o in names_to_quantize:
                n.output[list(n.output).index(o)] = o + "_f"
                out_nodes += [helper.make_node("QuantizeLinear", [o + "_f", "act_s", "act_z"], [o + "_q"],
                                               name=o + "_quant"),
                              helper.make_node("DequantizeLinear", [o + "_q", "act_s", "act_z"], [o],
                                               name=o + "_dequant")]
    g.initializer.extend(new_inits + [B.const("act_s", np.float32(0.05)), B.const("act_z", np.int8(0))])
    del g.node[:]
    g.node.extend(new_nodes + out_nodes)
    return m


def test_qdq_model_places_like_the_float_model():
    float_r = npuflow.check(B.seed004(), "bernoulli2")
    q = _qdq(B.seed004(), {"data", "c1", "c2", "c3"})  # every node quantized: else it runs in float
    r = npuflow.check(q, "bernoulli2")
    for name in ("Convolution1", "Convolution2", "Convolution3"):
        assert (r.node(name).device, r.node(name).subgraph) == (float_r.node(name).device,
                                                                 float_r.node(name).subgraph)
    assert r.node("Convolution2").reasons == ["kernel 9x9 outside [1,7]x[1,7]"]
    # weight DQs follow their conv; the activation Q follows its producer, the DQ its consumer
    assert r.node("Convolution1.w_dq").subgraph == 0 and r.node("Convolution3.w_dq").subgraph == 1
    assert r.node("Convolution2.w_dq").device == CPU
    assert (r.node("c1_quant").device, r.node("c1_quant").subgraph) == (NPU, 0)
    assert r.node("c1_dequant").device == CPU and r.node("c2_dequant").subgraph == 1
    assert any(n.op_type == "DequantizeLinear" for n in r.model.graph.node)  # not folded away
    assert r.summary["npu_subgraphs"] == 2


def test_report_api_and_json():
    r = npuflow.check(B.seed004(), "bernoulli2")
    assert r.target.name == "bernoulli2" and r.model.graph.name == "seed004"
    with pytest.raises(KeyError):
        r.node("nope")
    data = json.loads(r.to_json())
    assert data["target"]["device_label"] == "BPU"
    node = data["nodes"][1]
    assert node["name"] == "Convolution2" and node["input_nodes"] == ["Convolution1"]
    assert node["output_nodes"] == ["Convolution3"] and node["output_shape"] == [1, 16, 32, 32]
    assert node["attributes"]["kernel_shape"] == [9, 9] and node["params"]["kernel_w"] == 9


def test_b_sizes_differ_in_channel_limits():
    conv, w = B.conv_node("conv", "x", "y", 2049, 1, k=1, pad=0)
    m = B.model([conv], [B.vi("x", [1, 2049, 2, 2])], [B.vi("y", None)], [w])
    assert npuflow.check(m, "DPUCZDX8G_ISA1_B4096").node("conv").device == NPU  # 256 * 16 = 4096
    small = npuflow.check(m, "DPUCZDX8G_ISA1_B512").node("conv")  # 256 * 8 = 2048
    assert small.device == CPU and "In Size: input_channel <= 256 * channel_parallel is false (2049 > 256*8=2048)" in small.reasons


def test_unnamed_nodes_get_names():
    m = B.seed004()
    for n in m.graph.node:
        n.name = ""
    r = npuflow.check(m, "bernoulli2")
    assert [n.name for n in r.nodes] == ["Conv_0", "Conv_1", "Conv_2"]
    assert [n.name for n in r.model.graph.node] == ["Conv_0", "Conv_1", "Conv_2"]


def test_every_seed002_target_resolves_by_name_and_fingerprint():
    table = {
        "DPUCADF8H_ISA0": "0x700000000000000", "DPUCAHX8H_ISA2": "0x20200000010002a",
        "DPUCAHX8H_ISA2_DWC": "0x20200000010002b", "DPUCAHX8H_ISA2_ELP2": "0x20200000000002e",
        "DPUCAHX8L_ISA0": "0x30000000000001d", "DPUCAHX8L_ISA0_SP": "0x30000000000101d",
        "DPUCVDX8G_ISA3_C32B1": "0x603000b16011811", "DPUCVDX8G_ISA3_C32B3": "0x603000b16011831",
        "DPUCVDX8G_ISA3_C32B3_PSMNET": "0x603000b16026831", "DPUCVDX8G_ISA3_C32B6": "0x603000b16011861",
        "DPUCVDX8G_ISA3_C64B1": "0x603000b16011812", "DPUCVDX8G_ISA3_C64B3": "0x603000b16011832",
        "DPUCVDX8G_ISA3_C64B5": "0x603000b16011852", "DPUCVDX8H_ISA1_F2W2_8PE": "0x501000000140fee",
        "DPUCVDX8H_ISA1_F2W4_4PE": "0x5010000001e082f", "DPUCVDX8H_ISA1_F2W4_6PE_aieDWC": "0x501000000160c2f",
        "DPUCVDX8H_ISA1_F2W4_6PE_aieMISC": "0x5010000001e082e", "DPUCZDI4G_ISA0_B4096_DEMO_SSD": "0x400002003220206",
        "DPUCZDI4G_ISA0_B8192D8_DEMO_SSD": "0x400002003220207", "DPUCZDX8G_ISA1_B1024": "0x101000016010402",
        "DPUCZDX8G_ISA1_B1152": "0x101000016010203", "DPUCZDX8G_ISA1_B1600": "0x101000016010404",
        "DPUCZDX8G_ISA1_B2304": "0x101000016010405", "DPUCZDX8G_ISA1_B3136": "0x101000016010406",
        "DPUCZDX8G_ISA1_B4096": "0x101000016010407", "DPUCZDX8G_ISA1_B512": "0x101000016010200",
        "DPUCZDX8G_ISA1_B800": "0x101000016010201",
    }
    assert len(table) == 27
    for name, fp in table.items():
        t = npuflow.load_target(name)
        assert t.name == name and npuflow.load_target(fp) is t and t.device_label == "DPU"
        assert t.family == name.split("_")[0] and t.ops["conv2d"].params["kernel_w"].range == (1, 16)
    sizes = {"B512": (4, 8, 8), "B800": (4, 10, 10), "B1024": (8, 8, 8), "B1152": (4, 12, 12),
             "B1600": (8, 10, 10), "B2304": (8, 12, 12), "B3136": (8, 14, 14), "B4096": (8, 16, 16)}
    for b, (p, i, o) in sizes.items():
        t = npuflow.load_target(f"DPUCZDX8G_ISA1_{b}")
        e = t.engines
        assert (e.conv.pixel_parallel, e.conv.input_channel_parallel, e.conv.output_channel_parallel) == (p, i, o)
        assert 2 * e.conv.macs_per_cycle == int(b[1:]) and t.channel_parallel == i
        assert (e.depthwise.pixel_parallel, e.depthwise.channel_parallel) == (p, i)
    b2 = npuflow.load_target("bernoulli2")
    assert b2.device_label == "BPU" and b2.numerics.scale_type == "float" and b2.numerics.weight_per_channel
    assert b2.numerics.symmetric and b2.ops["conv2d"].params["kernel_w"].range == (1, 7)


def test_docs_list_every_target():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "targets.md").read_text()
    for t in npuflow.list_targets():
        assert f"| `{t.name}` | `{t.fingerprint}` |" in text, t.name
