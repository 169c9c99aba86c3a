"""The operator registry (``npuflow/operators.py``, issue 17 item 1): consistent facts, one answer
per question for every stage, and no op-name tables left elsewhere.

Before the registry the checker, the float passes, the quantizer's plan and the compiler each
kept their own tables and tests: a Clip to [0, 6.000001] was ReLU6 for the quantizer (a tolerance)
and a plain clip for the checker (exact bounds), a grouped ConvTranspose was depthwise for the
float passes whatever its channels; the tests below pin the shared answers on small graphs.
"""

from __future__ import annotations

import ast
import glob
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import npuflow
from npuflow import activation_patterns as patterns
from npuflow import operators as ops
from npuflow.compiler.lowering import LOWERINGS
from npuflow.passes.activations import fuse_activation_patterns, op_kind
from npuflow.graph import GraphView
from npuflow.targets import load_target
from tests import onnx_builders as B

ROOT = Path(npuflow.__file__).parent
DPU = "DPUCZDX8G_ISA1_B4096"
X = [1, 4, 8, 8]


def _bundled_targets():
    names = [os.path.basename(f)[:-5] for f in glob.glob(str(ROOT / "targets" / "data" / "[!_]*.yaml"))]
    return [load_target(n) for n in sorted(names)]


# --- the facts are consistent --------------------------------------------------------------------


@pytest.mark.parametrize("d", list(ops.REGISTRY.values()), ids=lambda d: d.op_type)
def test_every_entry_is_a_real_op_with_consistent_facts(d):
    """Every entry names an op ONNX (or ONNX Runtime's contrib domain) defines, with input
    positions the op has, and flags that imply each other as the stages rely on."""
    if d.domains == ("com.microsoft",):
        assert d.engine is ops.Engine.ELTWISE
    else:
        schema = onnx.defs.get_schema(d.op_type)
        for k in (d.weight, d.bias, *d.params):
            assert k is None or k < schema.max_input, (d.op_type, k)
    assert d.weight is None or d.weight not in d.params
    assert d.bias is None or (d.weight is not None and d.bias != d.weight)
    # the compiler lowers only what the quantizer quantizes; a Softmax (STEP_BOUND_OPS) the quantizer leaves to
    # the quantize steps around it (between two quantized ops), and the compiler lowers it only between them
    assert not d.lowered or d.quantized or d.op_type in ops.STEP_BOUND_OPS
    assert not d.chain or d.table  # a chain op alone between DQ and Q is a lookup table
    assert not (d.follower or d.moves_data or d.scale is not ops.SharedScale.NONE) or d.quantized
    assert d.role is not ops.Role.LAYOUT or d.moves_data
    assert d.axis is None or d.kind in ("split", "concat", "softmax", "argmax") or d.kind.startswith("reduce_")


