"""The compiled runtime equals ONNX Runtime on the same quantized model (issue 16), on small
hand-built QDQ models: subgraph outputs that are views, float8/int4 tensors, and the float-scale
integer arithmetic of ORT's fused QLinear kernels (QLinearAdd, QLinearConv, QLinearMatMul,
QLinearMul, QLinear(Global)AveragePool) on uint8 models, which ORT runs with its default level.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics as nm
from npuflow import ort_kernels
from tests.qdq_builder import Builder, ort_values

DPU = "DPUCZDX8G_ISA1_B4096"
CPU = "cpu-int8"


def _ort_default(model, feeds: dict) -> dict:
    """Outputs of plain ONNX Runtime at its default optimisation level (QDQ groups fused), its
    int8 weights in the form this CPU's integer kernels compute exactly (``ort_kernels``: uint8
    on x86-64 without VNNI, whose uint8 x int8 kernels saturate)."""
    m = ort_kernels.exact_weights(model).SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m, opts, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# --- subgraph outputs that view working memory --------------------------------------------------


def _view_model(op: str):
    """``conv1 -> <op> -> (CPU) Exp`` and, later in the same accelerator subgraph, ``conv2``,
    whose output gets conv1's bytes once conv1 is dead: the view must not see them."""
    rng = np.random.default_rng(0)
    b = Builder("half_even")
    x = b.input("x", [1, 8, 6, 6], 2.0 ** -5)
    w1 = b.weight("w1", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    w2 = b.weight("w2", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 2.0 ** -7)
    c1 = b.quantize(b.node("Conv", [b.dq(x), w1], "c1", pads=[1, 1, 1, 1]), 2.0 ** -3)
    args = {
        "Reshape": ([b.const("shape", np.array([1, 8, 36], np.int64))], {}),
        "Flatten": ([], {"axis": 1}),
        "Unsqueeze": ([b.const("axes", np.array([0], np.int64))], {}),
        "Squeeze": ([b.const("squeeze_axes", np.array([0], np.int64))], {}),
        "Slice": ([b.const("st", np.array([0], np.int64)), b.const("en", np.array([4], np.int64)),
                   b.const("ax", np.array([1], np.int64))], {}),
    }[op]
    moved = b.quantize(b.node(op, [b.dq(c1), *args[0]], "moved", **args[1]), 2.0 ** -3)
    c2 = b.quantize(b.node("Conv", [b.dq(x), w2], "c2", pads=[1, 1, 1, 1]), 2.0 ** -3)
    b.output(c2, "y2")
    b.float_output(b.node("Exp", [b.dq(moved)], "y1"))
    return b.model()


@pytest.mark.parametrize("op", ["Reshape", "Flatten", "Unsqueeze", "Squeeze", "Slice"])
def test_view_leaving_a_subgraph_is_not_overwritten_by_a_later_op(op):
    model = _view_model(op)
    compiled = npuflow.compile(model, DPU)
    npu = [sg for sg in compiled.subgraphs if sg.on_accelerator]
    assert any("moved_q" in sg.outputs for sg in npu), "the view must leave its accelerator subgraph"
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (1, 8, 6, 6)).astype(np.float32)}
    out = npuflow.Session(compiled).run(feeds)
    ref = ort_values(model, feeds, ["y1", "y2"])
    assert np.array_equal(out["y1"], ref["y1"])  # measured before the fix: Reshape/Flatten/Slice differ
    assert np.array_equal(out["y2"], ref["y2"])


# --- float8 / int4 quantize steps -----------------------------------------------------------------


