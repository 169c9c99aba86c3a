"""Issue 19, peak memory held for a Session's life: the manifest's equal strings are one object,
and a process whose environment already gives BLAS one thread does not import ``threadpoolctl``.

A ``.npuf`` manifest names each tensor many times (ops' inputs and outputs, memory plans, blob
names); JSON's parser made a new ``str`` for each (PP-OCR cls on B4096: 139 KB of strings, 46 KB
distinct).  ``Session(blas_threads=1)`` imported and ran ``threadpoolctl`` (0.12 MiB) even where
``OMP_NUM_THREADS=1`` had already set every BLAS library's count (docs/compiler-runtime.md, "Peak
memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import npuflow
from npuflow.compiler import artifact
from npuflow.compiler.compiled import CompiledModel
from npuflow.runtime.session import BLAS_THREAD_VARS, blas_env_threads
from tests import fixture_models
from tests.compile_check import random_sample_npuf
from tests.unit.test_runtime_memory_shared import ROOT


@pytest.fixture(scope="module")
def cls_b4096(tmp_path_factory):
    return random_sample_npuf(fixture_models.ppocr_cls(), "DPUCZDX8G_ISA1_B4096", "x", [1, 3, 48, 192], 4,
                              tmp_path_factory.mktemp("strings") / "cls_b4096.npuf")


def _strings(value: object) -> list[str]:
    found, stack = [], [value]
    while stack:
        node = stack.pop()
        for key, item in (node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, dict | list):
                stack.append(item)
    return found


def _text(manifest: dict) -> str:
    return json.dumps(manifest, sort_keys=True, default=lambda a: [str(np.asarray(a).dtype), np.asarray(a).tolist()])


def test_a_loaded_manifest_holds_each_string_once_and_equals_the_parse(monkeypatch, cls_b4096):
    path, samples = cls_b4096
    manifest = CompiledModel.load(path).manifest
    strings = _strings(manifest)
    by_value: dict[str, set[int]] = {}
    for s in strings:
        by_value.setdefault(s, set()).add(id(s))
    assert len(strings) > 2 * len(by_value)  # tensor names repeat: the case the sharing is for
    assert all(len(ids) == 1 for ids in by_value.values())
    with monkeypatch.context() as m:  # the same file parsed without the sharing: the same manifest
        m.setattr(artifact, "share_strings", lambda value: None)
        unshared = CompiledModel.load(path).manifest
    assert len({id(s) for s in _strings(unshared)}) > len(by_value)
    assert _text(unshared) == _text(manifest)
    s, ref = npuflow.Session(path), npuflow.Session(path, fuse=False)
    for x in samples:
        a, b = s.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)


def test_share_strings_keeps_values_and_types():
    value = {"a": ["t0", "t1", {"b": "t0", "t0": 1, "c": [True, 1, 1.0, -0.0, None, "t1"]}], "t1": "t0"}
    before = json.dumps(value)
    artifact.share_strings(value)
    assert json.dumps(value) == before
    assert value["a"][0] is value["a"][2]["b"] is value["t1"]
    assert [type(v) for v in value["a"][2]["c"]] == [bool, int, float, float, type(None), str]


def test_blas_env_threads_needs_every_library_to_agree(monkeypatch):
    for var in (*BLAS_THREAD_VARS, "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)
    assert blas_env_threads() is None
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert blas_env_threads() is None  # MKL's and BLIS's count still unset
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert blas_env_threads() == 1
    monkeypatch.setenv("MKL_NUM_THREADS", "4")
    assert blas_env_threads() is None
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    assert blas_env_threads() is None  # GotoBLAS's and BLIS's fall back to an unreadable one


def _threadpoolctl_after_load(path, env: dict[str, str]) -> bool:
    code = ("import sys\nimport numpy, onnx, onnxruntime, npuflow, npuflow.runtime\n"
            f"npuflow.Session({str(path)!r})\nprint('threadpoolctl' in sys.modules)\n")
    clean = {k: v for k, v in os.environ.items() if k not in (*BLAS_THREAD_VARS, "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         env={**clean, **env})
    return out.stdout.strip().splitlines()[-1] == "True"


def test_a_load_imports_threadpoolctl_only_where_the_environment_does_not_limit_blas(cls_b4096):
    path = cls_b4096[0]
    assert _threadpoolctl_after_load(path, {}) is True
    assert _threadpoolctl_after_load(path, {"OMP_NUM_THREADS": "2"}) is True
    assert _threadpoolctl_after_load(path, {"OMP_NUM_THREADS": "1"}) is False
