"""Fewer passes over tensors, the same codes (YOLOv8n on cpu-int8 is the real model):

* a CPU subgraph's ``Transpose`` read only by a softmax over a middle axis runs below it
  (``executors._softmax_before_transpose``), ONNX Runtime's faster softmax form: YOLOv8n's DFL
  head (``Reshape`` 1x4x16x2100, ``Transpose`` to 1x16x4x2100, softmax over the 16 bins,
  quantize step, fused by ONNX Runtime into ``QLinearSoftmax``); the synthetic models pin where
  the rewrite must not apply;
* a nearest resize with a scale-change table on 8-bit codes from an integer kernel resizes the
  bytes and indexes a byte table (``fused._gather``), so the concatenation after it (YOLOv8n's
  neck) stays bytes: no float32 copy of either operand and no cast back;
* a table that is a change of scale runs as ONNX Runtime's own lookup kernel
  (``com.microsoft.QLinearLeakyRelu`` with ``alpha`` 1, checked on all 256 codes at load:
  ``fused_qlinear.rescale``), a byte table where the kernel's differs;
* that table and upsampling stay in ONNX Runtime's channels-last layout (the table between
  transposes that cancel ONNX Runtime's, ``fused_tables.byte_lookup``; the upsampling an
  ``Expand`` of each position's channels, ``fused._upsample_channels_last``): six fewer layout
  transposes in YOLOv8n's neck than with ``Resize``, which ONNX Runtime runs channels-first.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.ort_session import options
from npuflow import ort_kernels
from npuflow.runtime import executors, fused, fused_qlinear, fused_tables
from tests import fixture_models


def _optimized_ops(model: onnx.ModelProto, level: str, tmp_path) -> list[str]:
    """The op types of ONNX Runtime's optimised graph of ``model`` at ``level``."""
    opts = options(level=level, threads=1)
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node]


