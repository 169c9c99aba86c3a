"""Issue 19, peak memory of a load on cpu-int8 (fully connected layers with a multiplier per
output): no ``QGemm`` form is built for them, and a load imports no ``numpy.ma``.

Since 0602b83 a fully connected layer first had its ``QGemm`` form built (a transposed int16 copy
of its weights, their absolute values, the kernel's weight arrays) and only then was it asked
whether the form has one multiplier; a per-channel layer never does, so the form was thrown away
and the ``QLinearConv`` one built: PP-OCRv4 rec's 120x6625 head made 1.5 MiB more of the load's
peak that way, and the question itself, ``np.unique``, imported ``numpy.ma`` (0.5 MiB of modules).
The outputs do not change (docs/runtime-measurements.md, "Peak memory").
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.runtime import fused, fused_qgemm, fused_qlinear
from tests import fixture_models
from tests.compile_check import random_sample_npuf
from tests.unit.test_runtime_memory_shared import numpy_ma_before_and_after_load

SHAPE = [1, 1, 28, 28]


@pytest.fixture(scope="module")
def mnist_cpu_int8(tmp_path_factory):
    return random_sample_npuf(fixture_models.mnist_cnn(), "cpu-int8", "input", SHAPE, 4,
                              tmp_path_factory.mktemp("load") / "mnist_cpu_int8.npuf", low=0.0)


def test_a_multiplier_per_output_builds_no_qgemm_form(monkeypatch, mnist_cpu_int8):
    path, samples = mnist_cpu_int8
    forms = []
    real = fused_qlinear._kernel_form

    def counted(*args, **kwargs):
        forms.append(kwargs.get("weight_form"))
        return real(*args, **kwargs)

    monkeypatch.setattr(fused_qlinear, "_kernel_form", counted)
    monkeypatch.setattr(fused_qgemm, "qgemm_exact", lambda: True)
    s = npuflow.Session(path)
    kinds = [n.op_type for ex in s._executors if hasattr(ex, "plan") for it in ex.plan.items
             if isinstance(it, fused.FusedRun) for n in it.graph().nodes]
    assert "QGemm" not in kinds and kinds.count("QLinearConv") == 5, kinds
    # the five layers' QLinearConv forms (the first load), none with QGemm's weight form
    assert forms and fused_qgemm._gemm_weight_form not in forms, forms
    ref = npuflow.Session(path, fuse=False)
    for x in samples:
        a, b = s.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)


def test_a_cpu_int8_load_imports_no_numpy_ma(mnist_cpu_int8):
    assert numpy_ma_before_and_after_load(mnist_cpu_int8[0]) == [False, False]
