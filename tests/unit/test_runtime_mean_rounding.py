"""A global average's requantisation as one rounding of one scaled sum (``fused_pool.rounded_mean``).

PP-OCR cls on the DPU has ten SE blocks; each pools a map to ``[1, C, 1, 1]`` and its codes were the
kernel's arithmetic written out: ``Mul`` by ``acc_scale``, ``Div`` by the count, then the half-up
quantize step by doubling (``Div``, ``Floor``, ``Mul``, ``Ceil``, ``Clip``), seven nodes whose cost is
ONNX Runtime's fixed per-node time (issue 19: cls at half ORT FP32's speed).  The sums are integers
of a known range, so a shorter form is tried on every one of them at load and written only where it
gives the kernel's code for each; these tests pin the node count on the real model, the bytes against
``Session(fuse=False)``, and the exhaustive check itself on the forms ONNX Runtime runs.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import fused_pool
from npuflow.runtime.epilogues import make_float_finish
from npuflow.runtime.fused_graph import Graph
from tests import fixture_models

SHAPE = [1, 3, 48, 192]


@pytest.fixture(scope="module")
def cls_b4096():
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, SHAPE).astype(np.float32)} for _ in range(4)]
    target = "DPUCZDX8G_ISA1_B4096"
    quantized = npuflow.quantize(str(fixture_models.ppocr_cls()), samples, target=target, input_shapes={"x": SHAPE})
    frames = samples + [{"x": np.full(SHAPE, v, np.float32)} for v in (-50.0, 0.0, 50.0)]  # pools at both ends
    return npuflow.compile(quantized.model, target), frames


def _after_sums(model: onnx.ModelProto) -> list[list[str]]:
    """Per ``ReduceSum``, the op types of the one-reader chain after it up to its ``Clip`` (or the
    first node that is not an elementwise step)."""
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    chains = []
    for n in model.graph.node:
        if n.op_type != "ReduceSum":
            continue
        chain, out = [], n.output[0]
        while len(readers.get(out, [])) == 1 and readers[out][0].op_type in ("Add", "Mul", "Div", "Floor", "Ceil",
                                                                            "Round", "Clip"):
            node = readers[out][0]
            chain.append(node.op_type)
            out = node.output[0]
            if node.op_type == "Clip":
                break
        chains.append(chain)
    return chains


def test_cls_se_pools_round_once_and_equal_the_kernels(cls_b4096, monkeypatch):
    compiled, frames = cls_b4096
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the plan built by this code, not one stored before
    fast, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    models = [fast._live()[0].steps[0].executor.parts[0].executor.single.model()[0]]
    chains = _after_sums(models[0])
    assert len(chains) == 10  # the ten SE blocks' pools
    # was Mul, Div, Div, Floor, Mul, Ceil, Clip each: now the half step, the scaling, Floor and the clamp
    assert all(c == ["Add", "Mul", "Floor", "Clip"] for c in chains), chains
    assert not any(n.op_type == "Ceil" for n in models[0].graph.node)
    for x in frames:
        a, b = fast.run(x), ref.run(x)
        for k in b:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), k


def _pool_op(acc_scale: float, scale: float, zp: int, x_zp: int, dtype: str, rounding: str) -> dict:
    return {"op": "avgpool", "inputs": ["x"], "outputs": ["y"], "blobs": {},
            "attrs": {"x_zp": x_zp, "kernel": [12, 24],
                      "epilogue": {"mode": "float", "acc_scale": acc_scale, "scale": scale, "zp": zp,
                                   "round": rounding, "dtype": dtype, "bits": 8, "signed": dtype == "int8"}}}


@pytest.mark.parametrize("acc_scale, scale, zp, x_zp, dtype, rounding, written", [
    (0.0625, 0.0078125, 0, 0, "uint8", "half_up", True),  # cls's SE pools: a tie every 36th sum, saturating
    (0.125, 0.015625, 0, 0, "uint8", "half_up", True),
    (0.03125, 0.0625, -3, -128, "int8", "half_up", True),  # signed codes, a shifted zero point
    (0.0625, 0.0078125, 0, 0, "uint8", "half_down", True),
    # ties to even into uint8's full range: ONNX Runtime's QuantizeLinear computes the step (bernoulli2's
    # SE pools), one node that writes the bytes the next kernel reads: left to it
    (0.0625, 0.0078125, 0, 0, "uint8", "half_even", False),
    # float scales: the kernel's three float32 roundings (product, quotient, quotient) are not one
    # product's for some sums, which the check finds: the long form stays
    (0.05, 0.07, 128, 128, "uint8", "half_up", False),
    # half away from zero on sums of both signs: float32(1/36) is above 1/36, so the products of the
    # ties land just beyond them, away from zero, and Round takes them there (checked, not assumed)
    (0.0625, 0.0078125, 0, 0, "int8", "std_round", True),
])
def test_rounded_mean_gives_the_kernels_code_for_every_sum(acc_scale, scale, zp, x_zp, dtype, rounding, written):
    count = 12 * 24
    op = _pool_op(acc_scale, scale, zp, x_zp, dtype, rounding)
    g = Graph({"x": {"dtype": dtype, "shape": [1, 1, 12, 24]}, "s": {"dtype": "float32", "shape": [-1]},
               "y": {"dtype": dtype, "shape": [1, 1, 1, 1]}})
    assert fused_pool.rounded_mean(g, op, "s", count) is written
    if not written:  # nothing written: the caller's long form (``fused._put_quantized``) follows
        assert g.nodes == [] and g.inits == [] and "y" not in g.names
        return
    assert len(g.nodes) <= 4
    lo_q, hi_q = nm.qrange(8, dtype == "int8")
    sums = np.arange((lo_q - x_zp) * count, (hi_q - x_zp) * count + 1).astype(np.float32)
    y, off = g.names["y"], g.offsets["y"]
    graph = helper.make_graph(g.nodes, "mean", [helper.make_tensor_value_info("s", TensorProto.FLOAT, [len(sums)])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [len(sums)])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"s": sums})[0]
    want = make_float_finish(op["attrs"]["epilogue"])((sums * np.float32(acc_scale)) / np.float32(count))
    assert np.array_equal(got.astype(np.int64) + off, want.astype(np.int64))
