"""A CPU part's int8 quantize step read by a fused run as uint8 bytes is one uint8 quantize step in the joined
graph (``runtime/joined_seams.py``, issue 19): the EfficientFormer-style net of ``bench_layernorm.py`` on
bernoulli2 is one ONNX Runtime call whose graph held 8 chains of ``QuantizeLinear`` (int8) then the fused
run's ``Cast(float) -> Add(128) -> Cast(uint8)``; written as ``QuantizeLinear`` of zero point + 128 the call
runs 21 nodes fewer, with the same outputs as the kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import npuflow
from benchmarks import bench_layernorm
from npuflow.runtime import joined


def compile_effformer(tmp_path_factory, target: str):
    """``bench_layernorm.py``'s EfficientFormer-style net quantized on 16 smooth random images and
    compiled for ``target``, with 6 more such images."""
    path = tmp_path_factory.mktemp("effformer") / "effformer.onnx"
    bench_layernorm.export(bench_layernorm.build("effformer", "x"), str(path), 17)
    rng = np.random.default_rng(0)

    def image() -> dict:
        coarse = np.kron(rng.standard_normal((1, 3, 8, 8)), np.ones((1, 1, 4, 4)))
        return {"x": (coarse + 0.2 * rng.standard_normal((1, 3, 32, 32))).astype(np.float32)}

    calibration = [image() for _ in range(16)]
    compiled = npuflow.compile(npuflow.quantize(str(path), calibration, target=target).model, target)
    return compiled, [image() for _ in range(6)]


@pytest.fixture(scope="module")
def effformer(tmp_path_factory):
    return compile_effformer(tmp_path_factory, "bernoulli2")


def _readers_of(model: onnx.ModelProto):
    """``after(node, op, to=None)``: the ``op`` nodes (a Cast: to type ``to``) reading ``node``'s first output."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def after(n: onnx.NodeProto, op: str, to: int | None = None) -> list[onnx.NodeProto]:
        return [r for r in readers.get(n.output[0], []) if r.op_type == op
                and (to is None or onnx.helper.get_attribute_value(r.attribute[0]) == to)]

    return after


def _byte_chains(model: onnx.ModelProto) -> int:
    """``QuantizeLinear -> Cast(float) -> Add -> Cast(uint8)`` chains in ``model``."""
    after = _readers_of(model)
    return sum(1 for q in model.graph.node if q.op_type == "QuantizeLinear"
               for c in after(q, "Cast", onnx.TensorProto.FLOAT) for a in after(c, "Add")
               for _ in after(a, "Cast", onnx.TensorProto.UINT8))


def _joined_and_kernels(compiled, monkeypatch) -> tuple[npuflow.Session, npuflow.Session, onnx.ModelProto]:
    """The fused Session (its frame one joined graph), the op-by-op one, and that graph as opened."""
    opened = []
    real = joined.open_session
    monkeypatch.setattr(joined, "open_session", lambda model, **kw: opened.append(model) or real(model, **kw))
    session, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    (model,) = opened
    return session, ref, model


def _equal_runs(session: npuflow.Session, ref: npuflow.Session, frames) -> None:
    for x in frames:
        a, b = session.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in b)


def test_effformer_seams_are_one_quantize_step_equal_to_the_kernels(effformer, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the verdicts found here, not stored before
    compiled, frames = effformer
    session, ref, model = _joined_and_kernels(compiled, monkeypatch)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and len(step.indices) == len(compiled.subgraphs) > 10
    assert _byte_chains(model) == 0  # 8 before
    _equal_runs(session, ref, frames)


def test_effformer_fully_connected_rows_are_matmulinteger_equal_to_the_kernels(effformer, monkeypatch):
    # the attention blocks' qkv, projection and first MLP layers (fixed-point requantisation, no
    # QGemm form) took ConvInteger of the rows moved to (1, K, rows, 1) and back: two Transpose
    # and three Reshape nodes a layer; then MatMulInteger of the rows as they lie (054d117); since
    # 41ed7e7 the compiler gives their channels multipliers with a float32 form, and the rows run on
    # ONNX Runtime's QLinearConv
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    compiled, frames = effformer
    session, ref, model = _joined_and_kernels(compiled, monkeypatch)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("ConvInteger") == 0  # 8 before
    assert ops.count("MatMulInteger") + ops.count("QLinearConv") + ops.count("QLinearMatMul") >= 6
    _equal_runs(session, ref, frames)


def _int8_chains(model: onnx.ModelProto) -> int:
    """``Cast(float) -> Add(-128) -> Cast(int8)`` chains in ``model`` (a fused run's bytes as int8 codes)."""
    after = _readers_of(model)
    return sum(1 for c in model.graph.node if c.op_type == "Cast" and c.attribute[0].i == onnx.TensorProto.FLOAT
               for a in after(c, "Add") for _ in after(a, "Cast", onnx.TensorProto.INT8))


def test_effformer_int8_seams_read_the_bytes_equal_to_the_kernels(effformer, monkeypatch):
    # a fused run's uint8 bytes handed to a LayerNorm part as int8 codes: Cast -> Add(-128) -> Cast(int8),
    # then DequantizeLinear (and, for a residual, the next run's Cast -> Add(128) -> Cast(uint8));
    # now the dequantize step reads the bytes with zero point + 128 and the next run the bytes themselves
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    compiled, frames = effformer
    session, ref, model = _joined_and_kernels(compiled, monkeypatch)
    assert _int8_chains(model) <= 1  # 6 before; one is left to a reader that computes on the codes
    _equal_runs(session, ref, frames)


def _seam(source: str) -> onnx.ModelProto:
    """``source`` codes (a uint8 input, or float codes) -> Cast -> Add(-128) -> Cast(int8) -> DequantizeLinear."""
    from onnx import TensorProto, helper, numpy_helper
    elem = TensorProto.UINT8 if source == "uint8" else TensorProto.FLOAT
    nodes = [helper.make_node("Cast", ["x"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["f", "off"], ["c"]), helper.make_node("Cast", ["c"], ["t"], to=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["t", "s", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.array(-128, np.float32), "off"),
             numpy_helper.from_array(np.array(0.0371, np.float32), "s"), numpy_helper.from_array(np.array(-5, np.int8), "z")]
    graph = helper.make_graph(nodes, "seam", [helper.make_tensor_value_info("x", elem, [256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_one_dequantize_step_gives_the_same_values_on_every_byte():
    import onnxruntime as ort

    from npuflow.runtime import joined_seams
    model = _seam("uint8")
    seamed = joined_seams.one_dequantize_step(model, {})
    assert [n.op_type for n in seamed.graph.node] == ["DequantizeLinear"]
    x = {"x": np.arange(256, dtype=np.uint8)}
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
                 for m in (model, seamed))
    assert np.array_equal(want, got)
    float_codes = _seam("float")  # not known to be bytes: left as it is
    assert joined_seams.one_dequantize_step(float_codes, {}) is float_codes
