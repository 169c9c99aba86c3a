"""The ``npuflow`` console script's first module, outside the ``npuflow`` package on purpose.

Importing the toolchain (ONNX, ONNX Runtime, numpy, every stage) takes a few seconds.  The
console script's wrapper imports its entry point before any npuflow code runs, so an entry point
inside ``npuflow`` could not catch a Ctrl-C pressed during that import: Python would print a
``KeyboardInterrupt`` traceback.  This module imports nothing heavy; it catches the interrupt
around the import and reports it as :func:`npuflow.cli.app.main` reports one during a command.
"""

from __future__ import annotations

import sys

#: Exit status after Ctrl-C (128 + SIGINT), the same as ``npuflow.cli.app.INTERRUPTED``.
INTERRUPTED = 130


def interrupted() -> None:
    """Report a Ctrl-C that landed during the import: one line, exit status 130."""
    print("npuflow: interrupted", file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED)


def run() -> None:
    """Import the CLI, then run it; Ctrl-C at any point is one line and exit status 130.
    ``python -m npuflow`` runs this too (``npuflow/__main__.py``).  ``main`` handles a Ctrl-C
    during the command itself; one that lands just outside its handler (while it is installed or
    restored, or delivered again by its timer as the command ends) would otherwise escape, and the
    interpreter would end by SIGINT (exit status -2 to a parent; round 24 saw it once)."""
    try:
        from npuflow.cli.app import main

        status = main()
    except KeyboardInterrupt:
        interrupted()
    sys.exit(status)
