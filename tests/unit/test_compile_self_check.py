"""A ``.npuf`` that compiles must load and run: ``compile`` verifies each program's bytes as every
load does (``compiler/compile.py``, ``_self_checked``), so a lowering bug is a coded compiler error
before anything is written, not a "truncated or corrupt; compile again" at the next load.

New-user round 17 found such a bug (a reversing ``Slice`` lowered with the stop -1, fixed in
``lowering.lower_slice``): compile succeeded and every load refused the file.  The bug is put back
here through the lowering's ``_passthrough`` so that the check is tested against the very error it
met."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.cli.app import main
from npuflow.compiler import lowering
from npuflow.errors import NpuflowError
from tests.unit.test_newuser17_reversing_slice import INT64_MAX, _flip


@pytest.fixture
def quantized(tmp_path):
    model = _flip(-1, -INT64_MAX)
    rng = np.random.default_rng(0)
    samples = [{"x": rng.uniform(-1, 1, (3, 1, 8)).astype(np.float32),
                "x2": rng.uniform(-1, 1, (6, 1, 8)).astype(np.float32)} for _ in range(4)]
    q = npuflow.quantize(model, samples, "cpu-int8", warn=False)
    path = tmp_path / "quantized_model.onnx"
    onnx.save(q.model, path)
    return q, path


@pytest.fixture
def old_slice_bug(monkeypatch):
    """The lowering as it was before the fix: a reversing slice's stop of "before element 0" written
    as ``indices()``'s -1, which a slice reads as the last element."""
    passthrough = lowering._passthrough

    def buggy(g, n, op, kind, attrs):
        if kind == "strided_slice":
            attrs = {"slices": [[a, -1 if c < 0 and b < 0 else b, c] for a, b, c in attrs["slices"]]}
        return passthrough(g, n, op, kind, attrs)

    monkeypatch.setattr(lowering, "_passthrough", buggy)


def test_the_fixed_lowering_passes_its_own_check(quantized):
    q, _ = quantized
    compiled = npuflow.compile(q, "cpu-int8")
    assert any(op["op"] == "slice" for sg in compiled.manifest["subgraphs"] if sg["engine"] == "integer"
               for op in sg["ops"])


def test_a_lowering_bug_is_a_coded_compiler_error(quantized, old_slice_bug):
    q, _ = quantized
    with pytest.raises(NpuflowError) as info:
        npuflow.compile(q, "cpu-int8")
    assert info.value.code == "NPF_COMPILE_SELF_CHECK"
    assert "cpu-int8" in info.value.message and "[0, 1, 8]" in info.value.message
    assert "bug in npuflow's compiler" in info.value.hint


def test_the_cli_writes_no_file_and_says_it_is_a_compiler_bug(quantized, old_slice_bug, tmp_path, capsys):
    _, path = quantized
    out = tmp_path / "model.npuf"
    assert main(["compile", str(path), "-t", "cpu-int8", "-o", str(out)]) != 0
    err = capsys.readouterr().err
    assert "ERROR [NPF_COMPILE_SELF_CHECK]" in err and "Traceback" not in err
    assert "corrupt" not in err and not out.exists()


def test_the_saved_files_first_load_does_not_repeat_the_check(quantized, monkeypatch, tmp_path):
    from npuflow.compiler import manifest_check

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE", raising=False)
    seen: list = []
    real = manifest_check.validate
    monkeypatch.setattr(manifest_check, "validate", lambda m, *a, **k: seen.append(m) or real(m, *a, **k))
    q, _ = quantized
    npuflow.compile(q, "cpu-int8").save(tmp_path / "model.npuf")
    assert len(seen) == 1  # compile's own check
    npuflow.Session(tmp_path / "model.npuf")
    assert len(seen) == 1  # the load found the check's verdict
