"""``npuflow.Session``'s thread counts as a script passes them (new-user round 14b, flow 35).
Before: ``threads="2"`` (read from an environment variable) was ``TypeError: '<=' not supported
between instances of 'str' and 'int'`` from runtime/fused.py; ``threads=0`` and ``-1`` were passed
on to ONNX Runtime without a word.  Now ``NPF_RUNTIME_BAD_THREADS``."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.fixture_models import mnist_cnn

rng = np.random.default_rng(0)
X = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(4)]


@pytest.fixture(scope="module")
def compiled() -> npuflow.CompiledModel:
    return npuflow.compile(npuflow.quantize(mnist_cnn(), X, "cpu-int8"), "cpu-int8")


@pytest.mark.parametrize("option, value", [("threads", "2"), ("threads", 0), ("threads", -1), ("threads", None),
                                           ("cpu_threads", 0), ("blas_threads", 1.5)])
def test_a_thread_count_that_is_not_one_is_a_coded_error(compiled, option, value):
    with pytest.raises(npuflow.NpuflowError) as err:
        npuflow.Session(compiled, **{option: value})
    assert err.value.code == "NPF_RUNTIME_BAD_THREADS" and f"{option}={value!r}" in err.value.message


def test_whole_numbers_and_unset_options_run(compiled):
    ref = npuflow.Session(compiled).run({"input": X[0]})["logits"]
    got = npuflow.Session(compiled, threads=np.int64(2), cpu_threads=None, blas_threads=None).run({"input": X[0]})
    np.testing.assert_array_equal(got["logits"], ref)
