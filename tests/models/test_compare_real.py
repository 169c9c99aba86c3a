"""``npuflow compare`` on a real model: PP-OCR's direction classifier quantized for the DPU.

On a power-of-two target the compiled integer program equals ONNX Runtime on the QDQ model bit
for bit, so the ``.npuf`` (dequantized dump; each op alone through ``Session.run_op``) and the QDQ
model (ONNX Runtime; the rewired single-layer model) must report the same errors for every tensor
they share, and the same jump.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import npuflow
from npuflow.analyze.compare import compare

pytestmark = pytest.mark.models

DPU = "DPUCZDX8G_ISA1_B4096"
SHAPE = [1, 3, 48, 192]


@pytest.fixture(scope="module")
def cls_model(models, tmp_path_factory):
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.uniform(-1, 1, SHAPE).astype(np.float32)} for _ in range(6)]
    q = npuflow.quantize(str(models.ppocr_cls()), feeds[:3], DPU, input_shapes={"x": SHAPE})
    root = tmp_path_factory.mktemp("cls")
    npuflow.model.save(q.float_model, root / "float.onnx")
    npuflow.compile(q.model, DPU).save(root / "cls.npuf")
    return q, root, feeds[3:]


def test_npuf_and_qdq_agree_layer_for_layer(cls_model):
    q, root, feeds = cls_model
    qdq = compare(q.float_model, q.model, feeds)
    npuf = compare(root / "float.onnx", root / "cls.npuf", feeds)
    assert qdq.unmatched == [] and npuf.unmatched == []
    assert len(qdq.layers) > 100 and len(npuf.layers) > 60
    rows = {r.tensor: r for r in qdq.layers}
    singles = 0
    for r in npuf.layers:
        want = rows[r.tensor]
        assert (r.cosine, r.rel_error) == pytest.approx((want.cosine, want.rel_error), abs=1e-9), r.tensor
        if r.single_rel_error is not None:
            singles += 1
            assert r.single_rel_error == pytest.approx(want.single_rel_error, abs=1e-9), r.tensor
    assert singles > 60
    # the QDQ model also shows tensors inside a layer (a linear layer's MatMul result before its bias
    # Add); the .npuf shows the layer's output, so its jump is there or at the same tensor
    inside = {n.input[0]: n.output[0] for n in q.model.graph.node if n.op_type == "Add"}
    assert npuf.jump.tensor in (qdq.jump.tensor, inside.get(qdq.jump.tensor)), (npuf.jump.tensor, qdq.jump.tensor)
    out = rows["save_infer_model/scale_0.tmp_1"]  # the softmax output
    assert out.single_rel_error < out.rel_error
    # fed float inputs, a layer's own error is below what it inherits, on most layers
    own = [r for r in qdq.layers if r.single_rel_error < r.rel_error - 1e-9]
    assert len(own) > 0.8 * len([r for r in qdq.layers if r.rel_error > 1e-6])


def test_cli_on_the_real_model(cls_model, cli, tmp_path):
    _, root, feeds = cls_model
    data = tmp_path / "data"
    data.mkdir()
    for k, f in enumerate(feeds[:2]):
        np.save(data / f"{k}.npy", f["x"])
    res = cli("compare", root / "float.onnx", root / "cls.npuf", "--data", data, "-o", tmp_path / "out")
    assert res.returncode == 0, res.stderr
    doc = json.loads((tmp_path / "out/compare.json").read_text())
    assert doc["samples"] == 2 and doc["kind"] == "npuf" and doc["jump"] in res.stdout
