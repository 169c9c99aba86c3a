"""Progress for everyone (issue 20 item 3): stage lines with counts and times when piped, one Rich
bar per stage on a terminal, counters that count."""

from __future__ import annotations

import io
import re

import numpy as np
import onnx
from rich.console import Console

from npuflow.cli.app import main
from npuflow.cli.progress import StageProgress

from .quant_nets import conv_net, samples


def test_piped_quantize_prints_each_stage_with_its_count_and_time(tmp_path, capsys):
    onnx.save(conv_net(), str(tmp_path / "net.onnx"))
    (tmp_path / "calib").mkdir()
    for i, x in enumerate(samples([1, 3, 8, 8], n=12)):
        np.save(tmp_path / "calib" / f"{i:03d}.npy", x)
    rc = main(["quantize", str(tmp_path / "net.onnx"), "-t", "DPUCZDX8G_ISA1_B4096", "--calib",
               str(tmp_path / "calib"), "-o", str(tmp_path / "out"), "--no-nodes"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [line for line in err.splitlines() if line.startswith("quantize: ")]
    assert lines[0].startswith("quantize: optimize ") and lines[-1].startswith("quantize: accuracy check ")
    assert re.fullmatch(r"quantize: calibrate 12/12 samples \d+\.\d s", lines[1]), err
    assert all(re.search(r" \d+\.\d s$", line) for line in lines), err
    assert "quantize: " not in out  # results on stdout, progress on stderr


def _events(progress: StageProgress) -> None:
    progress("optimize")
    for k in range(1, 5):
        progress("calibrate", k, 4)
    progress("export")  # a stage without a count after a counted one


def test_piped_lines_count_and_the_terminal_bar_is_fresh_per_stage():
    err = io.StringIO()
    with StageProgress("quantize", Console(file=io.StringIO()), Console(file=err, width=200)) as progress:
        _events(progress)
    assert [line.rsplit(" ", 2)[0] for line in err.getvalue().splitlines()] == [
        "quantize: optimize", "quantize: calibrate 4/4 samples", "quantize: export"]

    tty = Console(file=io.StringIO(), force_terminal=True, width=120)
    with StageProgress("quantize", tty, Console(file=io.StringIO())) as progress:
        _events(progress)
        task = progress._bar.tasks[-1]
        # Rich's update(total=None) keeps the old total: the export stage showed "0/4" before
        assert task.description == "export" and task.total is None and task.completed == 0
        assert len(progress._bar.tasks) == 1


def test_advance_counts_from_threads():
    import threading

    err = io.StringIO()
    with StageProgress("bench", Console(file=io.StringIO()), Console(file=err, width=200)) as progress:
        progress("frames", 0, 400)
        threads = [threading.Thread(target=lambda: [progress.advance() for _ in range(100)]) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert re.fullmatch(r"bench: frames 400/400 frames \d+\.\d s\n", err.getvalue())