def test_derived_tables_and_the_compiler_agree():
    assert ops.LOWERED_OPS == set(LOWERINGS)
    assert ops.WEIGHTED_OPS == {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    assert ops.FOLDS_INTO <= ops.WEIGHTED_OPS
    assert ops.DATA_MOVEMENT == (ops.FOLLOWERS | {"Concat"}) - {"Relu"}
    assert set(ops.DEFAULT_FUSED) <= set(ops.FUSABLE_ACTIVATIONS) <= ops.ACTIVATION_KINDS


@pytest.mark.parametrize("target", _bundled_targets(), ids=lambda t: t.name)
def test_target_files_speak_the_registry_vocabulary(target):
    """Every op kind a target file lists is one the registry (with its refinements: depthwise,
    ReLU6, global pools from reductions) can name, and every fused activation one the stages
    recognise: a typo in a target file would otherwise silently never match."""
    kinds = {d.kind for d in ops.REGISTRY.values()} | ops.WEIGHTED_KINDS | ops.ACTIVATION_KINDS
    assert set(target.ops) <= kinds, set(target.ops) - kinds
    for kind, rule in target.ops.items():
        assert set(rule.activations) <= set(ops.FUSABLE_ACTIVATIONS), (kind, rule.activations)


# --- one answer per predicate --------------------------------------------------------------------


def test_predicates():
    assert ops.is_depthwise(8, 8) and ops.is_depthwise(4, 4)
    assert not ops.is_depthwise(1, 1) and not ops.is_depthwise(2, 8) and not ops.is_depthwise(4, None)
    assert ops.clip_kind(0.0, 6.0) == "relu6" and ops.clip_kind(0.0, None) == "relu"
    assert ops.clip_kind(0.0, float("inf")) == "relu"
    assert ops.clip_kind(0.0, float(np.float32(6.000001))) == "clip"  # exact, not within a tolerance
    assert ops.clip_kind(None, 6.0) == "clip"
    assert patterns.divides_by_six("Div", 6.0) and patterns.divides_by_six("Mul", float(np.float32(1 / 6)))
    assert not patterns.divides_by_six("Mul", 0.1667) and not patterns.divides_by_six("Add", 6.0)


def _scalars(inits: dict[str, float]):
    return lambda name: inits.get(name)


def test_unit_kind_recognises_the_units_the_quantizer_writes():
    c = {"three": 3.0, "zero": 0.0, "six": 6.0, "one": 1.0, "dpu": ops.DPU_HSIGMOID_SCALE, "sixth": 1 / 6}
    add = helper.make_node("Add", ["x", "three"], ["a"])
    clip = helper.make_node("Clip", ["a", "zero", "six"], ["r"])
    dpu = helper.make_node("Mul", ["r", "dpu"], ["h"])
    div = helper.make_node("Div", ["r", "six"], ["h"])
    swish = helper.make_node("Mul", ["x", "h"], ["y"])
    s = _scalars(c)
    assert patterns.unit_kind([add, clip, dpu], s) == "hard_sigmoid"
    assert patterns.unit_kind([add, clip, div], s) == "hard_sigmoid"
    assert patterns.unit_kind([add, clip, dpu, swish], s) == "hard_swish"
    assert patterns.unit_kind([helper.make_node("HardSigmoid", ["x"], ["h"]), swish], s) == "hard_swish"
    assert patterns.unit_kind([helper.make_node("Clip", ["x", "zero", "one"], ["y"])], s) == "clip"  # not relu6
    assert patterns.unit_kind([helper.make_node("Clip", ["x", "zero", "six"], ["y"])], s) == "relu6"
    assert patterns.unit_kind([helper.make_node("Add", ["x", "one"], ["a"]), clip, dpu], s) is None


def _conv_model(transposed: bool, ic: int, group: int, oc_per_group: int) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, 0.1, (ic, oc_per_group, 2, 2) if transposed
                                                               else (oc_per_group * group, ic // group, 3, 3))
                                .astype(np.float32), "w")
    op = "ConvTranspose" if transposed else "Conv"
    attrs = dict(strides=[2, 2]) if transposed else dict(pads=[1, 1, 1, 1])
    node = helper.make_node(op, ["x", "w"], ["y"], name="conv", group=group, **attrs)
    return B.model([node], [B.vi("x", [1, ic, 8, 8])], [B.vi("y", None)], [w])


@pytest.mark.parametrize("transposed,ic,group,per_group,kind", [
    (False, 4, 4, 1, "depthwise_conv2d"),
    (False, 4, 4, 2, "depthwise_conv2d"),  # channel multiplier 2
    (False, 4, 2, 2, "conv2d"),  # grouped, not depthwise
    (True, 4, 4, 1, "depthwise_transposed_conv2d"),
    (True, 4, 2, 2, "transposed_conv2d"),  # the float passes called every grouped ConvTranspose depthwise
])
def test_checker_and_quantizer_name_convolutions_alike(transposed, ic, group, per_group, kind):
    model = _conv_model(transposed, ic, group, per_group)
    assert npuflow.check(model, DPU).node("conv").op_kind == kind
    assert op_kind(model.graph.node[0], GraphView(model.graph)) == kind


def _conv_clip(hi: float) -> onnx.ModelProto:
    conv, w = B.conv_node("conv", "x", "c", 4, 4)
    clip = helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")
    return B.model([conv, clip], [B.vi("x", X)], [B.vi("y", None)],
                   [w, B.const("lo", np.array(0, np.float32)), B.const("hi", np.array(hi, np.float32))])


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
@pytest.mark.parametrize("hi,fused", [(6.0, True), (6.000001, False)])
def test_relu6_is_fused_by_exact_bounds_in_check_and_quantize(target, hi, fused):
    """A Clip to [0, 6.000001] is no ReLU6: the checker judges it alone and the quantizer writes
    a quantize step on the convolution's output.  With the quantizer's old tolerance, cpu-int8
    (whose rules list no activations: ReLU/ReLU6 fuse by default) lost that step while the checker
    kept the clip separate; compile agrees with both."""
    model = _conv_clip(hi)
    report = npuflow.check(model, target)
    assert (report.node("clip").fused_into == "conv") == fused
    rng = np.random.default_rng(0)
    q = npuflow.quantize(model, [{"x": rng.normal(0, 1, X).astype(np.float32)} for _ in range(2)], target=target,
                         warn=False).model
    conv_output_quantized = any(n.input and n.input[0] == "c" and "Quantize" in n.op_type for n in q.graph.node)
    assert conv_output_quantized == (not fused)
    manifest = npuflow.compile(q, target).manifest
    on_cpu = {n for sg in manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}
    assert not [n.name for n in report.nodes if n.device == "NPU" and n.name in on_cpu]


_PATTERN_CONSTS = {"three": 3.0, "zero": 0.0, "six": 6.0, "sixth": 1 / 6, "three1": 3.1}
_PATTERNS = {
    # name: (nodes after conv "c" ending in "y", the checker's kind of the last node, op types the float passes leave)
    "hsig_div6": ([("Add", ["c", "three"], "a"), ("Clip", ["a", "zero", "six"], "r"), ("Div", ["r", "six"], "y")],
                  "hard_sigmoid", ["Conv", "HardSigmoid"]),
    "hswish_paddle": ([("Add", ["c", "three"], "a"), ("Clip", ["a", "zero", "six"], "r"), ("Mul", ["c", "r"], "m"),
                       ("Div", ["m", "six"], "y")], "hard_swish", ["Conv", "HardSwish"]),
    "hswish_keras": ([("Add", ["three", "c"], "a"), ("Clip", ["a", "zero", "six"], "r"), ("Mul", ["r", "sixth"], "h"),
                      ("Mul", ["c", "h"], "y")], "hard_swish", ["Conv", "HardSwish"]),
    "six_over_relu6": ([("Add", ["c", "three"], "a"), ("Clip", ["a", "zero", "six"], "r"), ("Div", ["six", "r"], "y")],
                       "div_const", ["Conv", "Add", "Clip", "Div"]),
    "plus_3_1": ([("Add", ["c", "three1"], "a"), ("Clip", ["a", "zero", "six"], "r"), ("Div", ["r", "six"], "y")],
                 "depthwise_conv2d", ["Conv", "Add", "Clip", "Div"]),  # a per-tensor scale: a 1x1 depthwise conv
}


@pytest.mark.parametrize("name", list(_PATTERNS))
def test_checker_and_float_passes_find_the_same_decomposed_activations(name):
    """One matcher (:func:`npuflow.activation_patterns.hard_activation`) for both: what the checker places
    as one activation is what the float passes write as one node, and neither takes ``6 / relu6(x + 3)``
    (the checker's own copy did: it never looked at which operand a Div divides by) or ``x + 3.1``."""
    spec, kind, left = _PATTERNS[name]
    # a Relu between: an Add of a constant right after the layer folds into its bias first (check too)
    conv, w = B.conv_node("conv", "x", "c0", 4, 4)
    nodes = [conv, helper.make_node("Relu", ["c0"], ["c"], name="relu"),
             *(helper.make_node(op, ins, [out], name=out) for op, ins, out in spec)]
    consts = [B.const(k, np.float32(v)) for k, v in _PATTERN_CONSTS.items()]
    model = B.model(nodes, [B.vi("x", X)], [B.vi("y", None)], [w, *consts])
    assert npuflow.check(model, DPU).node("y").op_kind == kind
    assert [n.op_type for n in fuse_activation_patterns(model).graph.node] == [left[0], "Relu", *left[1:]]


# --- no other op tables -------------------------------------------------------------------------

#: Modules whose op-name tables are not facts of the ops (a file format, a policy, a dispatch set of
#: code), each with the reason; every op fact lives in the registry.
NOT_OP_FACTS = {
    "check/qoperator.py": "the QOperator format: each QLinear op's float op and input positions (a format table)",
    "compiler/modify.py": "the node types an application may take over from a .npuf (a policy, not an op fact)",
    "quant/algorithms/block_ops.py": "the ops its torch runner implements (a dispatch set of code)",
}


def _op_table_assignments(path: Path) -> list[str]:
    """Assignments of a literal set/tuple/list (or a dict of constants) naming two or more
    registry ops: an op-name table.  Dicts from op names to functions (dispatch) are code."""
    names = set(ops.REGISTRY)

    def strings(node) -> list[str]:
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)):
            return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
        if isinstance(node, ast.Dict) and all(isinstance(v, (ast.Constant, ast.Tuple)) for v in node.values):
            return [k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        if isinstance(node, ast.Call):
            return [s for a in node.args for s in strings(a)]
        if isinstance(node, ast.BinOp):
            return strings(node.left) + strings(node.right)
        return []

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            if len([s for s in strings(node.value) if s in names]) >= 2:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_other_module_defines_op_name_tables():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        if rel == "operators.py" or rel.startswith("torch/") or rel in NOT_OP_FACTS:
            continue
        found += _op_table_assignments(path)
    assert not found, f"op-name tables outside npuflow/operators.py: {found}"