@pytest.fixture(scope="module")
def yolo_cpu_int8():
    rng = np.random.default_rng(0)
    samples = [{"images": rng.uniform(0, 1, (1, 3, 320, 320)).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(str(fixture_models.yolov8n()), samples, target="cpu-int8",
                                 input_shapes={"images": [1, 3, 320, 320]})
    return npuflow.compile(quantized.model, "cpu-int8"), samples


def _fused_runs(session: npuflow.Session) -> list:
    return [it for ex in session._executors for it in getattr(getattr(ex, "plan", None), "items", [])
            if isinstance(it, fused.FusedRun)]


def test_yolov8n_cpu_int8_resize_and_concat_stay_bytes(yolo_cpu_int8):
    compiled, samples = yolo_cpu_int8
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    graphs = [it.graph() for it in _fused_runs(fast)]
    resized = [(g, n) for g in graphs for n in g.nodes if n.op_type == "Expand"]
    assert len(resized) == 2 and not any(n.op_type == "Resize" for g in graphs for n in g.nodes)  # the neck's two
    looked_up = 0
    for g, node in resized:
        # upsamples uint8 codes: the SiLU product's bytes, or (where the resize changes the
        # scale) its table's byte lookup, done before the upsampling (4x fewer lookups than after
        # it; an elementwise table commutes with copying elements)
        before = _writer_past_moves(g, node.input[0])
        looked_up += before == "QLinearLeakyRelu"  # a change of scale: fused_qlinear.rescale
        assert before in ("QLinearLeakyRelu", "QLinearMul"), before
        assert not any(n.op_type == "GatherElements" and _reads(g, n, node.output[0]) for n in g.nodes)
    assert looked_up == 1  # model.13's resize changes the scale on this calibration, model.10's does not
    concats = [op["outputs"][0] for op in compiled.manifest["subgraphs"][0]["ops"] if op["op"] == "concat"]
    writers = {t: next(n.op_type for n in reversed(g.nodes) if g.bytes[t] in n.output)
               for g in graphs for t in concats if t in g.bytes}
    # the neck's four concatenations (before: in float32, then cast) and every other one on bytes
    neck = {f"/model.{k}/Concat_output_0_q" for k in (11, 14, 17, 20)}
    assert neck <= set(writers) and set(writers.values()) == {"Concat"}, writers
    adversarial = {"images": np.where(samples[0]["images"] > 0.5, 4.0, -4.0).astype(np.float32)}
    for x in [*samples[:2], adversarial]:
        a, b = fast.run(x), ref.run(x)
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (k, int(np.sum(a[k] != b[k])))


def test_yolov8n_cpu_int8_first_layer_runs_four_input_channels(yolo_cpu_int8):
    # the image's 3 channels padded with a zero-weight fourth (fused_qlinear.input_padding: the
    # 3 -> 16 3x3 stride-2 layer at 320x320 on MLAS about 2x faster); every other layer as it was;
    # outputs equal the kernels (with the adversarial image: test_..._resize_and_concat_stay_bytes)
    compiled, samples = yolo_cpu_int8
    g = _fused_runs(npuflow.Session(compiled))[0].graph()  # the backbone's run: the image is its input
    dims = {t.name: list(t.dims) for t in g.inits}
    writer = {o: n for n in g.nodes for o in n.output}
    convs = [n for n in g.nodes if n.op_type == "QLinearConv"]
    assert dims[convs[0].input[3]][:2] == [16, 4] and writer[convs[0].input[0]].op_type == "Pad"
    assert [n.op_type for n in g.nodes].count("Pad") == 1 and all(dims[n.input[3]][1] % 4 == 0 for n in convs)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    a, b = fast.run(samples[2]), ref.run(samples[2])
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_yolov8n_cpu_int8_scale_change_runs_on_onnx_runtimes_lookup_kernel(yolo_cpu_int8, monkeypatch):
    compiled, samples = yolo_cpu_int8
    now = npuflow.Session(compiled)
    ops = [n.op_type for it in _fused_runs(now) for n in it.graph().nodes]
    assert ops.count("QLinearLeakyRelu") == 1, ops  # model.13's resize (the other keeps its scale)
    # where the kernel's table is not the scale change's (here: refused), the byte table serves
    monkeypatch.setattr(fused_qlinear, "_rescale_matches", lambda *args: False)
    refused = npuflow.Session(compiled)
    before = [n.op_type for it in _fused_runs(refused) for n in it.graph().nodes]
    assert before.count("QLinearLeakyRelu") == 0 and before.count("GatherElements") == ops.count("GatherElements") + 1
    for x in samples[:2]:
        a, b = now.run(x), refused.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)


def test_rescale_probe_refuses_a_table_one_entry_off_and_accepts_the_true_one():
    sx, zx, sy, zy = 0.016962116584181786, 16, 0.01720721460878849, 16  # YOLOv8n's model.13 resize
    x = (np.arange(256, dtype=np.float32) - np.float32(zx)) * np.float32(sx)
    table = np.clip(np.round(x / np.float32(sy)) + zy, 0, 255).astype(np.int64)
    check = fused_qlinear._rescale_matches.__wrapped__  # the probe itself, not a cached verdict
    assert check(sx, zx, sy, zy, table.tobytes())
    off = table.copy()
    off[100] += 1
    assert not check(sx, zx, sy, zy, off.tobytes())


def _transposes(session: npuflow.Session) -> int:
    """Layout transposes ONNX Runtime keeps in ``session``'s fused runs, once its optimisations are done."""
    return sum(ort_kernels.kernels(model, "all", external=arrays).get(("", "Transpose"), 0)
               for model, arrays, _ in (it.model() for it in _fused_runs(session)))


def test_yolov8n_cpu_int8_neck_upsampling_stays_channels_last(yolo_cpu_int8, monkeypatch):
    compiled, samples = yolo_cpu_int8
    now = npuflow.Session(compiled)
    kept = _transposes(now)  # before the patches below: a run's model is written again from its ops
    # the neck's scale change as a byte table (ONNX Runtime's QLinearLeakyRelu refused)
    monkeypatch.setattr(fused_qlinear, "_rescale_matches", lambda *args: False)
    tables = _transposes(npuflow.Session(compiled))
    # the forms before: the table channels-last only after a convolution, the upsampling a Resize
    monkeypatch.setattr(fused_tables, "channels_last", lambda g, codes: getattr(
        fused_tables.source_writer(g, codes), "op_type", None) == "QLinearConv")
    monkeypatch.setattr(fused, "_upsample_channels_last", lambda g, x, shape, f: g.node(
        "Resize", [x, "", g.const([1, 1, *f])], mode="nearest", coordinate_transformation_mode="asymmetric",
        nearest_mode="floor"))
    before = npuflow.Session(compiled)
    # 12 -> 9 in the fused runs' own models; in the frame's joined session, where the transposes
    # around the concatenations cancel across the runs too, 15 -> 9 (ONNX Runtime's profile).  The
    # scale change as QLinearLeakyRelu (fused_qlinear.rescale) keeps two of ONNX Runtime's layout
    # transposes (13 in the joined session): its lookup is 4x cheaper than the byte table's passes
    assert tables == _transposes(before) - 3 and kept == tables + 2
    for x in samples[:2]:
        a, b = now.run(x), before.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)


