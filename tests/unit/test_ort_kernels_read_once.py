"""The kernel-check verdict file is read once per change, not once per check (issue 19): a
Session's load asks many checks (YOLOv8n cpu-int8: 123), each of which read and parsed the whole
file.  A file changed since (a verdict stored here or by another process) is read again."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from npuflow import ort_verdicts


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(ort_verdicts.CACHE_ENV, raising=False)
    reads: list[Path] = []
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        reads.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    return reads


def test_the_verdicts_are_read_once_until_the_file_changes(cache):
    reads = cache
    ort_verdicts._store("probe_a", True)
    path = ort_verdicts.cache_file()
    reads.clear()
    for _ in range(5):
        assert ort_verdicts._recall("probe_a", lambda: pytest.fail("a stored verdict is not run again")) is True
    assert reads.count(path) == 1
    # another process replaces the file: read again, its verdicts seen
    tmp = path.with_name(".other")
    tmp.write_text(json.dumps({"probe_a": False, "probe_b": "u8"}))
    os.replace(tmp, path)
    assert ort_verdicts._recall("probe_b", lambda: pytest.fail("stored by the other process")) == "u8"
    assert ort_verdicts._recall("probe_a", lambda: True) is False
    assert reads.count(path) == 2
    # a verdict stored here replaces the file too; the next check reads the new one
    assert ort_verdicts._recall("probe_c", lambda: True) is True
    assert ort_verdicts._stored() == {"probe_a": False, "probe_b": "u8", "probe_c": True}


def test_a_damaged_file_is_still_no_verdicts(cache):
    ort_verdicts._store("probe_a", True)
    ort_verdicts.cache_file().write_text("{not json")
    assert ort_verdicts._stored() == {}
    assert ort_verdicts._recall("probe_a", lambda: "s8") == "s8"  # probed again and stored whole
    assert ort_verdicts._stored() == {"probe_a": "s8"}


def test_each_check_keeps_its_verdicts_in_a_file_of_its_own(cache):
    """A load reads only the verdict files of the checks its model asks (issue 19: one shared file
    of every check's verdicts was parsed and kept whole by every load, 0.55 MiB at 2,300 entries)."""
    ort_verdicts._store("probe_a", True)
    ort_verdicts._store("pkg.mod._check@0123456789abcdef:k1", False)
    assert ort_verdicts._stored() == {"probe_a": True}
    family = ort_verdicts.cache_file("pkg.mod._check@0123456789abcdef")
    assert family != ort_verdicts.cache_file() and family.parent == ort_verdicts.cache_file().parent
    assert json.loads(family.read_text()) == {"pkg.mod._check@0123456789abcdef:k1": False}
    cache.clear()
    assert ort_verdicts._recall("pkg.mod._check@0123456789abcdef:k1", lambda: pytest.fail("stored")) is False
    assert cache == [family]  # the probes' file is not read for a check's verdict