def _narrow_type_model(elem_type: int, expose: bool):
    """An int8 conv, a float8/int4 Q/DQ pair read by a CPU Add after a second accelerator part."""
    rng = np.random.default_rng(1)
    b = Builder("half_even")
    x = b.input("x", [1, 4, 6, 6], 0.02)
    w1 = b.weight("w1", rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32), 0.01)
    a = b.quantize(b.node("Conv", [b.dq(x), w1], "c1", pads=[1, 1, 1, 1]), 0.05)
    b.inits += [numpy_helper.from_array(np.float32(0.05), "m_scale"), helper.make_tensor("m_zp", elem_type, [], [0])]
    b.nodes.append(helper.make_node("QuantizeLinear", [b.dq(a), "m_scale", "m_zp"], ["m_q"], name="m_q"))
    e = b.quantize(b.node("Exp", [b.dq(a)], "exp"), 0.05)
    w2 = b.weight("w2", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), 0.01)
    c2 = b.quantize(b.node("Conv", [b.dq(e), w2], "c2", pads=[1, 1, 1, 1]), 0.1)
    b.nodes.append(helper.make_node("DequantizeLinear", ["m_q", "m_scale", "m_zp"], ["m_dq"], name="m_dq"))
    b.float_output(b.node("Add", [b.dq(c2), "m_dq"], "y"))
    if expose:
        b.outputs.append(helper.make_tensor_value_info("m_q", elem_type, [1, 8, 6, 6]))
    m = b.model()
    m.opset_import[0].version = 21
    m.ir_version = 10
    return m


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.INT4,
                                       TensorProto.UINT4])
@pytest.mark.parametrize("expose", [False, True])
def test_float8_and_int4_steps_run_on_the_cpu_with_their_own_types(elem_type, expose):
    model = _narrow_type_model(elem_type, expose)
    compiled = npuflow.compile(model, CPU)
    for sg in compiled.subgraphs:  # never lowered as if they were 8-bit integers
        if sg.on_accelerator:
            assert "m_q" not in [o for op in sg.ops for o in op["outputs"]]
    feeds = {"x": np.random.default_rng(2).normal(0, 1, (1, 4, 6, 6)).astype(np.float32)}
    session = npuflow.Session(compiled)
    out = session.run(feeds, ["y", "m_q", "c1_q"] if expose else ["y", "c1_q"])  # crashed before the fix
    ref = ort_values(model, feeds, ["y"])["y"]
    assert np.abs(out["y"] - ref).max() <= 0.1 + 1e-6  # one step of c2 (float scales, within 1 LSB)
    if expose:
        real = helper.tensor_dtype_to_np_dtype(elem_type)
        assert out["m_q"].dtype == real
        expected = (out["c1_q"].astype(np.float32) * np.float32(0.05) / np.float32(0.05))
        if elem_type in (TensorProto.INT4, TensorProto.UINT4):
            expected = np.clip(np.rint(expected), *((-8, 7) if elem_type == TensorProto.INT4 else (0, 15))).astype(real)
        else:
            expected = expected.astype(real)
        assert np.array_equal(out["m_q"].astype(np.float32), expected.astype(np.float32))


# --- ORT's fused integer kernels --------------------------------------------------------------------


