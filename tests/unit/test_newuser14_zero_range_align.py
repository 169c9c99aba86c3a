"""scikit-learn's SVC (skl2onnx, wine data) on B4096: compile wrote a ``.npuf`` that ``run`` refused
as corrupt ("attrs.align[1]: Input should be less than or equal to 31").  A class pair's vote that
no calibration row chose is all zeros; its power-of-two fix position came from the zero range
(106, scale 2^-106), and the ``Add`` of it to a constant 1 (scale 2^-6) needed a 100-bit alignment
shift.  Now an all-zero activation gets the unit scale (as an all-zero constant already did), and
an ``Add``/``Sub`` whose power-of-two scales are more than 2^31 apart stays on the CPU in check and
compile alike, so every file compile writes loads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_wine
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from skl2onnx import to_onnx

import npuflow
from npuflow import Session
from tests.unit.test_placement_agreement import _sides, compiled_devices

B4096 = "DPUCZDX8G_ISA1_B4096"


def test_sklearn_svc_compiles_to_a_file_that_runs_on_b4096(tmp_path):
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(x, y)
    model = to_onnx(pipe, x[:1], options={SVC: {"zipmap": False}}, target_opset=17)
    q = npuflow.quantize(model, [x[i * 7:i * 7 + 1] for i in range(8)], B4096)
    fixes = [p.fix_pos for p in q.quant_params.values() if p.fix_pos is not None]
    assert max(int(np.max(f)) for f in fixes) < 40  # no scale from a zero range (106 before)
    path = tmp_path / "svc.npuf"
    npuflow.compile(q.model, B4096).save(path)
    out = Session(str(path)).run({"X": x[100:101]})  # NPF_COMPILE_CORRUPT before
    assert int(np.asarray(out["label"]).reshape(-1)[0]) == int(pipe.predict(x[100:101])[0])


def _far_apart_add() -> onnx.ModelProto:
    """``DQ(Q(x), 2^-106) + DQ(Q(z), 2^-6) -> Q(2^-6) -> Conv``: the Conv stays accelerated."""
    def q_dq(name: str, src: str, scale: str) -> list[onnx.NodeProto]:
        return [helper.make_node("QuantizeLinear", [src, scale, "zp"], [f"{name}_q"], name=f"{name}_Q"),
                helper.make_node("DequantizeLinear", [f"{name}_q", scale, "zp"], [f"{name}_dq"], name=f"{name}_DQ")]
    inits = [numpy_helper.from_array(np.array(2.0 ** -106, np.float32), "tiny"),
             numpy_helper.from_array(np.array(2.0 ** -6, np.float32), "s6"),
             numpy_helper.from_array(np.array(0, np.int8), "zp"),
             numpy_helper.from_array(np.ones((2, 2, 1, 1), np.int8), "w_q")]
    nodes = [*q_dq("x", "x", "tiny"), *q_dq("z", "z", "s6"),
             helper.make_node("Add", ["x_dq", "z_dq"], ["sum"], name="add"),
             *q_dq("sum", "sum", "s6"),
             helper.make_node("DequantizeLinear", ["w_q", "s6", "zp"], ["w_dq"], name="w_DQ"),
             helper.make_node("Conv", ["sum_dq", "w_dq"], ["conv"], name="conv"),
             *q_dq("y", "conv", "s6")]
    graph = helper.make_graph(nodes, "far", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 4, 4]) for n in "xz"],
                              [helper.make_tensor_value_info("y_dq", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_add_of_scales_2_pow_100_apart_stays_on_the_cpu_in_check_and_compile(tmp_path):
    model = _far_apart_add()
    compiled = npuflow.compile(model, B4096)
    devices = compiled_devices(compiled)
    assert devices["add"] == "CPU" and devices["conv"] == "ACC"
    assert _sides(npuflow.check(model, B4096))["add"] == "CPU"
    path = tmp_path / "far.npuf"
    compiled.save(path)
    rng = np.random.default_rng(0)
    feeds = {n: rng.random((1, 2, 4, 4), dtype=np.float32) for n in "xz"}
    ref = onnxruntime.InferenceSession(model.SerializeToString()).run(None, feeds)[0]
    assert np.array_equal(Session(str(path)).run(feeds)["y_dq"], ref)


def test_calibration_that_never_reaches_part_of_the_model_warns_naming_the_tensors():
    """Calibrated on rows of class 0 only, the SVC reported 1.0 and reached a mean cosine of 0.886 on
    rows of every class (labels right); the class pairs' votes were 0 on every calibration row."""
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    model = to_onnx(make_pipeline(StandardScaler(), SVC(kernel="rbf")).fit(x, y), x[:1],
                    options={SVC: {"zipmap": False}}, target_opset=17)
    one_class = npuflow.quantize(model, [x[i * 7:i * 7 + 1] for i in range(8)], "cpu-int8", warn=False)
    assert [w.code for w in one_class.calibration_warnings] == ["NPF_QUANT_CALIB_ALL_ZERO"]
    message = one_class.calibration_warnings[0].message
    assert "only zeros on all 8 calibration sample(s)" in message and "Vnegv_0" in message
    every_class = npuflow.quantize(model, [x[i:i + 1] for i in range(3, 178, 22)], "cpu-int8", warn=False)
    assert every_class.calibration_warnings == []