def _writer_past_moves(g, name: str) -> str:
    """The op type writing ``name``, looking through ``Reshape``/``Transpose``."""
    node = next(n for n in g.nodes if name in n.output)
    while node.op_type in ("Reshape", "Transpose"):
        node = next(n for n in g.nodes if node.input[0] in n.output)
    return node.op_type


def _reads(g, node, name: str) -> bool:
    """Whether ``node`` reads ``name``, directly or through ``Reshape``/``Transpose``/``Cast``."""
    for i in node.input:
        if i == name:
            return True
        writer = next((n for n in g.nodes if i in n.output), None)
        if writer is not None and writer.op_type in ("Reshape", "Transpose", "Cast") and _reads(g, writer, name):
            return True
    return False


def test_yolov8n_cpu_int8_dfl_softmax_moves_and_outputs_stay(yolo_cpu_int8, tmp_path, monkeypatch):
    compiled, samples = yolo_cpu_int8
    rng = np.random.default_rng(0)
    subgraphs = [sg for sg in compiled.manifest["subgraphs"] if "onnx" in sg]
    softmax_sg = [sg for sg in subgraphs
                  if any(n.op_type == "Softmax" for n in onnx.load_from_string(compiled.blob(sg["onnx"])).graph.node)]
    assert len(softmax_sg) == 1
    sg = softmax_sg[0]
    model = onnx.load_from_string(compiled.blob(sg["onnx"]))
    before = [n.op_type for n in model.graph.node]
    assert before.index("Transpose") < before.index("Softmax")  # as the compiler writes it
    executors._softmax_before_transpose(model)
    after = [n.op_type for n in model.graph.node]
    assert after.index("Softmax") < after.index("Transpose") and len(after) == len(before), after
    onnx.checker.check_model(model, full_check=True)
    # ONNX Runtime runs the same softmax kernel as on the subgraph as compiled (since 2ac7fe2 the DFL softmax
    # reads float data movement, the class Sigmoid's split being float tail, so both run its float Softmax)
    level = executors.cpu_level(model)
    (tmp_path / "moved").mkdir()
    (tmp_path / "kept").mkdir()
    ops = _optimized_ops(model, level, tmp_path / "moved")
    as_compiled = _optimized_ops(onnx.load_from_string(compiled.blob(sg["onnx"])), level, tmp_path / "kept")
    kernels = {"Softmax", "QLinearSoftmax"}
    assert [o for o in ops if o in kernels] == [o for o in as_compiled if o in kernels] and set(ops) & kernels, ops

    # the subgraph on random, saturated and zero codes: equal to the subgraph as compiled
    moved = executors.OnnxExecutor(sg, compiled.blob(sg["onnx"]), lookup=False)
    with monkeypatch.context() as m:
        m.setattr(executors, "_softmax_before_transpose", lambda model: None)
        kept = executors.OnnxExecutor(sg, compiled.blob(sg["onnx"]), lookup=False)
        reference = npuflow.Session(compiled)
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in onnx.load_from_string(
        compiled.blob(sg["onnx"])).graph.input}
    feeds = [{k: rng.integers(0, 256, s).astype(np.uint8) for k, s in shapes.items()} for _ in range(5)]
    feeds += [{k: np.full(s, c, np.uint8) for k, s in shapes.items()} for c in (0, 255)]
    for f in feeds:
        a, b = moved.run(f), kept.run(f)
        assert all(np.array_equal(a[k], b[k]) for k in b)

    # the whole model: every output equal to the Session without the move
    session = npuflow.Session(compiled)
    for x in samples[:2]:
        a, b = session.run(x), reference.run(x)
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def _softmax_model(perm: list[int], axis: int, opset: int = 17, extra_reader: bool = False) -> onnx.ModelProto:
    shape = [2, 3, 4, 5]
    out_shape = [shape[p] for p in perm]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
             helper.make_node("Softmax", ["t"], ["y"], axis=axis)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["t"], ["n"]))
        outputs.append(helper.make_tensor_value_info("n", TensorProto.FLOAT, out_shape))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("perm,axis", [([0, 2, 1, 3], 1), ([0, 3, 1, 2], -3), ([1, 0, 2, 3], 0)])
