"""Target-aware quantization: on accelerator targets only the checker's NPU nodes are quantized."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import npuflow

from .quant_nets import _init, model_from, run, samples

DPU = "DPUCZDX8G_ISA1_B4096"


def conv_sigmoid_conv():
    """x -> conv1 -> Sigmoid (also a graph output ``s``) -> conv2 -> y."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s"], name="sig"),
        helper.make_node("Conv", ["s", "w2", "b2"], ["y"], name="conv2"),
    ]
    inits = [_init("w1", rng.normal(0, 0.5, (4, 3, 3, 3))), _init("b1", rng.normal(0, 0.2, 4)),
             _init("w2", rng.normal(0, 0.5, (2, 4, 1, 1))), _init("b2", rng.normal(0, 0.2, 2))]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                      [helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 4, 6, 6]),
                       helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])])


@pytest.fixture(scope="module")
def quantized():
    return {t: npuflow.quantize(conv_sigmoid_conv(), samples([1, 3, 6, 6]), target=t) for t in (DPU, "cpu-int8")}


def _nodes(m):
    return {n.name: n for n in m.graph.node}


def test_checker_places_sigmoid_on_the_cpu_of_the_dpu():
    report = npuflow.check(conv_sigmoid_conv(), DPU)
    assert report.node("sig").device == "CPU" and report.node("conv1").device == "NPU"


def test_dpu_keeps_cpu_sigmoid_float_with_qdq_only_at_the_boundaries(quantized):
    q = quantized[DPU]
    nodes = _nodes(q.model)
    # the CPU Sigmoid reads the dequantized NPU output and writes the float graph output itself
    assert nodes["sig"].input == ["c1_dq"] and nodes["sig"].output == ["s"]
    assert "s_float" not in {o for n in q.model.graph.node for o in n.output}
    # the NPU conv2 needs its input quantized: one Q/DQ pair on the boundary, owned by conv2
    assert nodes["conv2"].input[0] == "s_dq" and nodes["s_q"].input[0] == "s"
    assert q.quant_params["s"].kind == "activation"
    # the float graph output equals the float Sigmoid of the dequantized conv1 output
    x = samples([1, 3, 6, 6], n=1, seed=9)[0]
    s_out = run(q.model, {"x": x})[0]
    c1 = run(_with_output(q.model, "c1_dq"), {"x": x})[-1]
    np.testing.assert_allclose(s_out, 1 / (1 + np.exp(-c1)), rtol=1e-6, atol=1e-7)


def test_cpu_int8_quantizes_sigmoid(quantized):
    q = quantized["cpu-int8"]
    nodes = _nodes(q.model)
    # Sigmoid is a quantized op: its output is quantized (graph output renamed through s_float -> s_q -> s_dq)
    assert nodes["sig"].output == ["s_float"] and nodes["s_dq"].output == ["s"]
    assert nodes["conv2"].input[0] == "s"  # the graph output is the dequantized tensor
    assert q.quant_params["s"].scale > 0


def test_keep_float_still_applies_on_cpu_targets():
    q = npuflow.quantize(conv_sigmoid_conv(), samples([1, 3, 6, 6]), target="cpu-int8", config={"keep_float": ["sig"]})
    assert _nodes(q.model)["sig"].output == ["s"]


def _with_output(model, tensor):
    m = model.__class__()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return m


def test_power_of_two_weights_default_to_the_least_error_fix_position():
    from npuflow.quant.config import QuantConfig
    from npuflow.targets import load_target

    cfg = QuantConfig()
    assert cfg.resolve(load_target(DPU), "weight").method == "mse"
    assert cfg.resolve(load_target(DPU), "activation").method == "minmax"
    assert cfg.resolve(load_target("cpu-int8"), "weight").method == "minmax"
    # float-scale activations clip at the 99.999th percentile
    assert cfg.resolve(load_target("cpu-int8"), "activation", "Conv").method == "percentile"
    q = npuflow.quantize(conv_sigmoid_conv(), samples([1, 3, 6, 6]), target=DPU)
    assert q.quant_params["w1"].method == "mse"


def test_bias_correction_defaults_to_auto_on_every_target(quantized):
    for target in (DPU, "cpu-int8"):
        assert quantized[target].config.include_bias_corr == "auto"
        assert isinstance(quantized[target].info["bias_corrected"], bool)
    q = npuflow.quantize(conv_sigmoid_conv(), samples([1, 3, 6, 6]), target=DPU, config={"include_bias_corr": False})
    assert q.info["bias_corrected"] is False
