"""``npuflow.Session`` given what a script writer has at hand (new-user round 14b, Python API).
Before: ``Session(quantized)`` (the QuantizedModel, compile forgotten), an ``onnx.ModelProto`` or
``None`` was ``TypeError: expected str, bytes or os.PathLike object`` from pathlib; a torch tensor
fed to ``run`` read "has dtype torch.float32, the model expects float32"."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import npuflow
from tests.fixture_models import mnist_cnn

rng = np.random.default_rng(0)
X = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(4)]


@pytest.fixture(scope="module")
def quantized() -> npuflow.QuantizedModel:
    return npuflow.quantize(mnist_cnn(), X, "cpu-int8")


@pytest.mark.parametrize("what", ["quantized", "proto", "none", "bytes"])
def test_a_session_of_something_not_compiled_is_a_coded_error(quantized, what):
    given = {"quantized": quantized, "proto": onnx.load(mnist_cnn()), "none": None,
             "bytes": mnist_cnn().read_bytes()}[what]
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.Session(given)
    assert err.value.code == "NPF_COMPILE_NOT_NPUF"
    assert type(given).__name__ in err.value.message and "npuflow.compile(" in err.value.message


def test_a_torch_tensor_fed_to_run_is_named_as_one(quantized):
    session = npuflow.Session(npuflow.compile(quantized, "cpu-int8"))
    with pytest.raises(npuflow.NpuflowError) as err:
        session.run({"input": torch.from_numpy(X[0])})
    assert err.value.code == "NPF_RUNTIME_INPUT_DTYPE"
    assert "torch.Tensor, not a numpy array" in err.value.message
    assert session.run({"input": X[0]})["logits"].shape == (1, 10)
