"""cpu-int8's ``softmax: QLinearSoftmax`` lowered (rounds 24-25: "Softmax is lowered on no target").

A ``DQ -> Softmax -> Q`` of 8-bit codes is what ONNX Runtime's default run fuses into its
``com.microsoft.QLinearSoftmax``; the integer op computes that kernel's arithmetic (its float32
exponential table by code difference, the row's float32 sum in order, ``rint(e * floor(1/scale) / sum)``:
``numerics_softmax.softmax_codes``), so it equals ONNX Runtime's default run on random rows (its vectorised
kernel rounds sum and scale otherwise: a row on a rounding tie may differ by a code), and its float run
within 1 LSB; a fused run computes it with ``CumSum``, byte for byte.  A Softmax the quantizer leaves float (a model output) stays on the CPU in check and
compile alike; the DPUs list no softmax (``test_listed_not_lowered.py``)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.numerics_softmax import softmax_codes, softmax_table
from npuflow.operators import softmax_axes
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import samples
from tests.unit.test_placement_agreement import compiled_devices

TARGET = "cpu-int8"


def _model(case: str, opset: int = 13) -> tuple[onnx.ModelProto, list[int]]:
    """``conv``: Conv -> Softmax over channels -> Conv 1x1; ``attention``: tokens x MatMul -> Softmax over
    the last axis -> MatMul; ``output``: Conv -> Softmax as the model output."""
    rng = np.random.default_rng(0)
    if case == "attention":
        shape = [1, 16, 24]
        inits = [numpy_helper.from_array((rng.standard_normal((24, 32)) * 0.6).astype(np.float32), "wq"),
                 numpy_helper.from_array((rng.standard_normal((32, 8)) * 0.3).astype(np.float32), "wv")]
        nodes = [helper.make_node("MatMul", ["x", "wq"], ["s"], name="scores"),
                 helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
                 helper.make_node("MatMul", ["p", "wv"], ["y"], name="values")]
        out = [1, 16, 8]
    else:
        shape = [1, 3, 8, 8]
        inits = [numpy_helper.from_array((rng.standard_normal((6, 3, 3, 3)) * 0.6).astype(np.float32), "w1"),
                 numpy_helper.from_array((rng.standard_normal((2, 6, 1, 1)) * 0.3).astype(np.float32), "w2")]
        last = "p"
        nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                 helper.make_node("Softmax", ["c"], [last], name="softmax", axis=1)]
        if case == "conv":
            nodes.append(helper.make_node("Conv", ["p", "w2"], ["y"], name="head"))
        out = [1, 6, 8, 8] if case == "output" else [1, 2, 8, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, out)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), shape


@pytest.mark.parametrize("case, opset", [("conv", 13), ("attention", 13)])
def test_softmax_between_quantized_ops_runs_on_cpu_int8_as_ort_computes_it(case, opset):
    model, shape = _model(case, opset)
    checked = npuflow.check(model, TARGET)
    assert checked.node("softmax").device == "NPU"
    q = npuflow.quantize(model, samples(shape, n=8), target=TARGET, warn=False)
    compiled = npuflow.compile(q.model, TARGET)
    sides = compiled_devices(compiled)
    assert {n.name: ("CPU" if n.device == "CPU" else "ACC") for n in checked.nodes} == \
        {n.name: sides.get(n.name) for n in checked.nodes}  # check = compile, node by node
    [op] = [o for sg in compiled.manifest["subgraphs"] for o in sg.get("ops", []) if o["name"] == "softmax"]
    assert op["op"] == "softmax"
    x = samples(shape, n=1, seed=5)[0]
    out = op["outputs"][0]
    assert compare_layerwise_with_ort(q.model, {"x": x}, TARGET, levels=("all",))[out] == 0  # QLinearSoftmax
    assert compare_layerwise_with_ort(q.model, {"x": x}, TARGET, levels=("disable",))[out] <= 1  # float Softmax


def test_a_softmax_output_stays_float_on_the_cpu_in_check_and_compile():
    model, shape = _model("output")
    checked = npuflow.check(model, TARGET)
    node = checked.node("softmax")
    assert node.device == "CPU" and "quantizes Softmax only between quantized ops" in " ".join(node.reasons)
    q = npuflow.quantize(model, samples(shape, n=8), target=TARGET, warn=False)
    assert compiled_devices(npuflow.compile(q.model, TARGET))["softmax"] == "CPU"


def _ort_default(q: np.ndarray, s_in: float, z_in: int, s_out: float, z_out: int, axis: int) -> np.ndarray:
    """ONNX Runtime's default run of ``DQ -> Softmax(axis) -> Q`` on codes ``q``."""
    t = helper.np_dtype_to_tensor_dtype(q.dtype)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["x"]),
         helper.make_node("Softmax", ["x"], ["y"], axis=axis),
         helper.make_node("QuantizeLinear", ["y", "so", "zo"], ["qy"])], "g",
        [helper.make_tensor_value_info("q", t, list(q.shape))], [helper.make_tensor_value_info("qy", t, None)],
        [numpy_helper.from_array(np.array(s_in, np.float32), "s"), numpy_helper.from_array(np.array(z_in, q.dtype), "z"),
         numpy_helper.from_array(np.array(s_out, np.float32), "so"),
         numpy_helper.from_array(np.array(z_out, q.dtype), "zo")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"q": q})[0]


