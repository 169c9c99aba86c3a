"""Issue 19, peak memory of PP-OCR cls on B4096: equal constants of a fused run are one
initialiser, and a load imports no ``numpy.ma``.

PP-OCR cls's hard-swish layers of equal scales have byte-equal accumulator tables; each was its own
external initialiser, which ONNX Runtime copied and kept (27 % of the fused run's constant bytes).
``numpy.unique``, used once per table to see whether a convolution has one scale, imports
``numpy.ma`` (0.5 MiB of modules).  The outputs do not change (docs/compiler-runtime.md, "Peak
memory").
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npuflow
from npuflow.runtime import fused_graph, fused_run
from tests import fixture_models
from tests.compile_check import random_sample_npuf

ROOT = Path(__file__).resolve().parents[2]


def test_equal_constants_are_one_initialiser():
    g = fused_graph.Graph({})
    table = np.arange(2048, dtype=np.float32)
    a = g.const(table)
    assert g.const(table.copy()) == a  # equal bytes, dtype and shape: the same initialiser
    assert g.const(table, np.int32) != a  # another type
    assert g.const(table.reshape(2, 1024)) != a  # another shape
    assert g.const(table + 1) != a  # other bytes
    small = np.zeros(4, np.float32)  # below EXTERNAL_BYTES: in the protobuf, not shared
    assert g.const(small) != g.const(small)
    assert len(g.arrays) == 4
    assert sum(t.name == a for t in g.inits) == 1


def test_a_rolled_back_constant_is_not_reused():
    g = fused_graph.Graph({})
    kept = g.const(np.ones(2048, np.float32))
    mark = g.mark()
    dropped = g.const(np.full(2048, 2, np.float32))
    g.rollback(mark)
    # the name ``dropped`` had is issued again for another constant
    other = g.const(np.full(2048, 3, np.float32))
    assert other == dropped and np.all(g.arrays[other] == 3)
    again = g.const(np.full(2048, 2, np.float32))  # not the rolled-back record, which now names ``other``
    assert again not in (kept, other) and np.all(g.arrays[again] == 2)
    assert g.const(np.ones(2048, np.float32)) == kept


@pytest.fixture(scope="module")
def cls_b4096(tmp_path_factory):
    return random_sample_npuf(fixture_models.ppocr_cls(), "DPUCZDX8G_ISA1_B4096", "x", [1, 3, 48, 192], 4,
                              tmp_path_factory.mktemp("cls") / "cls.npuf")


def test_pp_ocr_cls_fused_run_holds_each_table_once(monkeypatch, cls_b4096):
    path, samples = cls_b4096
    opened: list[tuple] = []
    real_open = fused_run.open_session

    def opening(model, **kwargs):
        opened.append((model, kwargs["external"]))
        return real_open(model, **kwargs)

    monkeypatch.setattr(fused_run, "open_session", opening)
    s = npuflow.Session(path)
    monkeypatch.undo()
    assert opened
    shared = 0
    for model, external in opened:
        digests = [(a.dtype.str, a.shape, hashlib.sha256(a.tobytes()).digest()) for a in external.values()]
        assert len(set(digests)) == len(digests), "byte-equal external constants"
        reads = [n.input[0] for n in model.graph.node if n.op_type == "GatherElements" and n.input[0] in external]
        shared += len(reads) - len(set(reads))
    assert shared > 0, "PP-OCR cls's equal hard-swish tables are read by several lookups"
    ref = npuflow.Session(path, fuse=False)
    for x in samples[:2]:
        a, b = s.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)


def numpy_ma_before_and_after_load(path) -> list[bool]:
    """Whether ``numpy.ma`` (0.5 MiB) is imported before and after opening a Session of ``path``,
    in a fresh process that imports the same libraries first."""
    code = (
        "import json, sys\n"
        "import numpy, onnx, onnxruntime, npuflow, npuflow.runtime\n"
        "before = 'numpy.ma' in sys.modules\n"
        f"s = npuflow.Session({str(path)!r})\n"
        "print(json.dumps([before, 'numpy.ma' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_load_imports_no_numpy_ma(cls_b4096):
    assert numpy_ma_before_and_after_load(cls_b4096[0]) == [False, False]
