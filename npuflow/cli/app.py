"""The Typer application, the one CLI grammar, and the one place where errors become exit codes.

Command modules (``npuflow/cli/*_cmd.py``) register themselves on :data:`app`; each is a thin
wrapper over the public Python API.  :func:`main` turns an :class:`NpuflowError` into
``ERROR [CODE] message`` plus a hint on stderr and exit status 2, and Ctrl-C into one line and
exit status 130, never a traceback.

One grammar on every command, so that what a user learns on one holds on all:

- ``-t/--target TARGET``: the target name, fingerprint, arch.json or target YAML (``--march``,
  hb_mapper's name, is accepted too), from :func:`target_option`;
- ``-o/--output``: where the results go, from :func:`output_option`: a ``FILE`` for a command
  that writes one file (``compile`` -> ``.npuf``, ``prune run`` -> ``.pt``, ``analyze --output``
  -> ``.json``), a ``DIR`` for one that writes several (``check``, ``quantize``, ``run``,
  ``perf``, ``compare``, ``bench``, ``build``);
- ``--input-shape NAME=DIMS`` or ``--input-shape NAME DIMS`` (hb_mapper's spelling), from
  :func:`input_shape_option`;
- ``-v/--verbose LEVEL`` on the commands that print a per-node table (``check``, ``quantize``,
  ``build``): 0 summary lines, 1 (default) summary tables, 2 every node, from :func:`verbose_option`;
- readable metavariables (``MODEL``, ``TARGET``, ``DIR``, ``FILE``, ``NAME=FILE.npy``; none on
  flags), applied by :class:`Command` to every parameter (:func:`metavar_rule`), and usage lines
  without Typer's ``{model}`` braces;
- examples in every command's help (:func:`examples`), which ``docs/cli.md`` repeats: it is
  generated from this app by ``python -m npuflow.cli.docs``.
"""

from __future__ import annotations

import _thread
import logging
import signal
import sys
import threading
from typing import Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperGroup

from ..errors import NpuflowError


def metavar_rule(param: Any) -> None:
    """The one metavariable rule: flags show none (Typer would print ``<bool>``), choices show
    ``a|b``, an argument or option without an explicit metavar shows its name in capitals
    (``MODEL``), never Typer's internal ``<path>``/``<list[str]>``."""
    if isinstance(param, TyperArgument):
        # The name column already shows MODEL; Typer would add its type (``<path>``) beside it.
        param.display_type_rich = lambda ctx: None
        param.metavar = param.metavar or param.name.upper()
    elif getattr(param, "is_flag", False) or getattr(param, "count", False):
        param.metavar = ""
    elif param.metavar is None:
        desc = getattr(param, "type_descriptor", None)
        if desc is not None and desc.is_choice:
            param.metavar = "|".join(str(getattr(c, "value", c)) for c in desc.choices or ())
        else:
            param.metavar = param.name.upper()


class Command(TyperCommand):
    """Every npuflow command: :func:`metavar_rule` on each parameter, and a usage line that
    writes a required argument ``MODEL`` and an optional one ``[NAME]``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            metavar_rule(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            metavar_rule(option)
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                pieces.append(param.metavar if param.required else f"[{param.metavar}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


class Group(TyperGroup):
    """The app and its sub-apps (``analyze``, ``prune``): the help flag without ``<bool>``."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            metavar_rule(option)
        return option


