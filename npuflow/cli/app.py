"""The Typer application and the one place where errors become exit codes.

Command modules (``npuflow/cli/*_cmd.py``) register themselves on :data:`app`; each is a thin
wrapper over the public Python API.  :func:`main` turns an :class:`NpuflowError` into
``ERROR [CODE] message`` plus a hint on stderr and exit status 2, and Ctrl-C into one line and
exit status 130, never a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading

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


#: Options written ``--input-shape NAME DIMS`` (two values, repeatable: hb_mapper's syntax; the
#: underscore spelling appears in seed 004's example).  Typer cannot declare a repeatable
#: two-value option, so :func:`main` joins the pair into one ``NAME=DIMS`` value first.
PAIR_OPTIONS = ("--input-shape", "--input_shape")


def join_pair_options(argv: list[str]) -> list[str]:
    """``--input-shape x 1x3x8x8`` -> ``--input-shape x=1x3x8x8`` (``NAME=DIMS`` passes through)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in PAIR_OPTIONS and i + 2 < len(argv) and "=" not in argv[i + 1] \
                and not argv[i + 2].startswith("-"):
            out += ["--input-shape", f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        out.append("--input-shape" if tok in PAIR_OPTIONS else tok)
        i += 1
    return out


def input_shapes_arg(values: list[str] | None) -> dict[str, list[int]]:
    """Parsed ``--input-shape`` values: ``NAME=DIMS`` (what :func:`join_pair_options` makes of
    ``NAME DIMS``) or ``NAME:DIMS``; every command uses this one parser."""
    from ..model import parse_input_shapes

    pairs = []
    for v in values or []:
        sep = "=" if "=" in v else ":"
        name, found, dims = v.rpartition(sep)
        if not found or not name:
            raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value=v, reason="expected NAME DIMS, e.g. images 1x3x224x224")
        pairs.append((name, dims))
    return parse_input_shapes(pairs)


def fail(exc: NpuflowError) -> int:
    err_console.print(exc.render(), markup=False, highlight=False)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``npuflow`` script; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with _CtrlC() as ctrl_c:
        try:
            from . import commands  # noqa: F401  (registers every command on ``app``)

            args = join_pair_options(list(sys.argv[1:] if argv is None else argv))
            result = app(args=args, standalone_mode=False)
        except NpuflowError as exc:
            return fail(exc)
        except (typer.Abort, KeyboardInterrupt):
            return ctrl_c.report()
        except typer.Exit as exc:
            return exc.exit_code
        except typer.TyperException as exc:  # usage errors: Typer prints them with the usage line
            exc.show()
            return getattr(exc, "exit_code", 2)
        if ctrl_c.pressed:  # Typer turns KeyboardInterrupt into a silent exit status 130
            return ctrl_c.report()
    return result if isinstance(result, int) else 0


#: Exit status after Ctrl-C: 128 + SIGINT, what shells report for an interrupted program.
INTERRUPTED = 130


class _CtrlC:
    """Ctrl-C while a command runs: the stages clean up as the ``KeyboardInterrupt`` unwinds them
    (staged results are discarded, earlier results stay), then one line and exit status 130,
    never a traceback.  Typer swallows the exception, so the handler remembers that it fired."""

    def __init__(self) -> None:
        self.pressed = False
        self._saved: list = []  # the handler replaced (only the main thread can replace it)

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._saved.append(signal.signal(signal.SIGINT, self._handle))
        return self

    def __exit__(self, *exc: object) -> None:
        for handler in self._saved:
            signal.signal(signal.SIGINT, handler if handler is not None else signal.default_int_handler)

    def _handle(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def report(self) -> int:
        """Print the one line; returns the exit status."""
        print("npuflow: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


def run() -> None:
    sys.exit(main())
