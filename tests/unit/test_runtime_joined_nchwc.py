"""A CPU part whose ``MaxPool`` ONNX Runtime's full level writes in its NCHWc layout joins (runtime/joined.py).

MTCNN's RNet/ONet on B4096: the DPU runs the convolutions, the CPU each ``PRelu -> MaxPool`` between them at
ONNX Runtime's basic level (power-of-two scales).  ``joined.level_free`` compared that part's kernels at the
full level with the basic level's, and the full level's ``NchwcTransformer`` writes the ``MaxPool`` of 48
channels as ``com.microsoft.nchwc.MaxPool`` between ``ReorderInput``/``ReorderOutput``: the part stayed a call
of its own (RNet: 3 ONNX Runtime calls a frame, ONet: 7).  A max selects one of its window's values in any
layout, so those kernels give the plain op's values (``operators.NCHWC_SAME_VALUES``) and the part joins.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import npuflow
from npuflow.runtime import joined
from tests import fixture_models
from tests.corpus import registry

TARGET = "DPUCZDX8G_ISA1_B4096"
ENTRY = registry.BY_NAME["pypi/mtcnn_rnet"]


@pytest.fixture(scope="module")
def rnet():
    path = ENTRY.make(fixture_models.CACHE)
    calibration = registry.calibration_for(ENTRY, path, 8)
    return npuflow.compile(npuflow.quantize(str(path), calibration, target=TARGET).model, TARGET), calibration


def test_rnet_prelu_maxpool_islands_join_and_equal_the_kernels(rnet, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the join's verdicts found here, not stored before
    compiled, calibration = rnet
    assert sum(not s.on_accelerator for s in compiled.subgraphs) >= 3
    session, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps  # one ONNX Runtime call a frame
    assert isinstance(step.executor, joined.Joined)
    rng = np.random.default_rng(1)
    for sample in calibration[:4]:
        (name, x), = sample.items()
        for feed in (x, (x * rng.uniform(0.5, 1.5) + rng.standard_normal(x.shape) * x.std()).astype(np.float32)):
            a, b = session.run({name: feed}), ref.run({name: feed})
            assert all(np.array_equal(a[k], b[k]) for k in b)


def test_nchwc_max_pool_counts_as_the_plain_one():
    nchwc = Counter({("com.microsoft.nchwc", "ReorderInput"): 1, ("com.microsoft.nchwc", "MaxPool"): 1,
                     ("com.microsoft.nchwc", "ReorderOutput"): 1, ("", "PRelu"): 1})
    assert joined.plain_layout(nchwc) == Counter({("", "MaxPool"): 1, ("", "PRelu"): 1})
    conv = Counter({("com.microsoft.nchwc", "Conv"): 1})  # arithmetic in another order: stays another kernel
    assert joined.plain_layout(conv) == conv
