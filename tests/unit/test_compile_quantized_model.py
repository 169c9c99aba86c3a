"""``npuflow.compile`` takes the ``QuantizedModel`` that ``npuflow.quantize`` (and
``npuflow.torch.quantize``, docs/qat.md: "compiles like any QuantizedModel") returns.

Before: ``npuflow.compile(qm, target)`` raised ``TypeError: expected str, bytes or os.PathLike
object, not QuantizedModel`` from ``pathlib`` (a traceback); only ``qm.model`` compiled.
"""

from __future__ import annotations

import numpy as np

import npuflow
from npuflow.runtime import Session

from .quant_nets import samples, two_conv_net


def test_compile_takes_a_quantized_model(tmp_path):
    qm = npuflow.quantize(two_conv_net(), samples((1, 3, 6, 6), n=4), "DPUCZDX8G_ISA1_B4096")
    x = samples((1, 3, 6, 6), n=1, seed=7)[0]
    expected = Session(npuflow.compile(qm.model, "DPUCZDX8G_ISA1_B4096").save(tmp_path / "a.npuf")).run({"x": x})["y"]
    got = Session(npuflow.compile(qm, "DPUCZDX8G_ISA1_B4096").save(tmp_path / "b.npuf")).run({"x": x})["y"]
    np.testing.assert_array_equal(got, expected)
    frozen = npuflow.compile(qm, "DPUCZDX8G_ISA1_B4096", input_shapes={"x": [1, 3, 6, 6]})
    got = Session(frozen.save(tmp_path / "c.npuf")).run({"x": x})["y"]
    np.testing.assert_array_equal(got, expected)
