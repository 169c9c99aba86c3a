"""``check`` and ``compile`` agree on what fuses between a layer and its quantize step.

Both ask :func:`npuflow.check.lowerable.chain_to_quantize` (issue 16's corpus found them apart on
models quantized by other tools): a float op after a layer belongs to its epilogue only when it
reads the layer's result and float scalars (NNCF's float bias ``Add`` after a ``MatMul``, YOLOv8's
anchor ``Sub`` after a ``Slice`` are not), and an activation fed by another activation is lowered
inside that one's lookup table, so it runs where that one runs.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.qdq_builder import Builder, ort_values

rng = np.random.default_rng(0)


def _on_cpu_after_compile(model, target: str) -> set[str]:
    manifest = npuflow.compile(model, target).manifest
    return {n for sg in manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}


def _agree(model, target: str, names: list[str]) -> dict[str, str]:
    """The checker's device per node, asserting compile runs the CPU ones on the CPU and lowers
    the accelerator ones."""
    report = npuflow.check(model, target)
    on_cpu = _on_cpu_after_compile(model, target)
    devices = {}
    for name in names:
        devices[name] = report.node(name).device
        assert (name in on_cpu) == (devices[name] == "CPU"), (name, devices[name], report.node(name).reasons)
    return devices


def _matmul_float_bias() -> object:
    """``DQ -> MatMul(W) -> Add(float vector) -> Q``, as NNCF leaves a linear layer's bias."""
    b = Builder(round_mode="half_even")
    x = b.dq(b.input("x", [1, 4, 8], 0.05))
    w = b.weight("w", rng.normal(0, 0.3, (8, 6)).astype(np.float32), 0.01)
    mm = b.node("MatMul", [x, w], "mm")
    add = b.node("Add", [mm, b.const("bias", rng.normal(0, 0.1, 6).astype(np.float32))], "bias_add")
    b.output(b.quantize(add, 0.05))
    return b.model()


def _slice_then_anchor_sub() -> object:
    """``DQ -> Slice -> Sub(constant tensor) -> Q`` (YOLOv8's box decoding after ORT's QOperator)."""
    b = Builder(round_mode="half_even")
    x = b.dq(b.input("x", [1, 8, 16], 0.1))
    sl = b.node("Slice", [x, b.const("st", np.array([0])), b.const("en", np.array([4])),
                          b.const("ax", np.array([1]))], "slice")
    sub = b.node("Sub", [b.const("anchors", rng.normal(0, 1, (1, 4, 16)).astype(np.float32)), sl], "anchor_sub")
    b.output(b.quantize(sub, 0.1))
    return b.model()


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_a_float_vector_after_a_layer_is_not_its_epilogue(target):
    devices = _agree(_matmul_float_bias(), target, ["mm"])
    assert devices["mm"] == "CPU"
    reasons = npuflow.check(_matmul_float_bias(), target).node("mm").reasons
    assert any("does not reach a single quantize step" in r for r in reasons), reasons


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_data_movement_before_tensor_arithmetic_stays_with_it(target):
    devices = _agree(_slice_then_anchor_sub(), target, ["slice"])
    assert devices["slice"] == "CPU"


def test_an_activation_fed_by_a_cpu_activation_runs_on_the_cpu():
    """``DQ -> Mul(scalar) -> Sigmoid -> Q``: the compiler lowers the Sigmoid only inside the Mul's
    lookup table (the checker reports it fused into the Mul); on bernoulli2 a Mul by a constant on
    a rank-5 tensor has no BPU implementation, so both run on the CPU (on a rank-3 one, NNCF PP-OCRv4
    rec's case, it is a 1x1 depthwise layer on tokens since 93abef5)."""
    b = Builder(round_mode="half_even")
    x = b.dq(b.input("x", [1, 2, 2, 4, 16], 0.05))
    scaled = b.node("Mul", [x, b.const("c_k", np.float32(1.702))], "scale")
    sig = b.node("Sigmoid", [scaled], "sig")
    b.output(b.quantize(sig, 1 / 256))
    model = b.model()
    devices = _agree(model, "bernoulli2", ["scale", "sig"])
    assert devices == {"scale": "CPU", "sig": "CPU"}
    sig_reasons = npuflow.check(model, "bernoulli2").node("sig").reasons
    assert sig_reasons == ["fused into scale, which runs on the CPU"], sig_reasons


def test_a_scalar_chain_still_fuses():
    """The stricter rule keeps what fused before: ``MatMul -> Mul(float scalar) -> Q`` lowers whole."""
    b = Builder(round_mode="half_even")
    x = b.dq(b.input("x", [1, 4, 8], 0.05))
    w = b.weight("w", rng.normal(0, 0.3, (8, 6)).astype(np.float32), 0.01)
    mm = b.node("MatMul", [x, w], "mm")
    half = b.node("Mul", [mm, b.const("c_half", np.float32(0.5))], "half")
    b.output(b.quantize(half, 0.05))
    assert _agree(b.model(), "cpu-int8", ["mm"]) == {"mm": "NPU"}


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_a_chain_with_its_constant_first_compiles_and_runs(target, tmp_path):
    """``MatMul -> Mul(1.702, y) -> Q`` (NNCF PP-OCRv4 rec writes the scalar first): the fused float
    epilogue is a valid ``.npuf`` (the manifest schema refused it) and runs equal to its float form."""
    b = Builder(round_mode="half_even" if target == "cpu-int8" else "half_up")
    x = b.dq(b.input("x", [1, 4, 8], 2.0 ** -4))
    w = b.weight("w", rng.normal(0, 0.3, (8, 6)).astype(np.float32), 2.0 ** -6)
    mm = b.node("MatMul", [x, w], "mm")
    scaled = b.node("Mul", [b.const("c_k", np.float32(1.702)), mm], "scaled")
    b.output(b.quantize(scaled, 2.0 ** -4))
    model = b.model()
    compiled = npuflow.compile(model, target)
    assert any(sg["engine"] == "integer" for sg in compiled.manifest["subgraphs"])
    path = compiled.save(tmp_path / "m.npuf")
    feed = {"x": rng.normal(0, 0.5, (1, 4, 8)).astype(np.float32)}
    got = npuflow.Session(str(path)).run(feed)
    want = ort_values(model, feed, list(got))
    for name, value in got.items():  # one output step 2^-4: bit-exact on the DPU, 1 LSB on float scales
        np.testing.assert_allclose(value, want[name], rtol=0, atol=0 if target != "cpu-int8" else 2.0 ** -4)
