"""Piped progress of a stage without a count (new-user round 9, round 8's open item 2): SLANet's
quantize ran float optimisation, bias correction ("export") and the accuracy check for 40-85 s each
without a line in a log, although the progress module promised a line every ``HEARTBEAT_S``
seconds in a long stage: the heartbeat was printed only from a progress call, and those stages
make none.  A ticker now repeats the running stage's line, counted or not."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from npuflow.cli import progress as progress_module
from npuflow.cli.progress import StageProgress


def test_a_stage_without_progress_calls_still_prints_a_heartbeat(monkeypatch):
    monkeypatch.setattr(progress_module, "HEARTBEAT_S", 0.3)
    err = io.StringIO()
    with StageProgress("quantize", Console(file=io.StringIO()), Console(file=err, width=200)) as progress:
        progress("export")  # bias correction: no counts
        time.sleep(1.2)
        progress("calibrate", 1, 4)
        time.sleep(0.8)
        progress("calibrate", 4, 4)
    lines = err.getvalue().splitlines()
    beats = [line for line in lines if re.fullmatch(r"quantize: export \d+\.\d s \.\.\.", line)]
    assert len(beats) >= 2, lines
    assert any(re.fullmatch(r"quantize: calibrate 1/4 samples \d+\.\d s \.\.\.", line) for line in lines), lines
    assert re.fullmatch(r"quantize: calibrate 4/4 samples \d+\.\d s", lines[-1]), lines


def test_nothing_is_repeated_on_a_quick_stage_and_the_ticker_stops():
    err = io.StringIO()
    with StageProgress("quantize", Console(file=io.StringIO()), Console(file=err, width=200)) as progress:
        progress("optimize")
        ticker = progress._ticker
    assert ticker is not None and not ticker.is_alive()
    assert [line.rsplit(" ", 2)[0] for line in err.getvalue().splitlines()] == ["quantize: optimize"]