@pytest.mark.parametrize("dtype, z_in, z_out", [(np.uint8, 128, 0), (np.int8, 0, -128)])
@pytest.mark.parametrize("shape, axis, s_in, s_out", [((512, 64), 1, 0.08, 0.0039187), ((64, 197), 1, 0.1, 0.0021),
                                                      ((4, 7, 5, 3), 1, 0.05, 1 / 256)])
def test_softmax_codes_equal_ort_qlinear_softmax_on_random_rows(dtype, z_in, z_out, shape, axis, s_in, s_out):
    info = np.iinfo(dtype)
    q = np.random.default_rng(3).integers(info.min, info.max + 1, shape).astype(dtype)
    table = softmax_table(s_in, 8, shape[axis], qlinear=True)
    got = softmax_codes(q, (axis,), table, s_out, z_out, bits=8, signed=dtype == np.int8)
    assert np.array_equal(got, _ort_default(q, s_in, z_in, s_out, z_out, axis))


def test_softmax_axes_follow_the_opset():
    """Opset 13 normalises over its one axis; before, over every axis from ``axis`` on (a quantized model
    of opset 11 given to ``compile`` as it is: npuflow's own loader writes such a Softmax as
    ``Flatten -> Softmax -> Reshape``)."""
    node = helper.make_node("Softmax", ["x"], ["y"], axis=1)
    assert softmax_axes(node, 4, 13) == (1,)
    assert softmax_axes(node, 4, 11) == (1, 2, 3)
    assert softmax_axes(helper.make_node("Softmax", ["x"], ["y"]), 3, 13) == (2,)
    assert softmax_axes(helper.make_node("Softmax", ["x"], ["y"]), 3, 12) == (1, 2)


def _softmax_program(dtype: str, shape: list[int], axes: list[int], s_in: float, s_out: float, z_out: int):
    """A program of one ``softmax`` op as ``lower_softmax`` writes it (QLinearSoftmax's float32 table)."""
    reduce_len = int(np.prod([shape[a] for a in axes]))
    tensors = {"x": {"shape": shape, "dtype": dtype, "quant": {"scale": s_in, "zero_point": 0}},
               "y": {"shape": shape, "dtype": dtype, "quant": {"scale": s_out, "zero_point": z_out}}}
    blobs = {"sm.table": softmax_table(s_in, 8, reduce_len, qlinear=True)}
    op = {"op": "softmax", "name": "sm", "inputs": ["x"], "outputs": ["y"], "blobs": {"table": "sm.table"},
          "attrs": {"axes": axes, "out_scale": s_out, "out_zp": z_out, "bits": 8, "signed": dtype == "int8",
                    "out_dtype": dtype}}
    return {"ops": [op], "outputs": ["y"]}, tensors, blobs


@pytest.mark.parametrize("dtype, z_out", [("uint8", 0), ("int8", -128), ("int8", -3)])
@pytest.mark.parametrize("shape, axes, s_in, s_out", [([2, 24, 24], [2], 0.16, 1 / 255), ([1, 6, 5, 4], [1], 0.05, 0.9 / 255),
                                                      ([2, 3, 7, 5], [1, 2, 3], 0.3, 1 / 256), ([3, 8], [1], 0.1, 0.0055457),
                                                      ([4, 1], [1], 0.1, 1 / 256)])
def test_a_fused_softmax_equals_its_kernel_byte_for_byte(monkeypatch, dtype, z_out, shape, axes, s_in, s_out):
    """Inside a fused run (an attention program's ``matmul2 -> softmax -> matmul2``) the op is its
    float32 operations with the row's sum as ``CumSum`` (in order): equal to ``numerics_softmax.softmax_codes``
    on random rows, rows of one code, of repeated maxima (ratios on a rounding tie: 8 maxima and
    ``floor(1 / s_out)`` 180 give 22.5, where ONNX Runtime's QLinearSoftmax gives 23 and numerics 22),
    one dominant code (the output saturates where its scale is below 1/255), the codes' extremes
    and rows of one element."""
    from npuflow.runtime import fused
    from npuflow.runtime.kernels import KERNELS
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    sg, tensors, blobs = _softmax_program(dtype, shape, axes, s_in, s_out, z_out)
    (run,) = fused.plan(sg, tensors, blobs.__getitem__).items
    assert "CumSum" in [n.op_type for n in run.model()[0].graph.node]
    info = np.iinfo(dtype)
    rng = np.random.default_rng(7)
    frames = [rng.integers(info.min, info.max + 1, shape), np.full(shape, info.min), np.full(shape, info.max),
              rng.integers(info.max - 3, info.max + 1, shape)]
    for step in (1, 2, 4, 5, 7):  # maxima every step-th code, the rest the lowest code
        tie = np.full(shape, info.min)
        tie.reshape(-1)[::step] = info.max
        frames.append(tie)
    kernel = KERNELS["softmax"](sg["ops"][0]["attrs"], {"table": blobs["sm.table"]})
    for x in frames:
        x = x.astype(dtype)
        got, want = run.run({"x": x})["y"], kernel([x])[0]
        assert got.dtype == want.dtype and np.array_equal(got, want)
