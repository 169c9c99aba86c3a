"""Files users can trust: output names that stay in their folder, result sets swapped in whole,
Ctrl-C as one line and exit status 130, normal file permissions, a self-healing finetune cache."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npuflow import model as model_io
from npuflow.cli.app import main
from npuflow.quant.algorithms.fast_finetune import FinetuneSettings, fast_finetune
from tests.unit.test_accuracy_bias_free import _bn_net
from tests.unit.test_build_config import _calib, _conv_model, _edit, _write
from tests.unit.qdq_toy import toy_qdq

ROOT = Path(__file__).resolve().parents[2]
BUILT = ["npuflow_build.log", "tiny.npuf", "tiny_build_report.json", "tiny_optimized_float_model.onnx",
         "tiny_original_float_model.onnx", "tiny_quant_info.json", "tiny_quantized_model.onnx"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    _conv_model(tmp_path / "m.onnx")
    _calib(tmp_path / "calib")
    _write(tmp_path, _edit())
    return tmp_path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and p.name != "npuflow_build.log"}


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "npuflow", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_staged_file(proc: subprocess.Popen, out: Path) -> None:
    """Until the build has written its first staged artefact (it is then mid-run)."""
    deadline = time.time() + 120
    while not list(out.glob(".tiny.build.*/tiny_original_float_model.onnx")):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)


@pytest.mark.parametrize("prefix", ["{outside}/evil", "/../../..{outside}/evil", "../evil", "sub/x", "", ".x"])
def test_output_prefix_must_be_a_plain_name(project, capsys, prefix):
    """A prefix leaving working_dir once wrote all six artefacts anywhere and, on a failed build,
    deleted the outside ones first; now it is a coded error before anything is written or removed."""
    outside = project / "outside"
    outside.mkdir()
    for suffix in (".npuf", "_build_report.json", "_quantized_model.onnx"):
        (outside / f"evil{suffix}").write_text("someone else's file")
    conf = _edit(model_parameters={"output_model_file_prefix": prefix.format(outside=outside)},
                 calibration_parameters={"cal_data_dir": "nowhere"})  # the build would fail after validation
    code = main(["build", str(_write(project, conf))])
    err = capsys.readouterr().err
    assert code == 2 and "ERROR [NPF_BUILD_BAD_VALUE] model_parameters.output_model_file_prefix" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in outside.iterdir()) == ["evil.npuf", "evil_build_report.json", "evil_quantized_model.onnx"]
    assert all(p.read_text() == "someone else's file" for p in outside.iterdir())
    assert not (project / "out").exists() and not (project / "evil.npuf").exists()


@pytest.mark.parametrize("working_dir, reason", [("afile", "is a file"), ("afile/sub", "is a file"),
                                                 ("/sys", "not permitted")])
def test_working_dir_that_is_a_file_or_unwritable_is_a_coded_error(project, capsys, working_dir, reason):
    """``/sys`` stands for an unwritable folder: it refuses new entries even to root."""
    (project / "afile").write_text("a file, not a folder")
    code = main(["build", str(_write(project, _edit(model_parameters={"working_dir": working_dir})))])
    err = capsys.readouterr().err
    assert code == 2 and "ERROR [NPF_IO_WRITE_FAILED]" in err and reason in err and "Traceback" not in err


def test_artefacts_get_the_permissions_of_the_umask(project, capsys):
    old = os.umask(0o027)
    try:
        assert main(["build", str(project / "c.yaml")]) == 0
        assert model_io.write_atomic(project / "w.txt", "x").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)
    capsys.readouterr()
    modes = {p.name: p.stat().st_mode & 0o777 for p in (project / "out").iterdir()}
    assert sorted(modes) == BUILT and set(modes.values()) == {0o640}, modes


def test_interrupted_and_killed_builds_leave_the_earlier_build(project):
    """Ctrl-C mid-build: one line, exit status 130, the earlier build byte for byte; a killed
    build's staging folder is removed by the next build, which succeeds."""
    out = project / "out"
    first = _cli("build", "c.yaml", cwd=project)
    assert first.wait(timeout=300) == 0, first.communicate()
    before = _digests(out)
    assert sorted(before) == [n for n in BUILT if n != "npuflow_build.log"]

    run = _cli("build", "c.yaml", cwd=project)
    _wait_for_staged_file(run, out)
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    # one line for the interrupt; before it, piped, the progress lines of the stages that finished
    lines = stderr.strip().splitlines()
    assert lines[-1] == "npuflow: interrupted" and all(line.startswith("build: ") for line in lines[:-1]), stderr
    assert _digests(out) == before
    assert sorted(p.name for p in out.iterdir()) == BUILT  # its own staging folder is gone

    killed = _cli("build", "c.yaml", cwd=project)
    _wait_for_staged_file(killed, out)
    killed.kill()
    killed.communicate(timeout=60)
    assert _digests(out) == before and list(out.glob(".tiny.build.*"))  # SIGKILL cannot clean up
    legacy = out / ".tiny.npuf.k3x9q2ab.tmp"  # what an older version's killed write left
    legacy.write_bytes(b"partial")

    again = _cli("build", "c.yaml", cwd=project)
    assert again.wait(timeout=300) == 0, again.communicate()
    assert sorted(p.name for p in out.iterdir()) == BUILT


