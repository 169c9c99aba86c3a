"""PP-OCRv4 rec's affine blocks fold forward on an accelerator target (``passes/fold_affine_forward.py``).

PP-LCNetV3 puts a learnable ``Mul(s) -> Add(b)`` after each hard-swish; 25 of them feed a
convolution: 12 unpadded pointwise ones take scale and shift, 13 padded depthwise ones take the
scale and keep the shift as one ``Add``.  The SVTR neck's LayerNorm ``gamma``/``beta`` pairs are the
scale and bias of one ``LayerNormalization`` each (``passes/layer_norm.py``, in either load), not folded
forward.  The 3 blocks read by a pooling op stay.  37 nodes fewer, outputs within float rounding.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnxruntime as ort
import pytest

from npuflow import model as model_io
from npuflow.model import load
from npuflow.passes.fold_affine_forward import fold_affine_forward
from npuflow.passes.optimize import optimize_float
from npuflow.quant.pipeline import _dynamic_graph
from npuflow.targets import load_target
from tests import fixture_models as fm

pytestmark = pytest.mark.models


def _session(model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_rec_affine_blocks_fold_forward_exactly():
    source = load(str(fm.ppocr_rec()), {"x": [1, 3, 48, 320]})
    plain = optimize_float(source)
    folded = optimize_float(source, load_target("DPUCZDX8G_ISA1_B4096"))
    removed = Counter(n.op_type for n in plain.graph.node) - Counter(n.op_type for n in folded.graph.node)
    # the LayerNorms' scale and shift are their LayerNormalization's own inputs since 853ae55 (45 -> 37)
    assert dict(removed) == {"Mul": 25, "Add": 12}
    assert len(plain.graph.node) - len(folded.graph.node) == 37
    assert not Counter(n.op_type for n in folded.graph.node) - Counter(n.op_type for n in plain.graph.node)
    assert len(_padded_after_shift_of_activation(plain)) == 0
    assert len(_padded_after_shift_of_activation(folded)) == 13
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 48, 320)).astype(np.float32)
    a = _session(plain).run(None, {"x": x})[0]
    b = _session(folded).run(None, {"x": x})[0]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert (a.argmax(-1) == b.argmax(-1)).all()


def _padded_after_shift_of_activation(model) -> list:
    """Padded convolutions reading ``Add(constant)`` of a hard-swish product (``Mul`` of two tensors)."""
    consts = {t.name for t in model.graph.initializer}
    writer = {o: n for n in model.graph.node for o in n.output}

    def op(tensor):
        return writer[tensor] if tensor in writer else None

    found = []
    for n in model.graph.node:
        if n.op_type != "Conv" or not any(a.name == "pads" and any(a.ints) for a in n.attribute):
            continue
        add = op(n.input[0])
        if add is None or add.op_type != "Add" or not consts & set(add.input):
            continue
        act = next((op(t) for t in add.input if t not in consts), None)
        if act is not None and (act.op_type == "HardSwish" or act.op_type == "Mul" and not consts & set(act.input)):
            found.append(n.name)
    return found


def test_check_of_the_float_model_judges_the_folded_graph():
    """``check`` of the float model judges the graph the quantizer's float passes leave on an
    accelerator target: it lists none of the folded ``Mul``/``Add`` nodes (before, 37 DPU and 8 CPU
    nodes that the quantized model and the compiled file no longer have)."""
    from npuflow.check import check

    target = load_target("DPUCZDX8G_ISA1_B4096")
    source = load(str(fm.ppocr_rec()), {"x": [1, 3, 48, 320]})
    removed = ({n.name for n in optimize_float(source).graph.node}
               - {n.name for n in optimize_float(source, target).graph.node})
    assert len(removed) == 37
    checked = {n.name for n in check(source, target).nodes}
    assert not checked & removed


def _removed_by_fold(model):
    """Names of the nodes the forward fold removes from ``model`` optimised as quantize does."""
    before = optimize_float(model)
    return {n.name for n in before.graph.node} - {n.name for n in fold_affine_forward(before).graph.node}


def test_ppocr_rec_folds_alike_loaded_with_dynamic_and_fixed_shapes():
    """Loaded with its dynamic batch/width (as quantize and qat without input shapes get it), the
    same 37 nodes fold as in the fixed load, and the 5 written-out LayerNorms are one
    ``LayerNormalization`` each in both.  Until the LayerNorm fold read ONNX Runtime's symbolic
    shape inference (``value_info.ranked_dims``), the dynamic load kept its LayerNorms written out:
    ONNX's ``Reshape``-13 inference gives the neck's tensors no rank when the target shape is
    computed (paddle2onnx's ``flatten``), and the 4 LayerNorm scale/shift pairs folded forward
    into the next ``MatMul`` there instead (45 nodes against 37)."""
    source = model_io.read_proto(fm.ppocr_rec())
    loaded, fixed = model_io.load_both(source, {"x": [1, 3, 48, 320]})
    dynamic = _dynamic_graph(source, loaded)
    removed_dynamic, removed_fixed = _removed_by_fold(dynamic), _removed_by_fold(fixed)
    assert len(removed_fixed) == 37
    assert removed_dynamic == removed_fixed
    # the ops of a written-out LayerNorm; the shape computations (Shape, Slice, Concat) differ between the loads
    chain = ("LayerNormalization", "ReduceMean", "Pow", "Sqrt", "Div")
    kinds = [Counter(n.op_type for n in optimize_float(m).graph.node if n.op_type in chain) for m in (dynamic, fixed)]
    assert kinds[0] == kinds[1]
    assert kinds[0]["LayerNormalization"] == 5
    folded = fold_affine_forward(optimize_float(dynamic))
    for width in (320, 160):
        x = np.random.default_rng(width).uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
        want, got = _session(source).run(None, {"x": x})[0], _session(folded).run(None, {"x": x})[0]
        assert want.shape == got.shape
        assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()