def _qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc):
    dt = a.dtype
    tt = helper.np_dtype_to_tensor_dtype(dt)
    inits = [numpy_helper.from_array(np.array(v, t), n) for n, v, t in
             [("sa", sa, np.float32), ("za", za, dt), ("sb", sb, np.float32), ("zb", zb, dt),
              ("sc", sc, np.float32), ("zc", zc, dt)]]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"],
                            domain="com.microsoft")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", tt, a.shape),
                                        helper.make_tensor_value_info("b", tt, b.shape)],
                          [helper.make_tensor_value_info("c", tt, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return _ort_default(m, {"a": a, "b": b})["c"]


def _add_operands(layout: str, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` over every pair of codes: both varying along the last axis (``same``), or
    one constant along it, per channel (``*_channel``, ORT's span is the last axis) or a scalar."""
    span = np.tile(codes, 256).reshape(1, 256, 1, 256)  # every code along each channel's span
    return {"same": (np.repeat(codes, 256).reshape(1, 256, 1, 256), span),
            "b_channel": (span, codes.reshape(1, 256, 1, 1)), "a_channel": (codes.reshape(1, 256, 1, 1), span),
            "b_scalar": (span, codes[77:78]), "a_scalar": (codes[77:78], span)}[layout]


#: uint8 scales and zero points (a, b, out) on which a constant operand's fold and order matter:
#: ``fixed + float32(b * rB)`` gave 117 for a = 55, b = 232 where ORT gives 116 (found by a sweep
#: of 100 random sets, measured before the fix).
_FOLD_CASE = ((0.6124502, 208), (1.1320343, 161), (0.5924632, 139))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("layout", ["same", "b_channel", "a_channel", "b_scalar", "a_scalar"])
def test_qlinear_add_is_onnxruntimes_kernel_on_every_pair_of_codes(dtype, layout):
    info = np.iinfo(dtype)
    codes = np.arange(info.min, info.max + 1).astype(dtype)
    a, b = _add_operands(layout, codes)
    rng = np.random.default_rng(7)
    cases = [tuple((np.float32(s), int(z)) for s, z in zip(rng.uniform(0.002, 0.1, 3),
                                                            rng.integers(info.min, info.max + 1, 3)))
             for _ in range(3)]
    if dtype == np.uint8:
        cases.append(tuple((np.float32(s), z) for s, z in _FOLD_CASE))
    for (sa, za), (sb, zb), (sc, zc) in cases:
        got = nm.saturate(nm.qlinear_add(a, sa, za, b, sb, zb, sc, zc, a_scalar=layout.startswith("a_"),
                                         b_scalar=layout.startswith("b_")), 8, info.min < 0)
        assert np.array_equal(got, _qlinear_add_ort(a, b, sa, za, sb, zb, sc, zc)), (sa, za, sb, zb, sc, zc)


def _uint8_net():
    """uint8 activations, per-channel weights, int32 biases at sx*sw (ORT quantize_static style):
    conv -> add -> avgpool -> mul -> global avgpool -> matmul, each behind its own Q/DQ."""
    rng = np.random.default_rng(3)
    b = Builder("half_even")
    u8 = {"dtype": "uint8"}
    x = b.input("x", [1, 8, 64, 64], 0.0213, 131, **u8)
    sw = rng.uniform(0.002, 0.006, 16).astype(np.float32)
    w = b.weight("w", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), sw, axis=0)
    bias = b.bias("b", rng.normal(0, 0.5, 16), np.float32(0.0213) * sw)
    c = b.quantize(b.node("Conv", [b.dq(x), w, bias], "conv", pads=[1, 1, 1, 1]), 0.0517, 121, **u8)
    w2 = b.weight("w2", rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32), sw, axis=0)
    c2 = b.quantize(b.node("Conv", [b.dq(x), w2], "conv2", pads=[1, 1, 1, 1]), 0.0431, 127, **u8)
    s = b.quantize(b.node("Add", [b.dq(c), b.dq(c2)], "add"), 0.0611, 125, **u8)
    p = b.quantize(b.node("AveragePool", [b.dq(s)], "pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                   0.0307, 119, **u8)
    m = b.quantize(b.node("Mul", [b.dq(p), b.dq(p)], "mul"), 0.0219, 3, **u8)
    gp = b.quantize(b.node("GlobalAveragePool", [b.dq(m)], "gap"), 0.0071, 2, **u8)
    f = b.quantize(b.node("Reshape", [b.dq(gp), b.const("shape", np.array([1, 16], np.int64))], "flat"),
                   0.0071, 2, **u8)
    wm = b.weight("wm", rng.normal(0, 0.3, (16, 10)).astype(np.float32), np.float32(0.004))
    y = b.quantize(b.node("MatMul", [b.dq(f), wm], "fc"), 0.0019, 128, **u8)
    b.output(y, "y")
    return b.model()


def ort_default_codes(model, feeds: dict, names: list[str]) -> dict[str, np.ndarray]:
    """Integer tensors as ORT computes them at its default level.

    Exposing a quantize step's output as a graph output stops ORT fusing the group that makes it,
    so each tensor is read through an extra DequantizeLinear of its own (a graph output that no
    fused group owns) and turned back into codes, exactly: ``(q - zp) * s`` is exact in float32
    for 8-bit codes and ``rint`` of its quotient by ``s`` recovers ``q - zp``."""
    m = type(model)()
    m.CopyFrom(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for t in names:
        q = producer[t]
        m.graph.node.append(helper.make_node("DequantizeLinear", [t, *q.input[1:3]],
                                             [f"{t}__probe"], name=f"{t}__probe"))
        m.graph.output.append(helper.make_empty_tensor_value_info(f"{t}__probe"))
    values = _ort_default(m, feeds)
    out = {}
    for t in names:
        scale, zp = inits[producer[t].input[1]], inits[producer[t].input[2]]
        codes = np.rint(values[f"{t}__probe"].astype(np.float64) / np.float64(scale)) + zp.astype(np.int64)
        out[t] = codes.astype(zp.dtype)
    return out


def test_uint8_float_scale_model_equals_onnxruntime_default_bit_for_bit(tmp_path):
    """On uint8 float-scale models ORT's default level fuses every group into an integer QLinear
    kernel; the compiled model computes the same codes at every tensor (measured before: the
    fixed-point requantisation and float eltwise/pooling differ at conv, add and pool outputs)."""
    model = _uint8_net()
    compiled = npuflow.compile(model, CPU)
    assert all(sg.on_accelerator for sg in compiled.subgraphs)
    session = npuflow.Session(compiled)
    names = [o for sg in compiled.subgraphs for op in sg.ops for o in op["outputs"] if o.endswith("_q")]
    rng = np.random.default_rng(4)
    for k in range(4):
        feeds = {"x": rng.uniform(-2.7, 2.7, (1, 8, 64, 64)).astype(np.float32)}
        session.run(feeds, dump_dir=tmp_path / str(k))
        index = __import__("json").loads((tmp_path / str(k) / "index.json").read_text())
        ref = ort_default_codes(model, feeds, names)
        for t in names:
            assert np.array_equal(np.load(tmp_path / str(k) / index[t]), ref[t]), t


def test_requantize_float_is_mlas_requantisation():
    """``float32(acc) * float32(sx*sw/sy)``, ties to even, is not the correctly rounded product."""
    m = nm.requant_scale(np.float64(np.float32(0.0213)) * np.float64(np.float32(0.00417)), 0.0517)
    sx_sw = np.float32(np.float32(0.0213) * np.float32(0.00417))
    assert m.dtype == np.float32 and m == np.float32(sx_sw / np.float32(0.0517))
    acc = np.arange(-2 ** 16, 2 ** 16, dtype=np.int64)
    got = nm.requantize_float(acc, m, nm.ONNX_ROUND_MODE)
    assert np.array_equal(got, np.rint(acc.astype(np.float32) * m).astype(np.int64))
    assert np.array_equal(nm.requantize_float(np.array([5, 7]), np.float32(0.5), nm.ONNX_ROUND_MODE), [2, 4])  # half to even


def test_vit_block_equals_onnxruntime_default():
    """The ViT block where the aliasing was found (q, k, v = qkv.unbind(0): Squeeze outputs that
    leave their subgraph): measured before the fix 131 steps at a MatMul, 0.085 on the logits."""
    import torch
    import io

    import onnx

    class Block(torch.nn.Module):
        def __init__(self, d: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.h, self.ln1, self.ln2 = heads, torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.fc1, self.fc2, self.head = torch.nn.Linear(d, 2 * d), torch.nn.Linear(2 * d, d), torch.nn.Linear(d, 10)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(b, n, 3, self.h, d // self.h).permute(2, 0, 3, 1, 4).unbind(0)
            a = (q @ k.transpose(-2, -1) * (d // self.h) ** -0.5).softmax(-1)
            x = x + self.proj((a @ v).transpose(1, 2).reshape(b, n, d))
            x = x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln2(x))))
            return self.head(x.mean(1))

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.onnx.export(Block().eval(), torch.randn(1, 16, 32), buf, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"])
    rng = np.random.default_rng(0)
    calib = [rng.normal(0, 1, (1, 16, 32)).astype(np.float32) for _ in range(8)]
    model = npuflow.quantize(onnx.load_from_string(buf.getvalue()), calib, CPU).model
    feeds = {"x": np.random.default_rng(1).normal(0, 1, (1, 16, 32)).astype(np.float32)}
    got = npuflow.Session(npuflow.compile(model, CPU)).run(feeds)["y"]
    assert np.array_equal(got, _ort_default(model, feeds)["y"])
