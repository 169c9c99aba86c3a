"""A float-scale sum or product of two 8-bit tensors as ONE table of both codes in a fused run
(issue 19): ``fused_tables.pair_table``, on a slice of PP-OCRv4 det's neck (its RSE block: an SE
product of a feature map and its per-channel scale, then the residual add of the two) on
bernoulli2, whose fixed-point target otherwise runs both as float passes.  The codes must be
the op-by-op kernels' and the float form's bit for bit."""

from __future__ import annotations

import numpy as np
import onnx

import npuflow
from npuflow.graph import slice_model
from npuflow.runtime import fused, fused_graph, fused_tables
from tests import fixture_models

TARGET = "bernoulli2"
SHAPE = [2, 96, 10, 10]  # batch 2: the SE scale broadcasts per image


def _rse_slice() -> onnx.ModelProto:
    det = onnx.load(str(fixture_models.ppocr_det()))
    part = slice_model(det, ["p2o.Add.229"], ["conv2d_473.tmp_0"])
    (x,) = [i for i in part.graph.input if i.name == "conv2d_473.tmp_0"]
    x.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    x.type.tensor_type.shape.Clear()
    x.type.tensor_type.shape.dim.extend(onnx.TensorShapeProto.Dimension(dim_value=d) for d in SHAPE)
    return part


def _compiled():
    rng = np.random.default_rng(5)
    samples = [{"conv2d_473.tmp_0": rng.normal(0, 1.5, SHAPE).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(_rse_slice(), samples, target=TARGET, input_shapes={"conv2d_473.tmp_0": SHAPE})
    return npuflow.compile(quantized.model, TARGET)


def _built(compiled, monkeypatch, tables: bool) -> tuple[npuflow.Session, list[str], list[str], list[int]]:
    """A Session whose fused runs take pair tables (or, ``tables`` false, the float forms), the
    ops written as tables, and its fused graphs' node types and constant sizes (written while the
    choice holds: ``FusedRun.graph`` writes the graph again)."""
    taken = []

    def counting(g, op, blobs):
        ok = tables and fused_tables.pair_table(g, op, blobs)
        if ok:
            taken.append(op["name"])
        return ok

    with monkeypatch.context() as m:
        m.setattr(fused, "pair_table", counting)
        session = npuflow.Session(compiled)
        graphs = [it.graph() for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
                  if isinstance(it, fused.FusedRun)]
    nodes = [n.op_type for g, run in zip(graphs, _runs(session)) for n in fused_graph.live(
        g.nodes, g.inits, [g.bytes[t] if t in g.bytes else g.names[t] for t in run.outputs])[0]]
    sizes = [int(np.prod(t.dims)) for g in graphs for t in g.inits]
    return session, taken, nodes, sizes


def _runs(session: npuflow.Session) -> list:
    return [it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
            if isinstance(it, fused.FusedRun)]


def test_se_product_and_residual_add_of_det_run_as_pair_tables_with_the_float_forms_codes(monkeypatch):
    compiled = _compiled()
    tables, taken, ops, sizes = _built(compiled, monkeypatch, True)
    float_form, none, before, _ = _built(compiled, monkeypatch, False)
    kernels = npuflow.Session(compiled, fuse=False)
    assert len(set(taken)) == 2 and not none, taken  # the SE block's product and the residual add
    assert sizes.count(fused_tables.PAIR_ENTRIES) == 2, sizes
    # each table replaces its op's dequantize, combine, divide and rounding passes by one lookup
    assert ops.count("Round") == before.count("Round") - 2, (ops, before)
    assert ops.count("GatherElements") == before.count("GatherElements") + 2, (ops, before)
    rng = np.random.default_rng(6)
    for scale in (0.5, 1.5, 40.0):  # everyday codes, wide ones, saturated ones
        x = {"conv2d_473.tmp_0": rng.normal(0, scale, SHAPE).astype(np.float32)}
        a, b, c = tables.run(x), float_form.run(x), kernels.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k])
