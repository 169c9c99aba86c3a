"""Round 12: Ctrl-C in the first seconds of ``python -m npuflow`` (still importing the package,
whose ``__init__`` imports every stage before ``__main__`` runs) printed a ``KeyboardInterrupt``
traceback; the console script already printed one line.  Both now print one line, exit 130."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest


def _terminal_sigint() -> None:
    """SIGINT as a terminal's process has it (a test worker may leave it ignored or blocked,
    which the child would inherit through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupted(cmd: list[str], delay: float) -> tuple[int, str]:
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=_terminal_sigint)
    time.sleep(delay)  # past interpreter start-up, inside the import of onnx/onnxruntime/numpy/the stages
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    return p.returncode, err


@pytest.mark.parametrize("delay", [0.3, 0.8, 1.5])
def test_ctrl_c_during_python_m_import_prints_one_line(delay):
    rc, err = _interrupted([sys.executable, "-m", "npuflow", "targets"], delay)
    assert "Traceback" not in err, err
    assert rc == 130 and err.strip() == "npuflow: interrupted", (rc, err)


def test_plain_import_still_raises_keyboard_interrupt():
    """Outside ``python -m`` the importer owns the interrupt: ``import npuflow`` lets it through."""
    rc, err = _interrupted([sys.executable, "-c", "import npuflow"], 0.8)
    assert "KeyboardInterrupt" in err and rc != 0, err