class Typer(typer.Typer):
    """``typer.Typer`` whose commands are :class:`Command` and whose groups are :class:`Group`:
    every command module gets the grammar without repeating ``cls=``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=Group, **kwargs)

    def command(self, name: str | None = None, *, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(name, cls=cls or Command, **kwargs)


def examples(*lines: str) -> str:
    """A command's epilog: its examples, one command line each (shown by ``--help`` and in
    docs/cli.md; escaped so that Rich does not read ``[...]`` as markup)."""
    return "Examples:\n\n" + "\n".join(f"  {escape(line)}" for line in lines)


TARGET_HELP = "Target name, fingerprint, arch.json or target YAML (see npuflow targets; --march also works)."


def target_option(required: bool = True, help: str = TARGET_HELP) -> Any:
    """``-t/--target TARGET``, the same on every command that takes a target."""
    return typer.Option(... if required else None, "--target", "-t", metavar="TARGET", help=help,
                        show_default=False)


def output_option(default: Any, kind: Literal["FILE", "DIR"], help: str) -> Any:
    """``-o/--output FILE|DIR``: where the results go, a FILE for a command that writes one file,
    a DIR for one that writes several (the module docstring's rule)."""
    return typer.Option(default, "--output", "-o", metavar=kind, help=help)


def verbose_option(what: str) -> Any:
    """``-v/--verbose LEVEL``: 0 summary lines, 1 (default) summary tables (``what``), 2 every node."""
    return typer.Option(1, "--verbose", "-v", min=0, max=2, metavar="LEVEL",
                        help=f"0: summary lines only, 1: {what}, 2: every node.")


def input_shape_option(help: str = "Freeze an input's shape") -> Any:
    """``--input-shape NAME=DIMS`` / ``--input-shape NAME DIMS``, repeatable, on every command
    that freezes shapes (parsed by :func:`input_shapes_arg`)."""
    return typer.Option(
        None, "--input-shape", metavar="NAME=DIMS",
        help=f"{help}: NAME=DIMS or NAME DIMS, e.g. --input-shape x=1x3x48x320 or --input-shape x 1x3x48x320 "
             "(repeat for each input; --input_shape also works).")


app = Typer(
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
#: Other spellings accepted on every command, rewritten before Typer parses: hb_mapper's
#: ``--march`` is ``--target`` (one option, documented in :data:`TARGET_HELP`).
ALIASES = {"--input_shape": "--input-shape", "--march": "--target"}


def join_pair_options(argv: list[str]) -> list[str]:
    """``--input-shape x 1x3x8x8`` -> ``--input-shape x=1x3x8x8`` (``NAME=DIMS`` passes through);
    the :data:`ALIASES` become their option (``--march=T`` too)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok in PAIR_OPTIONS and i + 2 < len(argv) and "=" not in argv[i + 1] \
                and not argv[i + 2].startswith("-"):
            out += ["--input-shape", f"{argv[i + 1]}={argv[i + 2]}"]
            i += 3
            continue
        name, eq, value = tok.partition("=")
        out.append(ALIASES[name] + eq + value if name in ALIASES else tok)
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
            result = app(args=args, standalone_mode=False, prog_name="npuflow")  # also under python -m
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
INTERRUPTED = 130  # npuflow_launcher (Ctrl-C during the import) uses the same


class _CtrlC:
    """Ctrl-C while a command runs: the stages clean up as the ``KeyboardInterrupt`` unwinds them
    (staged results are discarded, earlier results stay), then one line and exit status 130,
    never a traceback.  Typer swallows the exception, so the handler remembers that it fired."""

    def __init__(self) -> None:
        self.pressed = False
        self._saved: list = []  # the handler replaced (only the main thread can replace it)
        self._saved_hook = sys.unraisablehook  # the hook replaced while the command runs
        self._again: threading.Timer | None = None  # a Ctrl-C delivered again (see _unraisable)

    def __enter__(self) -> "_CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._saved.append(signal.signal(signal.SIGINT, self._handle))
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc: object) -> None:
        for handler in self._saved:
            signal.signal(signal.SIGINT, handler if handler is not None else signal.default_int_handler)
        sys.unraisablehook = self._saved_hook
        if self._again is not None:  # the command ended first; its status already says 130
            self._again.cancel()

    def _handle(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def _unraisable(self, unraisable: Any) -> None:
        """A Ctrl-C that lands where Python cannot raise it (a finaliser, an import lock's
        release) would print "Exception ignored ..." with a traceback and then be lost, so the
        command would go on.  Deliver it again instead, from a timer thread so that it does not
        fire inside this hook: the main thread raises it a few milliseconds later, where the
        stages' clean-up sees it as usual."""
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            self.pressed = True
            self._again = threading.Timer(0.01, _thread.interrupt_main)
            self._again.start()
        else:
            self._saved_hook(unraisable)

    def report(self) -> int:
        """Print the one line; returns the exit status."""
        print("npuflow: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


def run() -> None:
    sys.exit(main())
