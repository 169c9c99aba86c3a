"""Issue 19, peak memory at load: a ``.npuf``'s target check reads the bundled target's fingerprint
from its file's own lines (``targets.bundled_fingerprint``), without the YAML parse and validation
of the target and its family base that a runtime never uses again (about half a MiB of resident
memory per process; docs/runtime-measurements.md, "Peak memory")."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow import targets
from npuflow.compiler.compiled import CompiledModel
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.mark.parametrize("target", targets.list_targets(), ids=lambda t: t.name)
def test_every_bundled_targets_fingerprint_is_read_as_its_validated_target_states_it(target):
    assert targets.bundled_fingerprint(target.name) == target.fingerprint


def test_a_file_that_does_not_state_name_and_fingerprint_once_each_is_left_to_the_full_load(monkeypatch, tmp_path):
    monkeypatch.setattr(targets, "DATA_DIR", tmp_path)
    (tmp_path / "a.yaml").write_text('name: a\nfingerprint: "0x1"\n')
    (tmp_path / "twice.yaml").write_text('name: twice\nfingerprint: "0x1"\nfingerprint: "0x2"\n')
    (tmp_path / "based.yaml").write_text("base: _family.yaml\nname: based\n")
    (tmp_path / "other.yaml").write_text('name: not_other\nfingerprint: "0x3"\n')
    (tmp_path / "nested.yaml").write_text('name: nested\nlimits:\n  fingerprint: "0x4"\n')
    assert targets.bundled_fingerprint("a") == "0x1"
    assert targets.bundled_fingerprint("twice") is None
    assert targets.bundled_fingerprint("based") is None
    assert targets.bundled_fingerprint("other") is None
    assert targets.bundled_fingerprint("nested") is None
    assert targets.bundled_fingerprint("missing") is None
    assert targets.bundled_fingerprint("../a") is None


def test_loading_and_running_a_npuf_parses_no_target_file(monkeypatch, tmp_path):
    path, samples = random_sample_npuf(fixture_models.mnist_cnn(), "cpu-int8", "input", [1, 1, 28, 28], 4,
                                       tmp_path / "mnist.npuf", low=0.0)
    reads: list = []
    real = targets._read_yaml
    monkeypatch.setattr(targets, "_read_yaml", lambda *a: reads.append(a) or real(*a))
    targets._bundled_file.cache_clear()
    targets._bundled.cache_clear()
    try:
        with npuflow.Session(path) as session:
            ours = session.run(samples[0])
        assert reads == []
        with npuflow.Session(path, fuse=False) as reference:
            assert all(np.array_equal(ours[k], v) for k, v in reference.run(samples[0]).items())
        # an altered fingerprint is still refused, naming the bundled target's
        model = CompiledModel.load(path)
        manifest = {k: v for k, v in model.manifest.items() if k != "blobs"}
        manifest["target"] = {**manifest["target"], "fingerprint": "0x1"}
        with pytest.raises(npuflow.NpuflowError, match="0x0000000000000c08"):
            CompiledModel(manifest, {n: model.blob(n) for n in model.blob_names()}).save(tmp_path / "alt.npuf")
            CompiledModel.load(tmp_path / "alt.npuf")
    finally:
        targets._bundled_file.cache_clear()
        targets._bundled.cache_clear()
