"""A ``Session`` sent to a ``multiprocessing`` worker (new-user round 14b, flow 51): pickling one
was ``TypeError: cannot pickle '_thread.lock' object``.  Now it pickles as its compiled model and
options and opens again on the other side, with the same outputs."""

from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import npuflow
from tests.fixture_models import mnist_cnn

rng = np.random.default_rng(0)
X = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(4)]


@pytest.fixture(scope="module")
def compiled() -> npuflow.CompiledModel:
    return npuflow.compile(npuflow.quantize(mnist_cnn(), X, "cpu-int8"), "cpu-int8")


def test_a_session_pickles_and_runs_the_same(compiled):
    session = npuflow.Session(compiled, npuflow.load_target("cpu-int8"), threads=2, fuse=False)
    again = pickle.loads(pickle.dumps(session))
    assert again._options == session._options
    np.testing.assert_array_equal(again.run({"input": X[1]})["logits"], session.run({"input": X[1]})["logits"])


def _logits(session: npuflow.Session) -> np.ndarray:
    return session.run({"input": X[2]})["logits"]


def test_a_spawned_worker_runs_a_session_it_was_sent(compiled, tmp_path):
    path = compiled.save(tmp_path / "m.npuf")
    session = npuflow.Session(path)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_logits, (session,))
    np.testing.assert_array_equal(got, _logits(session))


def test_a_session_of_a_packed_entry_pickles_as_that_entry(compiled, tmp_path):
    """A Session over ``CompiledModel.load(pack, "b")`` reopens the same entry of the packed file,
    not NPF_PACK_MODEL_REQUIRED (the pack holds two models)."""
    from npuflow.compiler.pack import pack

    pack([compiled.save(tmp_path / "a.npuf"), compiled.save(tmp_path / "b.npuf")], tmp_path / "both.npuf")
    session = npuflow.Session(npuflow.CompiledModel.load(tmp_path / "both.npuf", "b"))
    again = pickle.loads(pickle.dumps(session))
    assert again.compiled.name == "b"
    np.testing.assert_array_equal(_logits(again), _logits(session))
