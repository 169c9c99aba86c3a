"""Issue 19, peak memory: an epilogue's per-channel arrays (cpu-int8's float multipliers, fixed-point
multipliers and shifts) are stored as blobs of the ``.npuf`` (format 2.0, ``compiler/manifest_arrays.py``)
and loaded as read-only numpy views of the mapped file, not parsed into one Python number per channel;
1.x files (JSON lists) still load and compute the same; a reader of format 1 refuses a 2.0 file with
``NPF_COMPILE_VERSION``; a stored array of the wrong type, length or range is ``NPF_COMPILE_CORRUPT``."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import npuflow
from npuflow.compiler import artifact, manifest_arrays, manifest_schema
from npuflow.compiler.compiled import CompiledModel
from npuflow.errors import NpuflowError
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """MNIST CNN on cpu-int8 (per-channel weights, so per-channel ``scale`` multipliers), saved now
    (format 2.0) and as a 1.x writer wrote it (every array a JSON list)."""
    work = tmp_path_factory.mktemp("epilogue_blobs")
    path, samples = random_sample_npuf(fixture_models.mnist_cnn(), "cpu-int8", "input", [1, 1, 28, 28], 4,
                                       work / "new.npuf", low=0.0)
    model = CompiledModel.load(path)
    old = work / "old.npuf"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manifest_arrays, "MIN_VALUES", 1 << 40)  # nothing is long enough: the 1.x form
        CompiledModel(json.loads(json.dumps(model.manifest, default=lambda a: a.tolist())),
                      {n: model.blob(n) for n in model.blob_names()}).save(old)
    return path, old, samples


def _version(path) -> tuple[int, int]:
    return struct.unpack_from("<8sHH", path.read_bytes())[1:]


def _stored_manifest(path) -> dict:
    data = path.read_bytes()
    (_, _, _, _, moff, mlen, *_rest) = artifact._HEADER.unpack_from(data, 0)
    return json.loads(data[moff:moff + mlen])


def test_epilogue_arrays_are_blobs_read_as_arrays_and_compute_as_the_json_lists(mnist):
    new, old, samples = mnist
    assert (_version(new), _version(old)) == ((2, 0), (1, 0))
    refs = [ep[f] for ep in manifest_arrays.epilogues(_stored_manifest(new)) for f in manifest_arrays.FIELDS
            if isinstance(ep.get(f), dict)]
    assert refs and all(r["blob"].startswith(manifest_arrays.PREFIX) for r in refs)
    def long_lists(manifest: dict) -> list[list]:  # shorter ones stay JSON in either format
        return [ep[f] for ep in manifest_arrays.epilogues(manifest) for f in manifest_arrays.FIELDS
                if isinstance(ep.get(f), list) and len(ep[f]) >= manifest_arrays.MIN_VALUES]

    assert len(long_lists(_stored_manifest(old))) == len(refs) and not long_lists(_stored_manifest(new))
    # loaded: read-only views of the mapped file, with the values and dtype numpy gives the JSON lists
    arrays = [ep[f] for ep in manifest_arrays.epilogues(CompiledModel.load(new).manifest)
              for f in manifest_arrays.FIELDS if isinstance(ep.get(f), np.ndarray)]
    assert len(arrays) == len(refs) and not any(a.flags.writeable for a in arrays)
    for a, values in zip(arrays, long_lists(CompiledModel.load(old).manifest)):
        assert a.dtype == np.asarray(values).dtype and np.array_equal(a, np.asarray(values))
    for x in samples:
        with npuflow.Session(new) as s_new, npuflow.Session(old) as s_old, \
                npuflow.Session(new, fuse=False) as k_new, npuflow.Session(old, fuse=False) as k_old:
            outs = [s.run(x) for s in (s_new, s_old, k_new, k_old)]
        assert all(np.array_equal(o[k], outs[0][k]) for o in outs for k in outs[0])


def test_a_loaded_2_0_file_saves_to_the_same_bytes(mnist, tmp_path):
    new, _, _ = mnist
    again = CompiledModel.load(new).save(tmp_path / "again.npuf")
    assert again.read_bytes() == new.read_bytes()


def test_a_reader_of_format_1_refuses_a_2_0_file_with_the_version_code(mnist, monkeypatch):
    new, old, _ = mnist
    monkeypatch.setattr(manifest_schema, "READABLE", {1: manifest_schema.V1_MINOR})
    CompiledModel.load(old)
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(new)
    assert err.value.code == "NPF_COMPILE_VERSION" and "2.0" in err.value.message


@pytest.mark.parametrize("edit, reason", [
    (lambda a: np.concatenate([a, a[:1]]), "float64 blob of"),  # one value too many
    (lambda a: a.astype(np.float32), "float64 blob of"),
    (lambda a: np.where(np.arange(a.size) == 3, -a, a), "outside"),  # a multiplier must be > 0
    (lambda a: np.where(np.arange(a.size) == 3, np.inf, a), "outside"),
])
def test_a_stored_array_of_the_wrong_type_length_or_range_is_refused(mnist, tmp_path, edit, reason):
    new, _, _ = mnist
    model = CompiledModel.load(new)
    stored = _stored_manifest(new)
    ep = next(e for e in manifest_arrays.epilogues(stored) if isinstance(e.get("multiplier"), dict))
    name = ep["multiplier"]["blob"]
    blobs = {n: model.blob(n) for n in stored["blobs"]}
    blobs[name] = edit(np.array(model.blob(name)))
    path = artifact.write(tmp_path / "edited.npuf", {k: v for k, v in stored.items() if k != "blobs"}, blobs)
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(path)
    assert err.value.code == "NPF_COMPILE_CORRUPT" and "epilogue.multiplier" in err.value.message
    assert reason in err.value.message, err.value.message
