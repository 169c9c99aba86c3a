"""The Typer application and the one place where errors become exit codes.

Command modules (``npuflow/cli/*_cmd.py``) register themselves on :data:`app`; each is a thin
wrapper over the public Python API.  :func:`main` turns an :class:`NpuflowError` into
``ERROR [CODE] message`` plus a hint on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.console import Console

from ..errors import NpuflowError

app = typer.Typer(
    name="npuflow",
    help="Open NPU/DPU deployment toolchain: check, quantize, compile, run, measure.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Wide output when piped (logs, CI): Rich would otherwise squeeze tables into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root() -> None:
    """npuflow: take a float ONNX model to a deployable INT8 model for an NPU/DPU target."""


def fail(exc: NpuflowError) -> int:
    err_console.print(exc.render(), markup=False, highlight=False)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``npuflow`` script; returns the exit status."""
    from . import commands  # noqa: F401  (registers every command on ``app``)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = app(args=argv, standalone_mode=False)
    except NpuflowError as exc:
        return fail(exc)
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # usage errors: Typer prints them with the usage line
        exc.show()
        return getattr(exc, "exit_code", 2)
    return result if isinstance(result, int) else 0


def run() -> None:
    sys.exit(main())
