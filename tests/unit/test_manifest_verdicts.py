"""Issue 19, the manifest validation's verdicts on disk (compiler/manifest_verdicts.py) and sessions
without their serialized model (ort_session.open_session).

A ``.npuf`` whose manifest this code validated before is not validated again: the validation's
pools and the native code pages it ran were most of what a load of MNIST or PP-OCR cls on cpu-int8
held over ONNX Runtime's (docs/runtime-measurements.md, "Peak memory").  The file's checksums are still
verified at every load, so a damaged file is refused as before.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import npuflow
from npuflow.compiler import artifact, manifest_check, manifest_verdicts
from npuflow.compiler.artifact import NpufFile
from npuflow.errors import NpuflowError
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    return random_sample_npuf(fixture_models.mnist_cnn(), "cpu-int8", "input", [1, 1, 28, 28], 4,
                              tmp_path_factory.mktemp("verdicts") / "mnist.npuf", low=0.0)


@pytest.fixture
def validations(monkeypatch, tmp_path):
    """A cache of this test's own, and the list of manifests the validation ran on."""
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE", raising=False)
    seen: list = []
    real = manifest_check.validate
    monkeypatch.setattr(manifest_check, "validate", lambda m, *a, **k: seen.append(m) or real(m, *a, **k))
    return seen


def test_a_manifest_validated_once_is_not_validated_at_the_next_load(mnist, validations, tmp_path):
    path, samples = mnist
    first = npuflow.Session(path)
    assert len(validations) == 1
    assert len(list((tmp_path / "cache" / "manifests").iterdir())) == 1
    again = npuflow.Session(path)
    assert len(validations) == 1  # the stored verdict: no second validation
    for x in samples:
        expected, got = first.run(x), again.run(x)
        assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_the_verdict_follows_the_code_and_the_minor_version_flag(mnist, validations, monkeypatch):
    path, _ = mnist
    NpufFile(path)
    NpufFile(path)
    assert len(validations) == 1
    monkeypatch.setattr(manifest_verdicts, "code_digest", lambda: "another version of the validation")
    NpufFile(path)
    assert len(validations) == 2
    digest = bytes(32)
    assert manifest_verdicts._verdict_file(digest, False) != manifest_verdicts._verdict_file(digest, True)


def test_a_damaged_file_is_refused_after_its_manifest_was_remembered(mnist, validations, tmp_path):
    path, _ = mnist
    NpufFile(path)
    data = bytearray(path.read_bytes())
    manifest = data.index(b'"tensors"')  # a byte of the manifest, and one of the blobs at the end
    for where in (manifest, len(data) - artifact.TRAILER_SIZE - 1):
        damaged = bytearray(data)
        damaged[where] ^= 0x01
        bad = tmp_path / f"damaged{where}.npuf"
        bad.write_bytes(bytes(damaged))
        with pytest.raises(NpuflowError) as err:
            npuflow.Session(bad)
        assert err.value.code == "NPF_COMPILE_CORRUPT"


def test_no_verdict_without_the_disk_cache_or_a_writable_one(mnist, validations, monkeypatch, tmp_path):
    path, samples = mnist
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    NpufFile(path)
    NpufFile(path)
    assert len(validations) == 2 and not (tmp_path / "cache").exists()
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE")
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setenv("NPUFLOW_CACHE", str(blocked))
    s = npuflow.Session(path)
    again = npuflow.Session(path)
    assert len(validations) == 4  # nothing stored: validated each time, and the load goes on
    expected, got = s.run(samples[0]), again.run(samples[0])
    assert expected and all(np.array_equal(expected[k], got[k]) for k in expected)


def test_only_single_models_of_bundled_targets_are_remembered(mnist, validations):
    manifest = NpufFile(mnist[0]).manifest
    assert manifest_verdicts.rememberable(manifest)
    assert not manifest_verdicts.rememberable({**manifest, "target": {**manifest["target"], "name": "MyBoard"}})
    assert not manifest_verdicts.rememberable({"packed": [], "blobs": {}})
    assert not manifest_verdicts.rememberable([manifest])


def test_a_loaded_sessions_onnx_runtime_sessions_keep_no_serialized_model(mnist, monkeypatch):
    path, samples = mnist
    opened: list = []
    real = ort.InferenceSession.__init__
    monkeypatch.setattr(ort.InferenceSession, "__init__", lambda self, *a, **k: opened.append(self) or real(self, *a, **k))
    s = npuflow.Session(path)
    monkeypatch.undo()
    assert opened and all(o._model_bytes is None for o in opened)
    reference = npuflow.Session(path, fuse=False)
    for x in samples:
        expected, got = reference.run(x), s.run(x)
        assert all(np.array_equal(expected[k], got[k]) for k in expected)