def _quantized(project: Path):
    from npuflow import quantize

    rng = np.random.default_rng(0)
    return quantize(str(project / "m.onnx"), [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)],
                    "DPUCZDX8G_ISA1_B4096")


def test_quantize_output_is_swapped_in_whole(project, monkeypatch):
    """Interrupted between two files over an earlier output: the earlier set stays whole."""
    result = _quantized(project)
    out = project / "q"
    paths = result.save(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    before = _digests(out)

    written = []
    real_save = model_io.save

    def save_then_interrupt(proto, path):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt
        return real_save(proto, path)

    monkeypatch.setattr(model_io, "save", save_then_interrupt)
    result.model.doc_string = "a second run"
    with pytest.raises(KeyboardInterrupt):
        result.save(out)
    monkeypatch.setattr(model_io, "save", real_save)
    assert written[0].parent.parent == out  # the first file went to the staging folder ...
    assert _digests(out) == before and sorted(p.name for p in out.iterdir()) == sorted(before)  # ... now gone

    (out / ".quantize.999999999-ab12cd34").mkdir()  # a killed run's staging folder
    (out / ".quantized_model.onnx.k3x9q2ab.tmp").write_bytes(b"partial")  # an older version's leftover
    result.save(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(before)
    assert _digests(out) != before  # the second run's set replaced the first


def test_write_atomic_removes_its_temporary_file_when_interrupted(tmp_path):
    class Interrupting(str):
        def encode(self, *args, **kwargs):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model_io.write_atomic(tmp_path / "x.json", Interrupting("{}"))
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_as_the_staging_folder_is_made_leaves_no_folder(tmp_path, monkeypatch):
    """CI once found ``.quantize.*`` left behind by a Ctrl-C sent the moment the folder appeared: the
    folder was made in the constructor, before the ``with`` block whose exit removes it."""
    from npuflow.outputs import StagedOutputs

    staged = StagedOutputs(tmp_path, "quantize", ["a.onnx"])
    assert not list(tmp_path.glob(".quantize.*"))  # nothing on disk until the block is entered
    made = Path.mkdir

    def mkdir_then_interrupt(self, *args, **kwargs):
        made(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", mkdir_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with staged:
            pass
    assert not list(tmp_path.glob(".quantize.*"))


def test_corrupt_finetune_cache_entries_are_discarded(tmp_path, caplog):
    model, feeds = _bn_net(2)
    q = toy_qdq(model, feeds)
    st = FinetuneSettings(method="adaquant", iters=20, samples=256, round_mode="std_round", bias_round_mode="std_round")
    tuned, _ = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
    entries = sorted(tmp_path.rglob("*.npz"))
    assert len(entries) == 2
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # truncated (a killed writer, a full disk)
    entries[1].write_bytes(b"PK\x03\x04 not a numpy archive")  # foreign
    with caplog.at_level(logging.WARNING, logger="npuflow"):
        again, rep = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
    assert not any(r.cached for r in rep.layers)
    assert sum("unreadable" in r.getMessage() and "discarded" in r.getMessage() for r in caplog.records) == 2
    assert [t.raw_data for t in again.graph.initializer] == [t.raw_data for t in tuned.graph.initializer]
    _, rep3 = fast_finetune(model, q, feeds, st, cache_dir=tmp_path)
    assert all(r.cached for r in rep3.layers)  # the entries were written anew


_INTERRUPTED_BENCH = """
import signal, sys, threading, time
from npuflow.profile.bench import bench

class SlowSession:
    def add_listener(self, listener): ...
    def remove_listener(self, listener): ...
    def run(self, feed):
        time.sleep(0.002)

# Ctrl-C as a terminal delivers it, whatever disposition or mask this process inherited
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
main, done = threading.main_thread().ident, threading.Event()

def interrupt():  # a real SIGINT, as Ctrl-C sends, again until bench returns
    while not done.wait(0.3):
        signal.pthread_kill(main, signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
t0 = time.perf_counter()
try:
    bench(SlowSession(), thread_num=2, frame_count=10**9, inputs={})
except KeyboardInterrupt:
    done.set()
else:
    sys.exit("bench ran to the end")
alive = [t.name for t in threading.enumerate() if t.name.startswith("bench-") and t.is_alive()]
print(f"interrupted after {time.perf_counter() - t0:.1f} s, bench threads alive: {alive}")
"""


def test_interrupted_bench_stops_its_threads():
    """Ctrl-C in ``npuflow bench`` once printed its line and then hung until every frame ran.

    Run in a fresh interpreter with SIGINT's default handler: in the test process, after other
    tests, the signal never reached the blocked join and the test hung (twice in a full run)."""
    run = subprocess.run([sys.executable, "-c", _INTERRUPTED_BENCH], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    line = run.stdout.strip()
    assert line.endswith("bench threads alive: []"), line
    assert float(line.split()[2]) < 10, line


def test_ctrl_c_while_the_cli_is_still_importing_prints_one_line():
    """The console script's entry (``npuflow_launcher``) catches Ctrl-C during the seconds the
    toolchain takes to import, where an entry inside ``npuflow`` cannot: it is imported first."""
    import subprocess
    import sys

    # what the script runs, after restoring SIGINT as a terminal's process has it (a full run's
    # worker may have left it ignored or blocked, which the child would inherit)
    restore = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT}); ")
    cmd = [sys.executable, "-c", restore + "import npuflow_launcher as m; m.run()", "targets"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.8)  # past interpreter start-up, well inside the import of onnx/onnxruntime/numpy
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and err.strip() == "npuflow: interrupted", err


def test_ctrl_c_inside_a_finaliser_is_delivered_again_not_printed(capsys):
    """Ctrl-C landing where Python cannot raise it (a finaliser, an import lock's release: seen
    in a full run as "Exception ignored ..." and a traceback on stderr, the build going on) is
    raised again in the main thread, so the command stops with its one line."""
    from npuflow.cli.app import _CtrlC

    class Finaliser:
        def __del__(self) -> None:
            raise KeyboardInterrupt  # what the SIGINT handler raises when it fires here

    stopped = False
    with _CtrlC() as ctrl_c:
        try:
            Finaliser()  # dropped at once: its __del__ cannot propagate the exception
            for _ in range(200):
                time.sleep(0.005)
        except KeyboardInterrupt:
            stopped = True
    assert stopped and ctrl_c.pressed
    assert "Exception ignored" not in capsys.readouterr().err
    assert sys.unraisablehook is not ctrl_c._unraisable  # the context restores the earlier hook
