"""onnx's own ``backend/test/data/light`` models (shipped in the onnx wheel; new-user round 12): their
largest conv and Gemm weights are ``ConstantOfShape`` outputs, so those layers run on the CPU, and on
cpu-int8 (``kind: cpu``: no transfer, compile lowers every op it can) check of the float model, check
of the quantized model and compile put every node on the same side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
from tests.unit.test_placement_agreement import _sides, compiled_devices

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"

#: model -> the nodes that disagreed before check followed compile on cpu-int8 (2026-12-06) and the
#: side all three now give them: a Concat of CPU and accelerator results (tail mover) was CPU / CPU /
#: ACC, the rest of the ACC ones CPU / ACC / ACC (float tail: their only reader, a CPU layer, is
#: quantized by a CPU target's quantizer); AlexNet's ReLUs after a Gemm with run-time weights were
#: ACC / CPU / CPU (check took the Gemm for a matmul, into which no activation fuses).
CASES = {
    "squeezenet": {"n60": "ACC"},
    "inception_v2": {"n453": "ACC", "n496": "ACC", "n506": "ACC"},
    "shufflenet": {"n200": "ACC"},
    "resnet50": {"n173": "ACC"},
    "bvlc_alexnet": {"n17": "CPU", "n20": "CPU"},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_light_model_placement_agrees_on_cpu_int8(name):
    model = onnx.load(LIGHT / f"light_{name}.onnx")
    inits = {i.name for i in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)
    calib = [{inp.name: rng.random(shape).astype(np.float32)} for _ in range(2)]
    float_sides = _sides(npuflow.check(model, "cpu-int8"))
    q = npuflow.quantize(model, calib, "cpu-int8", warn=False)
    quant_sides = _sides(npuflow.check(q.model, "cpu-int8"))
    compiled = compiled_devices(npuflow.compile(q.model, "cpu-int8"))
    common = [k for k in float_sides if k in quant_sides and k in compiled]
    assert set(CASES[name]) <= set(common)
    differ = [(k, float_sides[k], quant_sides[k], compiled[k]) for k in common
              if not float_sides[k] == quant_sides[k] == compiled[k]]
    assert differ == []
    assert {k: float_sides[k] for k in CASES[name]} == CASES[name]
