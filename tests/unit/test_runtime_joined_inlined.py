"""CPU subgraphs of power-of-two targets join the fused runs beside them (runtime/joined.py, ``_part``).

On the DPU targets a CPU subgraph's quantize steps round half up: the quantizer writes each as a call of a
local function (``ai.npuflow.Quantize_half_up_int8``), which ``joined._plain`` refused, so every LayerNorm
island between two accelerator programs was a call of its own (EfficientFormer-style net on B4096: 21 ONNX
Runtime calls a frame, EdgeNeXt-style: 15).  ONNX Runtime inlines such functions when it loads the part, so
the part is joined with them inlined, where its kernels are the same at the full level as at its own basic one.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.runtime import joined
from tests.unit.test_runtime_joined_round_trip import compile_edgenext_like

TARGET = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return compile_edgenext_like(tmp_path_factory, TARGET)


def test_half_up_cpu_islands_join_and_equal_the_kernels(compiled, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the join's verdicts found here, not stored before
    cpu = [s for s in compiled.subgraphs if not s.on_accelerator]
    assert len(cpu) >= 3
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    steps = session._live()[0].steps
    assert len(steps) <= 2 < len(compiled.subgraphs)
    assert any(isinstance(s.executor, joined.Joined) and len(s.indices) >= 5 for s in steps)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
        assert np.array_equal(session.run(x)["y"], ref.run(x)["y"])
