"""The small-frame models on cpu-int8 run the graph ONNX Runtime runs for their plain QDQ export
(issue 19): the MNIST CNN's fully connected layers as channels-last ``QLinearConv`` with no layout
``Transpose`` around them (``fused_graph.rows_channels_last``), and a small fused run with ONNX
Runtime's memory pattern (``fused_graph.SMALL_RUN_BYTES``); outputs bit-equal to the kernels of
``numerics`` (``fuse=False``) on MNIST and PP-OCR cls, a large run keeping no pattern, for peak
memory."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import npuflow
from npuflow.quant.export import to_plain_qdq
from npuflow.runtime import fused, fused_graph, fused_run
from tests import fixture_models
from tests.unit.test_runtime_quantize_steps import _optimized

MNIST = (fixture_models.mnist_cnn, "input", [1, 1, 28, 28])
CLS = (fixture_models.ppocr_cls, "x", [1, 3, 48, 192])


def _build(model, seed: int = 0) -> dict:
    fetch, name, shape = model
    rng = np.random.default_rng(seed)
    samples = [{name: rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(str(fetch()), samples, target="cpu-int8", input_shapes={name: shape})
    frames = samples + [{name: np.full(shape, v, np.float32)} for v in (-50.0, 0.0, 50.0)]  # both ends saturate
    return {"compiled": npuflow.compile(quantized.model, "cpu-int8"), "model": quantized.model, "frames": frames}


@pytest.fixture(scope="module")
def mnist() -> dict:
    return _build(MNIST)


def _sessions_opened(compiled, monkeypatch) -> tuple[npuflow.Session, list[dict]]:
    """A Session of ``compiled`` and the settings each of its fused runs' ONNX Runtime sessions
    was opened with."""
    opened: list[dict] = []
    real = fused_run.open_session

    def spy(model, **kwargs):
        opened.append({k: v for k, v in kwargs.items() if k != "external"})
        return real(model, **kwargs)

    monkeypatch.setattr(fused_run, "open_session", spy)
    return npuflow.Session(compiled), opened


def _equal_to_kernels(session: npuflow.Session, compiled, frames: list[dict]) -> None:
    ref = npuflow.Session(compiled, fuse=False)
    for x in frames:
        a, b = session.run(x), ref.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (k, int(np.sum(a[k] != b[k])))


def test_mnist_runs_the_graph_of_onnxruntime_plain_qdq(mnist, tmp_path, monkeypatch):
    session, opened = _sessions_opened(mnist["compiled"], monkeypatch)
    _equal_to_kernels(session, mnist["compiled"], mnist["frames"])
    ours = _optimized(session, tmp_path / "fused.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath, opts.log_severity_level = str(tmp_path / "plain.onnx"), 3
    ort.InferenceSession(to_plain_qdq(mnist["model"]).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    plain = [n.op_type for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    kinds = [n.op_type for n in ours]
    # ORT plain: the input's layout Transpose and the flatten's back to channels-first, then QGemm,
    # QGemm; the fused graph: the same two, then two channels-last QLinearConv and one Reshape, and
    # the first convolution's one input channel padded to 4 (fused_qlinear.input_padding: 1.11x a frame)
    assert kinds.count("Transpose") == plain.count("Transpose") == 2, (kinds, plain)
    assert len(kinds) == len(plain) + 2 and kinds.count("Pad") == 1, (kinds, plain)
    fcs = [n for n in ours if n.op_type == "QLinearConv"][-2:]
    assert [n.domain for n in fcs] == ["com.microsoft"] * 2 and kinds.index("QLinearConv", kinds.index("Reshape")) \
        == kinds.index("Reshape") + 1, kinds
    # one small run: ONNX Runtime's memory pattern, as its plain session; the runtime's shared arena
    assert len(opened) == 1 and opened[0]["mem_pattern"] and opened[0]["shared_arena"], opened


def test_cls_keeps_the_runtime_memory_settings_and_equals_the_kernels(tmp_path, monkeypatch):
    cls = _build(CLS)
    session, opened = _sessions_opened(cls["compiled"], monkeypatch)
    _equal_to_kernels(session, cls["compiled"], cls["frames"][:2] + cls["frames"][4:5])
    run = next(it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
               if isinstance(it, fused.FusedRun))
    g = run.graph()
    assert g.float_bytes([*run.inputs, *run.produced]) > fused_graph.SMALL_RUN_BYTES
    assert opened and all(not o["mem_pattern"] and o["shared_arena"] for o in opened), opened
    # its fully connected layer (after the global average) is a channels-last QLinearConv too
    assert any(n.op_type == "QLinearConv" and n.domain == "com.microsoft" for n in g.nodes)
    # its max pooling reads a hard-swish table written channels-last: ONNX Runtime pools the bytes
    # with its NhwcMaxPool kernel, not through float32 (two Casts and a float MaxPool)
    kinds = [n.op_type for n in _optimized(session, tmp_path / "cls.onnx")]
    assert kinds.count("NhwcMaxPool") == 1 and "MaxPool" not in kinds, kinds


def test_pools_of_a_silu_product_stay_bytes_that_onnxruntime_pools_channels_last(tmp_path):
    # YOLOv8's SPPF on cpu-int8: conv -> SiLU (QLinearSigmoid, QLinearMul) -> 5x5 max pool -> max pool
    # -> conv.  ONNX Runtime holds the product channels-last, so the uint8 pools stay as they are
    # (its NhwcMaxPool), not through float32 with a Cast and a Transpose each side
    from tests.qdq_builder import Builder
    from tests.unit.test_compiler_kernels import CPU, _x

    rng = np.random.default_rng(7)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 12, 12], 0.043, 128, "uint8")

    def conv(t, cin, cout, name, scale=0.06, zp=120):
        w = b.weight(f"w_{name}", rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32),
                     np.full(cout, 0.009, np.float32), axis=0)
        return b.quantize(b.node("Conv", [b.dq(t), w], name, pads=[1] * 4), scale, zp, "uint8")

    c = conv(x, 8, 8, "conv")
    s = b.quantize(b.node("Sigmoid", [b.dq(c)], "sig"), 1 / 256, 0, "uint8")
    m = b.quantize(b.node("Mul", [b.dq(c), b.dq(s)], "silu"), 0.0331, 9, "uint8")  # no tie: QLinearMul
    p = m
    for k in range(2):
        p = b.quantize(b.node("MaxPool", [b.dq(p)], f"pool{k}", kernel_shape=[5, 5], pads=[2] * 4), 0.0331, 9, "uint8")
    b.output(conv(p, 8, 4, "last"), "out")
    compiled = npuflow.compile(b.model(), CPU)
    session = npuflow.Session(compiled)
    _equal_to_kernels(session, compiled, [{"x": _x([1, 8, 12, 12], seed, 2.0)} for seed in range(3)])
    kinds = [n.op_type for n in _optimized(session, tmp_path / "sppf.onnx")]
    assert "QLinearMul" in kinds and kinds.count("NhwcMaxPool") == 2, kinds
    assert "MaxPool" not in kinds and "Cast" not in kinds, kinds
