"""A fused run's dequantized output holds ``+0.0`` for a zero code, as the kernels' ``float32(q - zp) * scale``
(``fused_graph.dequantized``, issue 19): a rounding step leaves ``-0.0`` for a value that rounds up to 0, and
``-0.0 * scale`` kept that sign, so outputs equal to ``Session(fuse=False)`` by ``==`` differed in their bytes
(EfficientFormer-style net and MTCNN RNet on B4096)."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.unit.test_compiler_kernels import DPU, _x
from tests.unit.test_runtime_rows_gemm import _fully_connected


@pytest.mark.parametrize("rows", [[1], [4]])
def test_dequantized_outputs_are_the_kernels_bytes(rows):
    compiled = npuflow.compile(_fully_connected(rows, 48, 40, None, 11), DPU)
    fast, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    zeros = 0
    for seed in range(6):
        x = {"x": _x(rows + [48], seed, scale=1.0)}
        a, b = fast.run(x)["out"], ref.run(x)["out"]
        zeros += int(np.sum(b == 0))
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (np.signbit(a) & (a == 0)).sum()  # -0.0 before
    assert zeros >= 3
