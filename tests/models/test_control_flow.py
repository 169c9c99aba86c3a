"""Control flow (If) through check, quantize, compile and run.

An ``If`` branch reads tensors of the enclosing graph by name without listing them as inputs.
The CPU subgraph cut around the ``If`` must carry those tensors as its inputs (silero-vad's
compiled model ended in ONNX Runtime's ``InvalidGraph`` at run time), the quantizer must make the
branches read the quantized tensors like every other float consumer, and the checker must place
the ``If`` on the CPU as control flow, not as shape arithmetic next to accelerator nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from tests.control_flow_nets import if_net, loop_body_with_nested_if

DPU = "DPUCZDX8G_ISA1_B4096"
TARGETS = ["cpu-int8", DPU]
#: silero-vad's frame at 16 kHz: 512 new samples after 64 of context.
FRAME = 576


def _ort(m: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _assert_equal_to_ort(compiled: npuflow.CompiledModel, quantized: onnx.ModelProto, samples: list[dict]) -> None:
    session, ref = npuflow.Session(compiled), _ort(quantized)
    names = [o.name for o in ref.get_outputs()]
    for s in samples:
        got = session.run(s)
        for name, want in zip(names, ref.run(names, s)):
            np.testing.assert_array_equal(got[name], want, err_msg=name)


# --- a small If model whose branches read an outer feature map and an outer initializer -------

@pytest.mark.parametrize("target", TARGETS)
def test_if_reading_outer_tensors_compiles_and_runs(target):
    rng = np.random.default_rng(1)
    samples = [{"x": rng.normal(size=(1, 3, 8, 8)).astype(np.float32), "mode": np.array(k % 2, np.int64)}
               for k in range(6)]
    q = npuflow.quantize(if_net(), samples, target)
    branch = next(n for n in q.model.graph.node if n.op_type == "If")
    reads = {i for a in branch.attribute for n in a.g.node for i in n.input}
    assert "r_dq" in reads and "r" not in reads  # the branches read the quantized feature map
    compiled = npuflow.compile(q.model, target)
    holder = next(s for s in compiled.manifest["subgraphs"] if "branch" in s.get("nodes", []))
    assert "r_dq" in holder["inputs"] or "r_dq" in holder["nodes"]
    assert any(s["engine"] == "integer" for s in compiled.manifest["subgraphs"])
    _assert_equal_to_ort(compiled, q.model, samples[:2])  # both branches


def test_if_on_shape_condition_is_control_flow_on_cpu():
    """A QDQ model (not constant-folded by the checker) whose If condition is computed from a
    Shape: the If is not shape arithmetic even though its only listed input is."""
    def dq(name: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [name, "s", "z"], [f"{name}_q"]),
                helper.make_node("DequantizeLinear", [f"{name}_q", "s", "z"], [f"{name}_dq"])]

    then_g = helper.make_graph([helper.make_node("Mul", ["r_dq", "two"], ["t_out"])], "then", [],
                               [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["r_dq"], ["e_out"])], "else", [],
                               [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
    nodes = [*dq("x"), helper.make_node("Conv", ["x_dq", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"), *dq("r"),
             helper.make_node("Shape", ["r_dq"], ["shp"], name="shape"),
             helper.make_node("Gather", ["shp", "one"], ["ch"], name="gather"),
             helper.make_node("Equal", ["ch", "four"], ["cond"], name="eq"),
             helper.make_node("If", ["cond"], ["b"], then_branch=then_g, else_branch=else_g, name="branch"),
             *dq("b"), helper.make_node("Conv", ["b_dq", "w"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    w = np.random.default_rng(0).normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32)
    w[:, 3:] = 0
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(0.0625, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"), numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1, np.int64), "one"), numpy_helper.from_array(np.array(4, np.int64), "four")]
    g = helper.make_graph(nodes, "shape_if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    report = npuflow.check(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), DPU)
    node = next(n for n in report.nodes if n.name == "branch")
    assert str(node.device).upper().startswith("CPU") and node.subgraph is None
    assert "control flow" in " ".join(node.reasons)


# --- silero-vad ----------------------------------------------------------------------------

def _audio(model_path, n: int) -> list[dict]:
    """Tones and noise in frames of 576 samples, ``sr`` 16000, the LSTM state carried by FP32."""
    rng = np.random.default_rng(0)
    t = np.arange(FRAME * n) / 16000
    sig = (0.3 * np.sin(2 * np.pi * 220 * t) * (t % 0.5 < 0.3) + 0.2 * np.sin(2 * np.pi * 1000 * t)
           + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    fp32 = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    state, out = np.zeros((2, 1, 128), np.float32), []
    for k in range(n):
        s = {"input": sig[None, k * FRAME:(k + 1) * FRAME], "state": state, "sr": np.array(16000, np.int64)}
        out.append(s)
        _, state = fp32.run(None, s)
    return out


SHAPES = {"input": [1, FRAME], "state": [2, 1, 128]}


@pytest.mark.parametrize("target", TARGETS)
def test_silero_vad_16k_compiles_and_runs_equal_to_ort(models, target):
    path = models.silero_vad().parent / "silero_vad_16k_op15.onnx"
    samples = _audio(path, 8)
    q = npuflow.quantize(str(path), samples, target, input_shapes=SHAPES)
    # the Ifs on the input's length are decided at the quantized shape, as check decides them,
    # so every node check places on the accelerator is one compile lowers (a nested If kept by
    # the quantizer's dynamic copy left an Unsqueeze in float that check had placed on the DPU)
    assert not any(n.op_type == "If" for n in q.model.graph.node)
    compiled = npuflow.compile(q.model, target)
    assert any(s["engine"] == "integer" for s in compiled.manifest["subgraphs"])
    placed = {n.name for n in npuflow.check(str(path), target, SHAPES).nodes if n.device == "NPU"}
    lowered = {name for sg in compiled.manifest["subgraphs"] if sg["engine"] == "integer"
               for op in sg["ops"] for name in op["nodes"]}
    names = {n.name for n in q.model.graph.node}  # the float passes rename a few nodes
    assert not (placed & names) - lowered, sorted((placed & names) - lowered)
    _assert_equal_to_ort(compiled, q.model, samples[:4])


def test_silero_vad_default_file(models):
    """The If-over-sample-rate file: the probe feeds sr=16000 (zeros took the 8 kHz branch and
    failed check), the If is control flow on the CPU, quantize refuses with a coded error while
    every computation sits in its branches, and with ``sr`` frozen the 16 kHz branch is inlined,
    quantized, compiled and runs equal to ONNX Runtime."""
    path = models.silero_vad()
    report = npuflow.check(str(path), DPU, SHAPES)
    node = next(n for n in report.nodes if n.op_type == "If")
    assert str(node.device).upper().startswith("CPU") and "control flow" in " ".join(node.reasons)
    assert "--freeze-input" in node.hint
    samples = _audio(path, 8)
    with pytest.raises(NpuflowError) as e:
        npuflow.quantize(str(path), samples[:2], "cpu-int8", input_shapes=SHAPES)
    assert e.value.code == "NPF_QUANT_CONTROL_FLOW_ONLY" and "If_0" in e.value.message
    assert "--freeze-input" in e.value.hint

    frozen = npuflow.model.freeze_inputs(str(path), {"sr": 16000})
    assert [i.name for i in frozen.graph.input] == ["input", "state"]
    fed = [{k: v for k, v in s.items() if k != "sr"} for s in samples]
    q = npuflow.quantize(frozen, fed, DPU, input_shapes=SHAPES)
    compiled = npuflow.compile(q.model, DPU)
    assert any(s["engine"] == "integer" for s in compiled.manifest["subgraphs"])
    _assert_equal_to_ort(compiled, q.model, fed[:4])


def test_outer_reads_follow_nesting_and_shadowing():
    """A Loop body reading an outer tensor through a nested If, and defining a name of its own."""
    body = loop_body_with_nested_if("outer_x")
    loop = helper.make_node("Loop", ["n", "c", "x0"], ["y"], body=body)
    assert set(npuflow.graph.outer_reads(loop)) == {"bias", "outer_x"}  # acc/c_in are the body's own
    assert npuflow.graph.node_reads(loop)[:3] == ["n", "c", "x0"]
    npuflow.graph.rename_outer_reads(loop, {"bias": "bias_dq", "acc": "never", "outer_x": "x_dq"})
    assert set(npuflow.graph.outer_reads(loop)) == {"bias_dq", "x_dq"}
