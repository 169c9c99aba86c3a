"""A concatenation with a constant part runs inside the fused run (``fused._concat``).

The corpus ViT block (``torch/vit_block-op13``, ``bench_runtime.py --cases CORPUS``) puts its class token, a
constant, before the patch tokens.  As a kernel that ``Concat`` cut the embedding's fused program in two
ONNX Runtime runs with numpy between them, and kept that step out of the joined run after it: two steps
and 0.60-0.66x ORT plain QDQ (issue 19).  Now one run per frame, outputs equal to the op-by-op kernels bit
for bit on both targets.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.runtime import fused
from tests import fixture_models
from tests.corpus import registry

ENTRY = registry.BY_NAME["torch/vit_block-op13"]


@pytest.fixture(scope="module")
def vit() -> tuple[str, list[dict]]:
    path = ENTRY.make(fixture_models.CACHE)
    return str(path), registry.calibration_for(ENTRY, path, 12)


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_class_token_concat_is_part_of_the_fused_run(vit, target, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the plan built here, not one stored before
    path, samples = vit
    compiled = npuflow.compile(npuflow.quantize(path, samples[:8], target=target).model, target)
    consts = [op for e in npuflow.Session(compiled, fuse=False)._executors if hasattr(e, "_ops")
              for op in e._ops if op["op"] == "concat" and any("const" in p for p in op["attrs"]["parts"])]
    assert len(consts) == 1, consts  # the class token
    session, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for e in session._executors:
        if hasattr(e, "plan"):
            assert all(isinstance(item, fused.FusedRun) for item in e.plan.items), e.plan.reasons
    # the embedding joins the run after it (B4096: with its attention MatMul's basic-level CPU part,
    # joined.level_free): one ONNX Runtime call per frame
    assert len(session._live()[0].steps) == 1
    for x in samples[8:]:
        a, b = session.run(x), ref.run(x)
        for k in b:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
