"""Issue 19, peak memory: the kernel probes' verdicts kept on disk (``ort_verdicts.persistent``), so
a process that finds them opens no probe session; and accumulator tables that only integer
convolutions read held as bytes (``fused_conv``), a quarter of the float32 table's memory, with
the same outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from npuflow import ort_kernels, ort_verdicts

PROBES = ("weight_form", "pairing_confirmed", "matmul_pairing_confirmed", "convinteger_exact", "exact")


@pytest.fixture
def fresh_probes(monkeypatch, tmp_path):
    """The probes' per-process caches emptied and the disk cache in ``tmp_path``; both emptied
    again afterwards, so later tests probe this process' kernels themselves."""
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv(ort_verdicts.CACHE_ENV, raising=False)
    for name in PROBES:
        getattr(ort_kernels, name).cache_clear()
    yield tmp_path
    for name in PROBES:
        getattr(ort_kernels, name).cache_clear()


def _count_sessions(monkeypatch) -> list:
    """Every probe session opened from now on, as a list that grows."""
    opened = []
    real = ort_kernels.probe_session

    def counting(*args, **kwargs):
        opened.append(args[0][0].op_type)
        return real(*args, **kwargs)

    monkeypatch.setattr(ort_kernels, "probe_session", counting)
    return opened


def test_verdicts_are_stored_and_a_later_process_opens_no_probe_session(monkeypatch, fresh_probes):
    opened = _count_sessions(monkeypatch)
    first = {name: getattr(ort_kernels, name)() for name in PROBES}
    assert opened, "the first process probes"
    stored = json.loads(ort_verdicts.cache_file().read_text())
    assert stored == first
    assert ort_verdicts.cache_file().parent == fresh_probes / "ort_kernels"
    for name in PROBES:  # a new process: empty per-process caches, the file on disk
        getattr(ort_kernels, name).cache_clear()
    opened.clear()
    assert {name: getattr(ort_kernels, name)() for name in PROBES} == first
    assert opened == []


def test_stored_verdicts_are_the_ones_used(monkeypatch, fresh_probes):
    # what the file says is what the process believes (so the file must be keyed by all that decides it)
    path = ort_verdicts.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"weight_form": "s8", "pairing_confirmed": False}))
    opened = _count_sessions(monkeypatch)
    assert ort_kernels.weight_form() == "s8" and ort_kernels.pairing_confirmed() is False
    assert opened == []


def test_cache_disabled_by_the_environment_probes_and_writes_nothing(monkeypatch, fresh_probes):
    monkeypatch.setenv(ort_verdicts.CACHE_ENV, "0")
    path = ort_verdicts.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"weight_form": "bogus"}))
    opened = _count_sessions(monkeypatch)
    assert ort_kernels.weight_form() in ("s8", "u8", None)
    assert opened, "probed despite the file"
    assert json.loads(path.read_text()) == {"weight_form": "bogus"}


def test_a_damaged_or_unwritable_cache_falls_back_to_probing(monkeypatch, fresh_probes):
    path = ort_verdicts.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert ort_kernels.exact() in (True, False)
    assert "exact" in json.loads(path.read_text())  # rewritten whole
    ort_kernels.exact.cache_clear()
    blocked = fresh_probes / "file"
    blocked.write_text("")
    monkeypatch.setenv("NPUFLOW_CACHE", str(blocked))  # a file where the directory should be
    assert ort_kernels.exact() in (True, False)


def test_the_key_follows_what_decides_the_verdicts(monkeypatch):
    key = ort_verdicts.cache_key()
    ort_verdicts.cache_key.cache_clear()
    monkeypatch.setattr(ort_verdicts, "_cpu_flags", lambda: "another cpu avx512_vnni")
    try:
        assert ort_verdicts.cache_key() != key
    finally:
        monkeypatch.undo()
        ort_verdicts.cache_key.cache_clear()
    assert ort_verdicts.cache_key() == key


def test_wrapped_is_the_probe_itself():
    # tests of the probe (test_ort_kernels_pairs) call __wrapped__ to run it without any cache
    assert ort_kernels.pairing_confirmed.__wrapped__.__name__ == "pairing_confirmed"
    assert ort_kernels.pairing_confirmed.__wrapped__() in (True, False)


def test_a_load_gives_the_mapped_pages_back_after_the_cpu_subgraphs_and_each_build(monkeypatch, tmp_path):
    # the blobs a build reads fault the mapped file's pages in; they go back before the next
    # build grows beside them (PP-OCRv4 rec B4096: the CTC head's 3.2 MB before the integer
    # programs' builds, 35.8 -> 32.6 MiB high-water mark), not only at the end of the load
    import npuflow
    from npuflow.compiler import compiled as compiled_module
    from npuflow.runtime import executors
    from tests.unit.test_compiler_kernels import _x
    from tests.unit.test_runtime_cpu_weights import K, _head

    path = tmp_path / "head.npuf"
    npuflow.compile(_head().model(), "DPUCZDX8G_ISA1_B4096").save(path)
    events: list[str] = []
    real_release, real_build = compiled_module.CompiledModel.release_pages, executors.IntegerExecutor.__init__

    def release(self):
        events.append("release")
        real_release(self)

    def build(self, *args, **kwargs):
        events.append("build")
        real_build(self, *args, **kwargs)

    monkeypatch.setattr(compiled_module.CompiledModel, "release_pages", release)
    monkeypatch.setattr(executors.IntegerExecutor, "__init__", build)
    s = npuflow.Session(path)
    assert "build" in events and isinstance(s._executors[-1], executors.OnnxExecutor)
    first_build = events.index("build")
    assert "release" in events[:first_build], "after the CPU subgraphs, before the first build"
    assert all(events[k + 1] == "release" for k, e in enumerate(events) if e == "build"), events
    x = _x([1, K, 1, 6], 3, 2.0)
    fresh = npuflow.Session(path).run({"x": x})
    assert all(np.array_equal(v, fresh[k]) for k, v in s.run({"x": x}).items())