def test_float_softmax_over_a_middle_axis_moves_with_equal_values(perm, axis):
    model = _softmax_model(perm, axis)
    x = {"x": np.random.default_rng(1).normal(0, 4, (2, 3, 4, 5)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    executors._softmax_before_transpose(model)
    assert [n.op_type for n in model.graph.node] == ["Softmax", "Transpose"]
    assert model.graph.node[0].attribute[0].i == perm[axis % 4]
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.array_equal(got, want)


@pytest.mark.parametrize("kwargs", [{"perm": [0, 2, 1, 3], "axis": 3},                 # already the last axis
                                    {"perm": [0, 2, 1, 3], "axis": 1, "opset": 12},    # axis flattens what follows
                                    {"perm": [0, 2, 1, 3], "axis": 1, "extra_reader": True}])
def test_softmax_rewrite_leaves_other_graphs(kwargs):
    model = _softmax_model(**kwargs)
    nodes = [n.SerializeToString() for n in model.graph.node]
    executors._softmax_before_transpose(model)
    assert [n.SerializeToString() for n in model.graph.node] == nodes


def _qdq_softmax_model(dtype: int, scale: float) -> onnx.ModelProto:
    """``x`` codes -> DequantizeLinear -> Transpose -> Softmax over axis 1 -> QuantizeLinear."""
    zp = np.uint8(0) if dtype == TensorProto.UINT8 else np.int8(0)
    inits = [onnx.numpy_helper.from_array(np.float32(scale), "s"), onnx.numpy_helper.from_array(zp, "z"),
             onnx.numpy_helper.from_array(np.float32(1 / 256), "so"), onnx.numpy_helper.from_array(zp, "zo")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"]),
             helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["t"], ["p"], axis=1),
             helper.make_node("QuantizeLinear", ["p", "so", "zo"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", dtype, [1, 4, 16, 30])],
                              [helper.make_tensor_value_info("y", dtype, [1, 16, 4, 30])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype,scale,moves", [
    (TensorProto.UINT8, 0.118, True),    # float scales, uint8: QLinearSoftmax either way (cpu-int8)
    (TensorProto.INT8, 0.118, True),     # float scales, int8: float Softmax in both forms (onnxruntime 1.32)
    (TensorProto.INT8, 0.125, True)])    # power of two: the CPU subgraph runs in float (basic level)
def test_softmax_moves_only_where_onnx_runtime_keeps_its_kernel(dtype, scale, moves):
    model = _qdq_softmax_model(dtype, scale)
    x = {"x": np.random.default_rng(2).integers(0 if dtype == TensorProto.UINT8 else -128, 128, (1, 4, 16, 30))
         .astype(np.uint8 if dtype == TensorProto.UINT8 else np.int8)}
    level = executors.cpu_level(model)
    want = ort.InferenceSession(model.SerializeToString(), options(level=level, threads=1),
                                providers=["CPUExecutionProvider"]).run(None, x)[0]
    executors._softmax_before_transpose(model)
    ops = [n.op_type for n in model.graph.node]
    assert (ops.index("Softmax") < ops.index("Transpose")) == moves, ops
    got = ort.InferenceSession(model.SerializeToString(), options(level=level, threads=1),
                               providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.array_equal(got, want)


def test_int8_softmax_stays_where_onnx_runtime_would_fuse_only_the_moved_form(monkeypatch):
    """int8 codes at the "all" level: a move after which ONNX Runtime's optimised graph runs other kernels (a
    ``QLinearSoftmax`` fused in the moved form only: other codes) is undone, the graph left as it was."""
    model = _qdq_softmax_model(TensorProto.INT8, 0.118)
    nodes = [n.SerializeToString() for n in model.graph.node]
    real = executors.ort_kernels.kernels

    def fused_when_moved(m, level):
        counts = real(m, level)
        ops = [n.op_type for n in m.graph.node]
        if ops.index("Softmax") < ops.index("Transpose"):
            counts.pop(("", "Softmax"))
            counts[("com.microsoft", "QLinearSoftmax")] = 1
        return counts

    monkeypatch.setattr(executors.ort_kernels, "kernels", fused_when_moved)
    executors._softmax_before_transpose(model)
    assert [n.SerializeToString() for n in model.graph.node] == nodes


def test_yolov8n_bernoulli2_dfl_softmax_moves_and_outputs_stay(monkeypatch):
    """YOLOv8n on bernoulli2 (int8 codes, float scales): the DFL head's softmax over the 16 bins of
    8x16x4x2100 runs before its ``Transpose`` (ONNX Runtime's float ``Softmax`` either way), and every
    output equals the Session without the move, at batch 2 on two inputs."""
    rng = np.random.default_rng(0)
    samples = [{"images": rng.uniform(0, 1, (2, 3, 320, 320)).astype(np.float32)} for _ in range(2)]
    quantized = npuflow.quantize(str(fixture_models.yolov8n()), samples, target="bernoulli2",
                                 input_shapes={"images": [2, 3, 320, 320]})
    compiled = npuflow.compile(quantized.model, "bernoulli2")
    opened: list[onnx.ModelProto] = []
    real = executors.open_session

    def spy(model, **kwargs):
        opened.append(onnx.ModelProto.FromString(model.SerializeToString()))
        return real(model, **kwargs)

    monkeypatch.setattr(executors, "open_session", spy)
    session = npuflow.Session(compiled)
    softmax = [m for m in opened if any(n.op_type == "Softmax" for n in m.graph.node)]
    assert len(softmax) == 1
    ops = [n.op_type for n in softmax[0].graph.node]
    assert ops.index("Softmax") < ops.index("Transpose"), ops
    assert not executors._uint8_steps(softmax[0]) and executors.cpu_level(softmax[0]) == "all"
    monkeypatch.setattr(executors, "_softmax_before_transpose", lambda model: None)
    reference = npuflow.Session(compiled)
    for x in samples:
        a, b = session.run(x), reference.run(x)
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
