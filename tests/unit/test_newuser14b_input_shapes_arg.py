"""The ``input_shapes`` argument of ``npuflow.check`` / ``npuflow.quantize`` as a script writer
types it (new-user round 14b, Python API).  Before: ``[1, 1, 28, 28]`` without the input name, a
float or ``None`` dimension was a TypeError from inside the loader; ``"1x1x28x28"`` (the CLI's
form) was read character by character ("rank 9"); a ``-1`` or ``0`` dimension was taken as a size
and the check reported a placement for it."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.fixture_models import mnist_cnn


@pytest.mark.parametrize("shapes", [[1, 1, 28, 28], {"input": [1, 1, 28.0, 28]}, {"input": [None, 1, 28, 28]},
                                    {"input": [-1, 1, 28, 28]}, {"input": [0, 1, 28, 28]}, {"input": "1x1xx"}])
def test_bad_input_shapes_are_a_coded_error(shapes):
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.check(mnist_cnn(), "cpu-int8", shapes)
    assert err.value.code == "NPF_MODEL_BAD_INPUT_SHAPE"


def test_quantize_refuses_input_shapes_without_names():
    samples = [np.zeros((1, 1, 28, 28), np.float32)]
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.quantize(mnist_cnn(), samples, "cpu-int8", input_shapes=[1, 1, 28, 28])
    assert err.value.code == "NPF_MODEL_BAD_INPUT_SHAPE" and "dict from input name" in err.value.message


@pytest.mark.parametrize("dims", ["1x1x28x28", (1, 1, 28, 28), np.array([1, 1, 28, 28])])
def test_the_cli_string_a_tuple_and_an_array_are_dims(dims):
    report = npuflow.check(mnist_cnn(), "cpu-int8", {"input": dims})
    assert report.summary == npuflow.check(mnist_cnn(), "cpu-int8", {"input": [1, 1, 28, 28]}).summary
