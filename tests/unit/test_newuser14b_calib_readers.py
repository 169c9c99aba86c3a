"""Calibration data as a script writer coming from ONNX Runtime, Vitis AI or PyTorch brings it
(new-user round 14b, Python API).  Before: a ``CalibrationDataReader`` written from ONNX Runtime's
documentation (``get_next`` only) was ``NPF_QUANT_CALIB_SOURCE``; a torch ``DataLoader`` over a
``TensorDataset`` (batches ``[x]``) was refused as "1 samples stacked"; one over an
``(image, label)`` dataset was numpy's uncoded ``ValueError: inhomogeneous shape``, one with
``batch_size=4`` was told to pass ``list(x[:, None])`` without a word of the batch size; a tensor
that requires grad was torch's uncoded ``RuntimeError``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

import npuflow
from npuflow.quant.data import InputSpec, check_sample
from tests.fixture_models import mnist_cnn

rng = np.random.default_rng(0)
X = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(6)]
SPEC = [InputSpec("input", np.dtype(np.float32), (1, 1, 28, 28))]


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return onnx.load(mnist_cnn())


@pytest.fixture(scope="module")
def reference(model) -> onnx.ModelProto:
    return npuflow.quantize(model, X, "cpu-int8").model


class GetNextReader:
    """ONNX Runtime's documented reader: ``get_next`` returns a feed dict, then None."""

    def __init__(self, rewind: bool) -> None:
        self.passes = 0
        if rewind:
            self.rewind = self._rewind
        self._it = iter([{"input": x} for x in X])

    def get_next(self):
        return next(self._it, None)

    def _rewind(self):
        self.passes += 1
        self._it = iter([{"input": x} for x in X])


@pytest.mark.parametrize("rewind", [False, True])
def test_a_get_next_reader_calibrates_as_the_list(model, reference, rewind):
    reader = GetNextReader(rewind)
    got = npuflow.quantize(model, reader, "cpu-int8").model
    assert got.SerializeToString() == reference.SerializeToString()
    assert (reader.passes > 0) == rewind


def test_a_tensor_dataset_loader_calibrates_as_the_list(model, reference):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(np.concatenate(X))))
    assert next(iter(loader))[0].shape == (1, 1, 28, 28)  # batches are [x]
    got = npuflow.quantize(model, loader, "cpu-int8").model
    assert got.SerializeToString() == reference.SerializeToString()


def test_image_label_pairs_are_a_coded_error_naming_the_labels():
    x, label = torch.from_numpy(X[0]), torch.tensor([3])
    with pytest.raises(npuflow.NpuflowError) as err:
        check_sample([x, label], SPEC, 0)
    assert err.value.code == "NPF_QUANT_CALIB_MISMATCH"
    assert "2 arrays given" in err.value.message and "label" in err.value.message


def test_a_tensor_that_requires_grad_is_detached():
    x = torch.from_numpy(X[0].copy()).requires_grad_()
    np.testing.assert_array_equal(check_sample(x, SPEC, 0)["input"], X[0])
    np.testing.assert_array_equal(check_sample({"input": x}, SPEC, 0)["input"], X[0])


def test_ragged_nested_lists_are_a_coded_error():
    with pytest.raises(npuflow.NpuflowError) as err:
        check_sample({"input": [[0.0, 1.0], [2.0]]}, SPEC, 4)
    assert err.value.code == "NPF_QUANT_CALIB_MISMATCH"
    assert "sample 4" in str(err.value) and "not one array" in err.value.message


def test_a_loader_batch_of_several_samples_names_the_batch_size(model):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(np.concatenate(X))),
                                         batch_size=4)
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.quantize(model, loader, "cpu-int8")
    assert err.value.code == "NPF_QUANT_CALIB_MISMATCH"
    assert "4 samples stacked in one array?" in err.value.message and "DataLoader: batch_size=1" in err.value.message
