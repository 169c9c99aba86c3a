"""``npuflow info MODEL.npuf --op NAME``: one op's inputs/outputs, shapes and quantization."""

from __future__ import annotations

import json

import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.cli.info_cmd import describe_op
from npuflow.errors import NpuflowError
from tests.unit.quant_nets import conv_net, samples

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def npuf(tmp_path_factory):
    """conv_net with a Sin after its output: accelerator ops, then a CPU subgraph."""
    model = conv_net()
    model.graph.node.append(helper.make_node("Sin", ["y"], ["z"], name="sin"))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 5]))
    q = npuflow.quantize(model, [{"x": s} for s in samples([1, 3, 8, 8], 3)], DPU)
    return npuflow.compile(q.model, DPU).save(tmp_path_factory.mktemp("info") / "conv.npuf")


def test_accelerator_op_by_its_name_or_a_fused_node(npuf):
    compiled = npuflow.CompiledModel.load(npuf)
    doc = describe_op(compiled, "conv1")
    assert doc["op"] == "conv" and doc["device"] == "DPU" and "act1" in doc["nodes"]
    assert describe_op(compiled, "act1") == doc  # the ReLU fused into it finds the same op
    (out,) = doc["outputs"]
    assert out["dtype"] == "int8" and out["shape"] == [1, 4, 8, 8]
    assert out["quant"]["scale"] > 0 and out["quant"]["round_mode"] == "half_up"
    assert doc["weights"]["w"]["shape"] == [4, 3, 3, 3] and doc["macs"] > 0


def test_cpu_node(npuf):
    doc = describe_op(npuflow.CompiledModel.load(npuf), "sin")
    assert (doc["op"], doc["device"]) == ("Sin", "CPU")
    assert doc["inputs"] == [{"name": "y_dq", "dtype": "float32", "shape": [1, 5]}]
    assert doc["outputs"][0]["shape"] == [1, 5]


def test_cli_table_json_and_unknown_name(npuf, cli):
    res = cli("info", npuf, "--op", "conv2")
    assert res.returncode == 0 and "conv2" in res.stdout and "int8" in res.stdout
    res = cli("info", npuf, "--op", "fc", "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["name"] == "fc"
    res = cli("info", npuf, "--op", "conv_2")
    assert res.returncode == 2 and "NPF_COMPILE_UNKNOWN_OP" in res.stderr and "conv2" in res.stderr
    with pytest.raises(NpuflowError) as e:
        describe_op(npuflow.CompiledModel.load(npuf), "zzz")
    assert e.value.fields["close"] == "none"
