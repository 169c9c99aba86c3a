"""Consecutive steps of one ONNX Runtime graph each run as one session (``runtime/joined.py``, issue 19):
PP-OCR cls on cpu-int8 (its network as one fused run, then the CPU subgraph's ``DequantizeLinear``,
``Flatten`` and ``Softmax``) is one ONNX Runtime call per frame, with the outputs of the steps apart
and of the kernels (``fuse=False``); dump mode, listeners, a boundary tensor by name and a subgraph
run alone still see the parts.  Parts whose joined graph ONNX Runtime would run with other kernels
(a fusion across the seam), or whose nodes mean something else under the joined opset, stay apart."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime import executors, fused, joined, merge
from benchmarks import datasets as D
from tests import fixture_models
from tests.unit.test_runtime_small_runs import CLS, _build


@pytest.fixture(scope="module")
def cls() -> dict:
    return _build(CLS)


def _apart(compiled, monkeypatch) -> npuflow.Session:
    """The Session as before this change: every step on its own session."""
    with monkeypatch.context() as m:
        m.setattr(joined, "steps", lambda steps, *args: steps)
        return npuflow.Session(compiled)


def test_cls_is_one_onnxruntime_call_equal_to_the_steps_apart_and_the_kernels(cls, monkeypatch):
    session = npuflow.Session(cls["compiled"])
    apart = _apart(cls["compiled"], monkeypatch)
    ref = npuflow.Session(cls["compiled"], fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and step.indices == (0, 1)
    assert len(apart._live()[0].steps) == 2
    assert session._one_run is not None and session._one_run.run is step.executor
    # the parts' own sessions are dropped once the joined one is open
    assert all(part.executor.single.session is None if isinstance(part.executor, executors.IntegerExecutor)
               else part.executor.session is None for part in step.executor.parts)
    calls = []
    real = fused.direct_run

    def counted(s):
        run = real(s)
        return lambda *a: calls.append(1) or run(*a)

    step.executor._run = counted(step.executor.session)
    for x in cls["frames"]:
        a, b, c = session.run(x), apart.run(x), ref.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype == c[k].dtype and np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k])
    assert len(calls) == len(cls["frames"])
    # a CPU subgraph on other threads than the fused run stays apart
    assert len(npuflow.Session(cls["compiled"], cpu_threads=2)._live()[0].steps) == 2


def test_cls_dump_listeners_boundary_tensors_and_subgraphs_run_the_parts(cls, tmp_path, monkeypatch):
    session = npuflow.Session(cls["compiled"])
    apart = _apart(cls["compiled"], monkeypatch)
    x = cls["frames"][0]
    boundary = session.compiled.manifest["subgraphs"][0]["outputs"][0]
    out = [t.name for t in session.get_outputs()]
    a, b = session.run(x, [boundary, *out]), apart.run(x, [boundary, *out])
    assert all(np.array_equal(a[k], b[k]) for k in b) and set(a) == set(b)
    session.run(x, dump_dir=tmp_path / "joined")
    apart.run(x, dump_dir=tmp_path / "apart")
    index = json.loads((tmp_path / "joined" / "index.json").read_text())
    assert index == json.loads((tmp_path / "apart" / "index.json").read_text()) and boundary in index
    for name, f in index.items():
        assert np.array_equal(np.load(tmp_path / "joined" / f), np.load(tmp_path / "apart" / f)), name
    events = []
    session.add_listener(events.append)
    session.run(x)
    assert [e.subgraphs for e in events] == [(0,), (1,)]
    session.remove_listener(events.append)
    sg = session.compiled.manifest["subgraphs"][1]
    (alone,) = session.run_subgraph(1, [a[boundary]])
    assert np.array_equal(alone, b[sg["outputs"][0]])
    assert np.array_equal(session.run(x)[out[0]], b[out[0]])  # the joined run after the parts reopened


def _part(nodes, inputs, outputs, inits=(), opset=18) -> joined._Part:
    graph = helper.make_graph(nodes, "p", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    names = {v.name: v.name for v in [*inputs, *outputs]}
    step = merge.Step(None, (0,), tuple(v.name for v in inputs))
    return joined._Part(step, model, {}, names, (), True)


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_a_fusion_across_the_seam_keeps_the_parts_apart():
    # MatMul in one part, the bias Add in the next: ONNX Runtime fuses them into one Gemm when joined
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.ones(3, np.float32), "b")
    first = _part([helper.make_node("MatMul", ["x", "w"], ["y"])], [_float("x", [2, 4])], [_float("y", [2, 3])], [w])
    second = _part([helper.make_node("Add", ["y", "b"], ["z"])], [_float("y", [2, 3])], [_float("z", [2, 3])], [bias])
    model, external, inputs = joined._join([first, second], ["z"])
    assert inputs == ["x"] and [o.name for o in model.graph.output] == ["z"]
    assert not joined.same_kernels(model, external, [first, second])
    # and a seam no fusion crosses joins
    relu = _part([helper.make_node("Relu", ["y"], ["z"])], [_float("y", [2, 3])], [_float("z", [2, 3])])
    model, external, _ = joined._join([first, relu], ["z"])
    assert joined.same_kernels(model, external, [first, relu])


def test_an_opset_17_split_is_restated_and_a_node_without_an_exact_form_keeps_the_parts_apart():
    # Split: opset 18 adds num_outputs; sizes as an input mean the same, equal parts get num_outputs
    split = numpy_helper.from_array(np.array([1, 2], np.int64), "s")
    relu = _part([helper.make_node("Relu", ["x"], ["y"])], [_float("x", [2, 4])], [_float("y", [2, 4])])
    sized = _part([helper.make_node("Split", ["y", "s"], ["u", "v"], axis=1)], [_float("y", [2, 3])],
                  [_float("u", [2, 1]), _float("v", [2, 2])], [split], opset=17)
    halves = _part([helper.make_node("Split", ["y"], ["u", "v"], axis=1)], [_float("y", [2, 4])],
                   [_float("u", [2, 2]), _float("v", [2, 2])], opset=17)
    assert joined._opsets([relu.model, sized.model]) == {"": 18}
    model, _, _ = joined._join([relu, halves], ["u", "v"])
    (node,) = [n for n in model.graph.node if n.op_type == "Split"]
    assert list(node.input) == ["y"] and helper.get_attribute_value(node.attribute[-1]) == 2
    x = np.arange(-4, 4, dtype=np.float32).reshape(2, 4)
    u, v = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(u, np.maximum(x, 0)[:, :2]) and np.array_equal(v, np.maximum(x, 0)[:, 2:])
    # ReduceMean's axes: an attribute to opset 17, an input from 18: written as a Constant input
    mean = _part([helper.make_node("ReduceMean", ["y"], ["m"], axes=[1])], [_float("y", [2, 4])],
                 [_float("m", [2, 1])], opset=17)
    model, _, _ = joined._join([relu, mean], ["m"])
    (m,) = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert np.array_equal(m, np.maximum(x, 0).mean(axis=1, keepdims=True, dtype=np.float32))
    # Resize 13 -> 18 (attributes added whose defaults no table says keep the meaning): no exact form
    # written, apart (Pad 13 -> 18, only its optional axes input added, joins: test_runtime_joined_noop.py)
    pads = numpy_helper.from_array(np.array([1, 2], np.float32), "p")
    pad = _part([helper.make_node("Resize", ["y", "", "p"], ["m"], mode="nearest")], [_float("y", [2, 4])],
                [_float("m", [2, 8])], [pads], opset=17)
    assert joined._opsets([relu.model, pad.model]) is None and joined._join([relu, pad], ["m"]) is None
    same = _part([helper.make_node("Relu", ["y"], ["z"])], [_float("y", [2, 3])], [_float("z", [2, 3])], opset=17)
    assert joined._opsets([relu.model, same.model]) == {"": 18}


@pytest.mark.parametrize("shapes, joined_steps", [({"images": [1, 3, 320, 320]}, [(0, 1, 2, 3)]),
                                                  (None, [(0,), (1, 2, 3)])])
def test_yolov8n_joins_its_opset_17_subgraphs_equal_to_the_steps_apart_and_the_kernels(shapes, joined_steps,
                                                                                       monkeypatch):
    # two fused runs, two opset-17 CPU subgraphs (the DFL softmax with a Split; the concatenation).
    # With its batch left free, ONNX Runtime would move the first run's layout Transposes across its
    # seam with the DFL subgraph (Q/DQ pairs added): that stretch is refused, the next three steps join
    photos = D.yolo("eval", 3)  # real photos, letterboxed
    quantized = npuflow.quantize(str(fixture_models.yolov8n()), D.yolo("calib", 4), target="cpu-int8",
                                 input_shapes=shapes)
    compiled = npuflow.compile(quantized.model, "cpu-int8")
    frames = [*photos, *({"images": np.full_like(photos[0]["images"], v)} for v in (-50.0, 0.0, 50.0))]
    session, apart, ref = npuflow.Session(compiled), _apart(compiled, monkeypatch), npuflow.Session(compiled, fuse=False)
    steps = session._live()[0].steps
    assert [s.indices for s in steps] == joined_steps and isinstance(steps[-1].executor, joined.Joined)
    kinds = [type(s.executor) for s in apart._live()[0].steps]
    assert kinds == [executors.IntegerExecutor, executors.OnnxExecutor] * 2
    calls = []
    real = steps[-1].executor._run
    steps[-1].executor._run = lambda *a: calls.append(1) or real(*a)
    for x in frames:
        a, b, c = session.run(x), apart.run(x), ref.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype == c[k].dtype and np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k])
    assert len(calls) == len(frames)


def test_a_stored_plan_is_joined_from_its_stored_graph_not_built_again(cls, fused_cache_on, monkeypatch):
    first = npuflow.Session(cls["compiled"])  # builds and stores the fused plan
    with monkeypatch.context() as m:
        def built(self):
            raise AssertionError("graph written again")

        m.setattr(fused.FusedRun, "graph", built)
        again = npuflow.Session(cls["compiled"])
    (step,) = again._live()[0].steps
    assert isinstance(step.executor, joined.Joined)
    for x in cls["frames"][:3]:
        a, b = first.run(x), again.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_global_layernorm_on_cpu_int8_is_one_onnxruntime_call_equal_to_the_kernels():
    # Conv-TasNet's gLN (torch, opset 17): mean and variance over (C, T) by ReduceMean with an axes
    # attribute, Pow, Sqrt, Div in float on the CPU between integer programs; the eps Add a table
    # whose uint8 codes leave its run as looked up.  Before: the opset-17 ReduceMean kept every CPU
    # subgraph apart and the table's uint8 -> float -> uint8 casts, which ONNX Runtime drops across
    # a seam, kept its run apart: 7 steps; now the frame is one call, equal to fuse=False
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a, n) for n, a in [
        ("w", rng.normal(0, 0.5, (8, 4, 1)).astype(np.float32)),
        ("w2", rng.normal(0, 0.5, (8, 8, 1)).astype(np.float32)),
        ("two", np.array(2.0, np.float32)), ("eps", np.array(1e-8, np.float32)),
        ("g", rng.uniform(0.5, 1.5, (1, 8, 1)).astype(np.float32)),
        ("b", rng.normal(0, 0.1, (1, 8, 1)).astype(np.float32))]]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("ReduceMean", ["c"], ["m"], axes=[1, 2]), helper.make_node("Sub", ["c", "m"], ["d"]),
             helper.make_node("Pow", ["d", "two"], ["d2"]), helper.make_node("ReduceMean", ["d2"], ["v"], axes=[1, 2]),
             helper.make_node("Mul", ["g", "d"], ["gd"]), helper.make_node("Add", ["v", "eps"], ["ve"]),
             helper.make_node("Sqrt", ["ve"], ["s"]), helper.make_node("Div", ["gd", "s"], ["n"]),
             helper.make_node("Add", ["n", "b"], ["y"]), helper.make_node("Conv", ["y", "w2"], ["z"])]
    graph = helper.make_graph(nodes, "gln", [_float("x", [1, 4, 32])], [_float("z", [1, 8, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    frames = [rng.normal(0, 1, (1, 4, 32)).astype(np.float32) for _ in range(6)]
    quantized = npuflow.quantize(model, frames[:4], target="cpu-int8")
    compiled = npuflow.compile(quantized.model, "cpu-int8")
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and len(step.indices) == len(ref._live()[0].steps) >= 5
    for x in frames:
        a, c = session.run({"x": x}), ref.run({"x": x})
        assert np.array_equal(a["z"], c["z"])


def test_cls_on_b4096_joins_its_basic_level_softmax_equal_to_the_steps_apart_and_the_kernels(monkeypatch):
    # the DPU's power-of-two scales run the CPU subgraph (DequantizeLinear, Softmax, and an unused
    # ai.npuflow quantize function the quantizer leaves in it) at ONNX Runtime's basic level; the
    # full level runs the same kernels there, and the joined graph's optimiser drops only the fused
    # run's two output Squeezes: one call per frame.  Before: two steps
    fetch, name, shape = CLS
    rng = np.random.default_rng(0)
    samples = [{name: rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)]
    target = "DPUCZDX8G_ISA1_B4096"
    compiled = npuflow.compile(npuflow.quantize(str(fetch()), samples, target=target,
                                                input_shapes={name: shape}).model, target)
    session, apart = npuflow.Session(compiled), _apart(compiled, monkeypatch)
    ref = npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and step.indices == (0, 1)
    cpu = apart._live()[0].steps[1].executor
    assert isinstance(cpu, executors.OnnxExecutor) and executors.cpu_level(cpu.model()[0]) == "basic"
    assert cpu.model()[0].functions and joined.level_free(*cpu.model())
    for x in [*samples, {name: np.full(shape, 50.0, np.float32)}, {name: np.full(shape, -50.0, np.float32)}]:
        a, b, c = session.run(x), apart.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k]) for k in c)


def test_a_basic_level_part_that_the_full_level_would_fuse_is_not_level_free():
    # DequantizeLinear -> MatMul -> QuantizeLinear of power-of-two scales (uint8 activations, int8
    # weights): ORT's full level makes it one integer kernel (QLinearMatMul), which the basic level
    # keeps as float steps; a DequantizeLinear -> Softmax it leaves alone
    scale = numpy_helper.from_array(np.array(0.125, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "zu")
    w_zero = numpy_helper.from_array(np.array(0, np.int8), "z")
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, [2, 4])
    dq = helper.make_node("DequantizeLinear", ["x", "s", "zu"], ["xf"])
    nodes = [dq, helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
             helper.make_node("MatMul", ["xf", "wf"], ["y"]), helper.make_node("QuantizeLinear", ["y", "s", "zu"], ["q"])]
    graph = helper.make_graph(nodes, "p", [x], [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3])],
                              [scale, zero, w_zero, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert executors.cpu_level(model) == "basic"
    assert not joined.level_free(model, {})
    softmax = helper.make_graph([dq, helper.make_node("Softmax", ["xf"], ["y"])], "p", [x], [_float("y", [2, 4])],
                                [scale, zero])
    assert joined.level_free(helper.make_model(softmax, opset_imports=[helper.make_opsetid("", 18)]), {})
