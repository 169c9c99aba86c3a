"""A CPU subgraph of large constants stays its own session beside a joined stretch (runtime/joined.py,
``APART_BYTES``; issue 19, peak memory).

ONNX Runtime's creation of a session holds its constants about three times at once (npuflow's arrays,
its copy, their packed forms), so a joined session's creation holds every part's together: PP-OCRv4 rec
on B4096 joined whole (30 steps; its CTC head's float MatMul alone 3.2 MB) peaked at 34.8 MiB over a
baseline process against ONNX Runtime's 31.7 on the plain QDQ model, and 29.2 with the head apart at the
same speed (benchmarks/results/runtime_mem_s35.md).  The check here is the load's structure and its
creations' constants, which do not depend on the machine's load as a peak does.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from benchmarks import datasets as D
from npuflow.runtime import joined
from npuflow.runtime.executors import OnnxExecutor
from tests import fixture_models

TARGET = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def rec():
    samples = D.ocr_lines("calib", 3)[0]
    quantized = npuflow.quantize(str(fixture_models.ppocr_rec()), samples[:2], target=TARGET,
                                 input_shapes={"x": [1, 3, 48, 320]})
    return npuflow.compile(quantized.model, TARGET), samples[2]


def test_rec_ctc_head_runs_apart_and_no_joined_creation_holds_its_weight(rec, monkeypatch):
    compiled, sample = rec
    opened: list[int] = []
    real = joined.open_session

    def counting(model, **kw):
        opened.append(max((a.nbytes for a in (kw.get("external") or {}).values()), default=0))
        return real(model, **kw)

    monkeypatch.setattr(joined, "open_session", counting)
    fast = npuflow.Session(compiled, threads=1)
    steps = fast._programs[0].steps
    apart = [s for s in steps if isinstance(s.executor, OnnxExecutor) and s.executor.constant_bytes >= joined.APART_BYTES]
    assert len(apart) == 1, [type(s.executor).__name__ for s in steps]  # the CTC head
    assert [type(s.executor) for s in steps] == [joined.Joined, OnnxExecutor], [s.indices for s in steps]
    assert opened and max(opened) < 1 << 20  # the head's 3.2 MB weight is in no joined creation
    got, want = fast.run(sample), npuflow.Session(compiled, fuse=False).run(sample)
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
