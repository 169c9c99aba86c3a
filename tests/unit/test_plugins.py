"""Compiler plugins (``npuflow.plugins``): a custom engine claims nodes before the accelerator
placement, its subgraphs are stored with its payload, the runtime hands them to its runner and
``perf`` asks its estimate; everything a plugin or a missing plugin can get wrong is a coded error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import plugins
from npuflow.errors import NpuflowError
from npuflow.ort_session import open_session

DPU = "DPUCZDX8G_ISA1_B4096"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alu_plugin.py"


def _example():
    spec = importlib.util.spec_from_file_location("alu_plugin", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def registry():
    saved = dict(plugins._REGISTRY)
    plugins._REGISTRY.clear()
    yield
    plugins._REGISTRY.clear()
    plugins._REGISTRY.update(saved)


def _softmax_net() -> onnx.ModelProto:
    """conv -> Softmax over channels -> conv: the plugin's part sits between two accelerator parts."""
    rng = np.random.default_rng(2)
    w1 = numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Softmax", ["c1"], ["s"], axis=1, name="softmax"),
             helper.make_node("Conv", ["s", "w2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _calib(n=8):
    rng = np.random.default_rng(0)
    return [rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_plugin_subgraph_between_accelerator_parts_runs_exactly(tmp_path, target):
    alu = _example().AluPlugin
    plugins.register_plugin(alu)
    q = npuflow.quantize(_softmax_net(), _calib(), target)
    compiled = npuflow.compile(q.model, target, plugins=["alu"])
    sgs = compiled.manifest["subgraphs"]
    engines = [(sg["engine"], sg["device"]) for sg in sgs]
    assert ("plugin", "ALU") in engines and engines.count(("plugin", "ALU")) == 1
    plugin_sg = next(sg for sg in sgs if sg["engine"] == "plugin")
    assert "softmax" in plugin_sg["nodes"] and plugin_sg["plugin"] == "alu"
    tensors = compiled.manifest["tensors"]
    assert all(np.dtype(tensors[t]["dtype"]).kind in "iu" for t in plugin_sg["inputs"] + plugin_sg["outputs"])
    assert json.loads(bytes(compiled.blob(plugin_sg["payload"])))["kernels"] == [{"op": "Softmax", "name": "softmax"}]
    assert any("softmax runs on the alu plugin" in n for n in compiled.notes)
    path = tmp_path / "m.npuf"
    compiled.save(path)
    with_plugin = npuflow.Session(path)
    without = npuflow.Session(npuflow.compile(q.model, target))
    reference = open_session(q.model)
    for x in _calib(3):
        got = with_plugin.run({"x": x})["y"]
        np.testing.assert_array_equal(got, without.run({"x": x})["y"])
        if target == DPU:  # power-of-two: the compiled model equals ONNX Runtime bit for bit
            np.testing.assert_array_equal(got, reference.run(None, {"x": x})[0])


def test_perf_asks_the_plugin_for_its_estimate(tmp_path):
    module = _example()
    plugins.register_plugin(module.AluPlugin)
    q = npuflow.quantize(_softmax_net(), _calib(), DPU)
    path = tmp_path / "m.npuf"
    npuflow.compile(q.model, DPU, plugins=["alu"]).save(path)
    from npuflow.perf import perf

    report = perf(path)
    alu = [s for s in report.subgraphs if s.device == "ALU"]
    assert len(alu) == 1 and alu[0].source == "estimated by the compiler plugin"
    elements = 1 * 8 * 8 * 8
    assert alu[0].latency_ms == pytest.approx(8 * -(-elements // 16) / (500 * 1e3))
    assert report.cpu_ms == 0 and report.npu_ms >= alu[0].latency_ms


def test_a_npuf_whose_plugin_is_missing_is_a_coded_error(tmp_path):
    plugins.register_plugin(_example().AluPlugin)
    q = npuflow.quantize(_softmax_net(), _calib(), DPU)
    path = tmp_path / "m.npuf"
    npuflow.compile(q.model, DPU, plugins=["alu"]).save(path)
    plugins._REGISTRY.clear()
    with pytest.raises(NpuflowError) as err:
        npuflow.Session(path)
    assert err.value.code == "NPF_RUNTIME_PLUGIN_MISSING" and "'alu'" in err.value.message


def test_plugins_are_found_by_entry_point(monkeypatch):
    module = _example()

    class EntryPoint:
        name = "alu"

        def load(self):
            return module.AluPlugin

    monkeypatch.setattr(plugins, "entry_points", lambda group: [EntryPoint()] if group == plugins.ENTRY_POINT_GROUP else [])
    assert plugins.available() == ["alu"]
    assert plugins.get_plugin("alu").device == "ALU"


def test_plugin_mistakes_are_coded_errors():
    q = npuflow.quantize(_softmax_net(), _calib(4), DPU)
    with pytest.raises(NpuflowError) as unknown:
        npuflow.compile(q.model, DPU, plugins=["nope"])
    assert unknown.value.code == "NPF_PLUGIN_UNKNOWN" and "'nope'" in unknown.value.message

    class Nameless(plugins.Plugin):
        name = "Bad Name"

    with pytest.raises(NpuflowError) as bad:
        plugins.register_plugin(Nameless)
    assert bad.value.code == "NPF_PLUGIN_BAD"

    class Greedy(plugins.Plugin):
        name = "greedy"

        def claims(self, model, target):
            return {"no_such_node"}

    with pytest.raises(NpuflowError) as claims:
        npuflow.compile(q.model, DPU, plugins=[Greedy()])
    assert claims.value.code == "NPF_PLUGIN_FAILED" and "no_such_node" in claims.value.message

    class Broken(plugins.Plugin):
        name = "broken"

        def claims(self, model, target):
            return {n.name for n in model.graph.node if n.op_type == "Softmax"}

        def runner(self, subgraph, payload):
            def run(feeds):
                raise ZeroDivisionError("on purpose")
            return run

    compiled = npuflow.compile(q.model, DPU, plugins=[Broken()])
    with pytest.raises(NpuflowError) as run:
        npuflow.Session(compiled).run({"x": _calib(1)[0]})
    assert run.value.code == "NPF_PLUGIN_FAILED" and "broken" in run.value.message and "on purpose" in run.value.message


def test_compile_cli_takes_plugins(tmp_path, cli):
    q = npuflow.quantize(_softmax_net(), _calib(4), DPU)
    onnx.save(q.model, tmp_path / "q.onnx")
    r = cli("compile", tmp_path / "q.onnx", "-t", DPU, "--plugin", "nope", "-o", tmp_path / "m.npuf")
    assert r.returncode == 2 and "NPF_PLUGIN_UNKNOWN" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "m.npuf").exists()
