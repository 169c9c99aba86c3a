"""ONNX forms that label-free QAT met on real detectors (PP-OCRv4 det, YOLOv8n) and failed on.

* ``Resize``: onnx2torch reads the input's rank and the scales' values at run time, which torch.fx
  cannot capture; ``onnx_convert`` gives each Resize its constants, checked against ONNX Runtime.
* ``Split`` with an output read twice (YOLOv8n's C2f): the converter writes one ``getitem`` per
  use; each got a quantizer, the export wrote the tensor's scale twice, and the PTQ start could
  not be found for tuple elements (their quantizers kept observer scales).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.ort_session import open_session
from npuflow.torch.onnx_convert import StaticResize, load_onnx2torch
from npuflow.torch.onnx_qat import qat_onnx

DPU = "DPUCZDX8G_ISA1_B4096"


def _conv(name: str, x: str, y: str, cin: int, cout: int, rng: np.random.Generator) -> tuple:
    w = numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.3).astype(np.float32), f"{name}_w")
    b = numpy_helper.from_array((rng.standard_normal(cout) * 0.1).astype(np.float32), f"{name}_b")
    return helper.make_node("Conv", [x, w.name, b.name], [y], name=name, pads=[1, 1, 1, 1]), [w, b]


def _detector_like(resize_attrs: dict, scales: list[float], size: int = 8) -> object:
    """conv -> Split(2, 2) -> conv on the second half -> Concat(first, second, conv) -> Relu ->
    Resize(scales) -> conv: the second half is read twice, as in a C2f block."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for node, params in [_conv("c0", "x", "t0", 3, 4, rng), _conv("c1", "s1", "t1", 2, 2, rng),
                         _conv("c2", "up", "y", 6, 2, rng)]:
        nodes.append(node)
        inits += params
    inits += [numpy_helper.from_array(np.array([2, 2], np.int64), "split"),
              numpy_helper.from_array(np.array([], np.float32), "roi"),
              numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    nodes[1:1] = [helper.make_node("Split", ["t0", "split"], ["s0", "s1"], name="chunk", axis=1)]
    nodes[3:3] = [helper.make_node("Concat", ["s0", "s1", "t1"], ["cat"], name="cat", axis=1),
                  helper.make_node("Relu", ["cat"], ["r"], name="relu"),
                  helper.make_node("Resize", ["r", "roi", "scales"], ["up"], name="upsample", **resize_attrs)]
    out = int(size * scales[2])
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, out, out])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
BILINEAR = {"mode": "linear", "coordinate_transformation_mode": "half_pixel"}


@pytest.mark.parametrize("attrs", [NEAREST, BILINEAR], ids=["nearest", "bilinear"])
def test_resize_converts_to_constants_and_equals_onnx_runtime(attrs):
    model = npuflow.model.load(_detector_like(attrs, [1, 1, 2, 2]))
    module = load_onnx2torch()(model)
    assert sum(isinstance(m, StaticResize) for m in module.modules()) == 1
    torch.fx.symbolic_trace(module.get_submodule(next(n for n, m in module.named_modules() if isinstance(m, StaticResize))))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, open_session(model).run(None, {"x": x})[0], atol=1e-4)


def test_resize_torch_cannot_reproduce_is_named():
    """Nearest with ``round_prefer_ceil`` at half-pixel centres and a 1.5 factor picks other
    source pixels than torch's nearest: refused with the node's name, not trained on."""
    attrs = {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"}
    with pytest.raises(NpuflowError) as err:
        load_onnx2torch()(npuflow.model.load(_detector_like(attrs, [1, 1, 1.5, 1.5])))
    assert err.value.code == "NPF_QAT_UNSUPPORTED_OP" and "upsample" in str(err.value) and "Resize" in str(err.value)


def test_qat_of_a_split_read_twice_starts_from_every_ptq_scale_and_exports():
    model = npuflow.model.load(_detector_like(NEAREST, [1, 1, 2, 2]))
    rng = np.random.default_rng(2)
    data = [{"x": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(10)]
    torch.manual_seed(0)
    r = qat_onnx(model, DPU, data, epochs=1, ptq_config={}, batch=2, lr=0.002, quantizer_lr=0.0, augment=False)
    assert r.report["quantizers_unmapped"] == 0
    # every quantizer as in the PTQ model: the export names each scale once.  (The DPU has no split: since
    # new-user round 20 the float passes write it as two Slices on the DPU, which share their input's grid,
    # where it ran on the CPU with a scale per output.)
    scales = [t.name for t in r.model.graph.initializer if t.name.endswith("_scale")]
    assert len(scales) == len(set(scales)) == len([t for t in r.ptq.model.graph.initializer if t.name.endswith("_scale")])
    assert [n.op_type for n in r.ptq.model.graph.node].count("Slice") == 2
    compiled = npuflow.Session(npuflow.compile(r.model, DPU))
    r.qat.eval()
    for sample in data[:3]:
        with torch.no_grad():
            expected = r.qat(torch.from_numpy(sample["x"])).numpy()
        np.testing.assert_array_equal(compiled.run(sample)["y"], expected)


def test_split_start_equals_the_ptq_model():
    """Before any step the student is the PTQ model: its forward equals the PTQ QDQ model in
    ONNX Runtime, Split outputs included (they took the PTQ scales, not observers' ones)."""
    from npuflow.targets import load_target
    from npuflow.torch.config import qat_config
    from npuflow.torch.onnx_qat import _build_student

    model = npuflow.model.load(_detector_like(NEAREST, [1, 1, 2, 2]))
    rng = np.random.default_rng(3)
    data = [{"x": rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
    ptq = npuflow.quantize(model, data, target=DPU, config={})
    student = _build_student(load_onnx2torch(), ptq, load_target(DPU), qat_config({"learnable": True}), data, 2, 0)
    student.qat.eval()
    session = open_session(ptq.model)
    for sample in data[:4]:
        with torch.no_grad():
            got = student.qat(torch.from_numpy(sample["x"])).numpy()
        np.testing.assert_allclose(got, session.run(None, sample)[0], atol=1e-6)
