"""A bernoulli2 fix layer's output left in its kernel's channel order (``fused_permute``): the
readers' weights permuted at load where every reader absorbs the order (a table, a depthwise
convolution, a dense one), the channels put back in order where one does not (a run's output, a
``Concat``).  Codes equal the op kernels' (``kernels.KERNELS``) either way."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.runtime import fused
from npuflow.runtime.kernels import KERNELS
from tests.unit.test_runtime_fixed_fixes import CIN, EP, _every, _inputs_for, _weights

#: depthwise and dense layers after the fix layer: multipliers 0.5 and 0.25, exact in float32
EXACT = {**EP, "multiplier": [1 << 30] * 3, "shift": [31, 32, 31]}


def _conv(name: str, x: str, y: str, shape_in: list[int], shape_out: list[int], ep: dict, group: int = 1) -> dict:
    return {"op": "conv", "name": name, "inputs": [x], "outputs": [y], "blobs": {"w": f"{name}.w", "b": f"{name}.b"},
            "attrs": {"in_shape": shape_in, "out_shape": shape_out, "pads": [0, 0, 0, 0], "strides": [1, 1],
                      "dilations": [1, 1], "group": group, "x_zp": 0, "lshift": 0, "in_dtype": "int8", "k_chunk": 1024,
                      "epilogue": {**ep, "multiplier": ep["multiplier"][:shape_out[1]],
                                   "shift": ep["shift"][:shape_out[1]]}}}


def _program(tail: str, n: int) -> tuple[dict, dict, dict]:
    """(sg, tensors, blobs): a fix layer (channel 0 fixed: the kernel writes channel 1 first) whose
    output ``y`` a table reads, then ``tail``: ``"absorbed"`` a depthwise and a dense convolution,
    ``"output"`` ``y`` an output of the program too, ``"concat"`` a ``Concat`` of the table's output
    and ``y``."""
    two, three = [1, 2, 1, n], [1, 3, 1, n]
    tensors = {t: {"shape": s, "dtype": "int8"} for t, s in
               (("x", [1, CIN, 1, n]), ("y", two), ("h", two), ("d", two), ("z", three), ("c", [1, 4, 1, n]))}
    table = np.clip(np.arange(-128, 128) // 3 + 5, -128, 127).astype(np.int8)
    blobs = {"fix.w": _weights().astype(np.int8), "fix.b": np.zeros(2, np.int32), "lut.table": table,
             "dw.w": np.array([3, -2], np.int8).reshape(2, 1, 1, 1), "dw.b": np.array([1, -4], np.int32),
             "pw.w": np.array([[1, 2], [3, -1], [0, 5]], np.int8).reshape(3, 2, 1, 1),
             "pw.b": np.array([0, 7, -3], np.int32)}
    ops = [_conv("fix", "x", "y", [1, CIN, 1, n], two, EP),
           {"op": "lut", "name": "lut", "inputs": ["y"], "outputs": ["h"], "blobs": {"table": "lut.table"},
            "attrs": {"qmin": -128}}]
    outputs = ["z"]
    if tail == "concat":
        ops.append({"op": "concat", "name": "cat", "inputs": ["h", "y"], "outputs": ["c"], "blobs": {},
                    "attrs": {"axis": 1, "parts": [{"input": 0}, {"input": 1}], "out_dtype": "int8"}})
        outputs = ["c"]
    else:
        ops += [_conv("dw", "h", "d", two, two, EXACT, group=2), _conv("pw", "d", "z", two, three, EXACT)]
        outputs = ["z", "y"] if tail == "output" else ["z"]
    return {"ops": ops, "outputs": outputs}, tensors, blobs


def _reference(sg: dict, blobs: dict, x: np.ndarray) -> dict:
    """Each op's kernel in turn."""
    env = {"x": x}
    for op in sg["ops"]:
        kernel = KERNELS[op["op"]](op["attrs"], {role: blobs[name] for role, name in op["blobs"].items()})
        env.update(zip(op["outputs"], kernel([env[t] for t in op["inputs"]])))
    return env


@pytest.mark.parametrize("tail, permuted", [("absorbed", True), ("output", True), ("concat", False)])
def test_fix_layer_order_absorbed_by_readers_or_put_back(monkeypatch, tail, permuted):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    acc = _every()[::211]
    acc = acc[(acc >= -128 * 27 * (CIN - 1)) & (acc <= 127 * 27 * (CIN - 1))]
    x = _inputs_for(acc)
    sg, tensors, blobs = _program(tail, len(acc))
    plan = fused.plan(sg, tensors, blobs.__getitem__)
    (run,) = plan.items
    graph = run.graph()
    assert ("y" in graph.perm) is permuted
    kinds = [node.op_type for node in run.model()[0].graph.node]
    assert kinds.count("QLinearConv") == (3 if tail != "concat" else 1) and "Max" in kinds and "Min" in kinds, kinds
    # absorbed: no channel Gather at all; a run's output: put back in order by one Gather
    assert kinds.count("Gather") == {"absorbed": 0, "output": 1, "concat": 0}[tail], kinds
    got, want = run.run({"x": x}), _reference(sg, blobs, x)
    for t in sg["outputs"]:
        assert np.array_equal(got[t], want[t]), t
