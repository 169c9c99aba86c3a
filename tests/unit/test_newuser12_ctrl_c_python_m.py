"""Round 12: Ctrl-C in the first seconds of ``python -m npuflow`` (still importing the package,
whose ``__init__`` imports every stage before ``__main__`` runs) printed a ``KeyboardInterrupt``
traceback; the console script already printed one line.  Both now print one line, exit 130."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest


def _terminal_sigint() -> None:
    """SIGINT as a terminal's process has it (a test worker may leave it ignored or blocked,
    which the child would inherit through exec)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _interrupted(cmd: list[str], after: str) -> tuple[int, str]:
    """Run ``cmd`` with ``-X importtime`` and send SIGINT once module ``after`` has been imported
    (a fixed delay hit Python's own start-up under load: "Fatal Python error: init_import_site")."""
    p = subprocess.Popen([cmd[0], "-X", "importtime", *cmd[1:]], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, preexec_fn=_terminal_sigint)
    for line in p.stderr:
        if line.startswith("import time:") and line.split("|")[-1].strip() == after:
            break
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    p.wait(timeout=120)
    return p.returncode, "\n".join(x for x in rest.splitlines() if not x.startswith("import time:"))


@pytest.mark.parametrize("after", ["npuflow.errors", "npuflow.targets", "npuflow.quant"])
def test_ctrl_c_during_python_m_import_prints_one_line(after):
    """SIGINT once the package has imported ``after``: still inside ``npuflow/__init__``."""
    rc, err = _interrupted([sys.executable, "-m", "npuflow", "targets"], after)
    assert "Traceback" not in err, err
    assert rc == 130 and err.strip() == "npuflow: interrupted", (rc, err)


def test_plain_import_still_raises_keyboard_interrupt():
    """Outside ``python -m`` the importer owns the interrupt: ``import npuflow`` lets it through."""
    rc, err = _interrupted([sys.executable, "-c", "import npuflow"], "npuflow.errors")
    assert "KeyboardInterrupt" in err and rc != 0, err
