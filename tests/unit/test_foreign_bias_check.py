"""``check`` judges a model quantized by another tool as ``compile`` legalises it (newuser_flows6,
not-fixed item 2): NNCF leaves a float bias on its Conv/Gemm, which ``compile`` turns into an int32
bias at ``sx * sw`` (``compiler/foreign.py``) and lowers; check said "constant 'b1' is not a
quantized initializer" and put the layers, their Relus and Q/DQ steps on the CPU.  Both now ask
:func:`npuflow.check.lowerable.float_bias_limit`."""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.check.report import CPU as CPU_SIDE
from npuflow.check.report import NPU
from npuflow.compiler import foreign
from npuflow.targets import load_target
from tests.compile_check import integer_tensors
from tests.qdq_builder import Builder, ort_values
from tests.unit.test_foreign_legalize import DPU, RNG, _lowered_convs, _nncf_like, _x
from tests.unit.test_placement_agreement import compiled_devices

LAYERS = ("conv1", "relu1", "pool", "conv2")


def _check_sides(model, target: str) -> dict[str, str]:
    return {n.name: ("CPU" if n.device == CPU_SIDE else "ACC") for n in npuflow.check(model, target).nodes}


@pytest.mark.parametrize("target", ["cpu-int8", "bernoulli2"])
def test_check_places_layers_with_float_biases_where_compile_lowers_them(target):
    model = _nncf_like()
    devices = {n.name: n.device for n in npuflow.check(model, target).nodes}
    assert all(devices[k] == NPU for k in LAYERS), devices
    compiled = npuflow.compile(model, target)
    assert _lowered_convs(compiled) == 2
    compiled_sides = compiled_devices(compiled)
    checked = _check_sides(model, target)
    assert {k: v for k, v in checked.items() if k in compiled_sides and compiled_sides[k] != v} == {}
    legal = copy.deepcopy(model)
    notes = " ".join(foreign.legalize(legal, load_target(target)))
    assert "float bias of 2 Conv/Gemm" in notes
    feeds = {"x": _x([1, 3, 12, 12], 3)}
    with tempfile.TemporaryDirectory() as d:
        npuflow.Session(compiled).run(feeds, dump_dir=d)
        index = json.loads((Path(d) / "index.json").read_text())
        have = {o for n in legal.graph.node for o in n.output}
        names = [n for n in integer_tensors(compiled) if n in have]
        assert "conv2_q" in names
        ref = ort_values(legal, feeds, names)
        for n in names:  # the .npuf equals ORT on the legalised model, code for code
            np.testing.assert_array_equal(np.load(Path(d) / index[n]), ref[n], err_msg=n)


def test_a_float_bias_of_an_unquantized_output_says_why_on_both_sides():
    """A Gemm whose output is a float graph output (NNCF's classifier head): compile leaves the
    bias float and the Gemm on the CPU, and check says the same reason, not "not a quantized
    initializer"."""
    b = Builder("half_even")
    x = b.dq(b.input("x", [1, 8], 0.05))
    w = b.weight("w", RNG.normal(0, 0.3, (8, 4)).astype(np.float32), 0.004)
    y = b.node("Gemm", [x, w, b.const("bias", RNG.normal(0, 0.2, 4).astype(np.float32))], "fc")
    b.float_output(y)
    model = b.model()
    report = npuflow.check(model, "cpu-int8")
    fc = next(n for n in report.nodes if n.name == "fc")
    assert fc.device == CPU_SIDE
    reason = " ".join(fc.reasons)
    assert "is not quantized, so its float bias 'bias' stays float" in reason
    assert "not a quantized initializer" not in reason


def test_b4096_check_places_the_layers_and_says_compile_refuses_the_float_scales(cli, tmp_path):
    """On a power-of-two target the placement is where the nodes would run; check then says, with
    compile's own test and message, that compile refuses the model's float scales."""
    model = _nncf_like()
    devices = {n.name: n.device for n in npuflow.check(model, DPU).nodes}
    assert all(devices[k] == NPU for k in LAYERS), devices
    said = check_announces_compile_refusal(model, cli, tmp_path)
    assert "compile will refuse this model" in said


def check_announces_compile_refusal(model: onnx.ModelProto, cli, tmp_path) -> str:
    """Compile refuses ``model`` on B4096 with NPF_COMPILE_SCALES_UNSUPPORTED and ``npuflow check``
    (exit status 0) prints that code with compile's own message; what check printed, one line."""
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.compile(model, DPU)
    assert err.value.code == "NPF_COMPILE_SCALES_UNSUPPORTED"
    src = tmp_path / "refused.onnx"
    onnx.save(model, src)
    r = cli("check", str(src), "-t", DPU, "-o", str(tmp_path / "inspect"))
    assert r.returncode == 0, r.stderr
    said = " ".join(r.stderr.split())
    assert "NPF_COMPILE_SCALES_UNSUPPORTED" in said and " ".join(err.value.message.split()) in said
    return said
