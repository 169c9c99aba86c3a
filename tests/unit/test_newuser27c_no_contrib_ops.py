"""An ONNX Runtime built without its contrib ops (``--disable_contrib_ops``: no ``com.microsoft`` domain)
must not crash a Session (newuser_flows27 brief, item 3): the fused runs write a leaky-ReLU table as
``com.microsoft.QLinearLeakyRelu`` once a probe session proves it exact, and that probe's refusal
(``InvalidGraph``) escaped ``Session(...)`` as ONNX Runtime's own exception.  Now a refused probe means
"not this form": the table stays a table, and any other fused form whose probe ONNX Runtime refuses
runs as its kernel (a warning); outputs equal the kernels' (``fuse=False``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from npuflow.runtime import fused_qlinear, fused_tables

REFUSED = ort.capi.onnxruntime_pybind11_state.InvalidGraph


def _refuse(*args, **kwargs):
    raise REFUSED("[ONNXRuntimeError] : 10 : INVALID_GRAPH : No Op registered for QLinearLeakyRelu with domain_version of 1")


def test_a_refused_lookup_probe_is_no_form(monkeypatch):
    monkeypatch.setattr(fused_tables.ort_kernels, "probe_session", _refuse)
    monkeypatch.setattr(fused_qlinear, "probe_session", _refuse)
    table = np.arange(256, dtype=np.int64).tobytes()
    assert fused_tables._float_form_matches.__wrapped__(0.0625, 128, 0.0625, 128, table, ("QLinearLeakyRelu", 0.2, None)) is False
    assert fused_qlinear._lookup_kernel_gives("QLinearLeakyRelu", {"alpha": 1.0}, 0.0625, 128, 0.0625, 128, table) is False


_SCRIPT = r'''
import json, sys, warnings
import numpy as np, onnx, onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

class NoContrib(ort.InferenceSession):
    """ONNX Runtime as built with --disable_contrib_ops: a graph with a com.microsoft node is refused."""
    def __init__(self, model, *args, **kwargs):
        proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(model, load_external_data=False)
        if any(n.domain == "com.microsoft" for n in proto.graph.node):
            raise ort.capi.onnxruntime_pybind11_state.InvalidGraph("No Op registered for com.microsoft ops")
        super().__init__(model, *args, **kwargs)

ort.InferenceSession = NoContrib
import npuflow
from npuflow.runtime import fused_run

rng = np.random.default_rng(0)
w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
w2 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32), "w2")
nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("LeakyRelu", ["c"], ["l"], name="leaky", alpha=0.2),
         helper.make_node("Conv", ["l", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w, w2])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
samples = [{"x": rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
q = npuflow.quantize(m, samples, target="cpu-int8", warn=False)
c = npuflow.compile(q, "cpu-int8")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    s = npuflow.Session(c, threads=1)
    ref = npuflow.Session(c, threads=1, fuse=False)
runs = [it for ex in s._executors if hasattr(ex, "plan") for it in ex.plan.items if isinstance(it, fused_run.FusedRun)]
ops = [n.op_type for r in runs for n in r.graph().nodes]
x = samples[0]
print(json.dumps({"equal": bool(np.array_equal(s.run(x)["y"], ref.run(x)["y"])), "ops": ops}))
'''


def test_a_session_on_an_onnx_runtime_without_contrib_ops_runs(tmp_path):
    env = {**os.environ, "NPUFLOW_ENABLE_CACHE": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["equal"] and "QLinearLeakyRelu" not in got["ops"], got
