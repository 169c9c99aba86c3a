"""``python -m npuflow.cli.docs > docs/cli.md``: the command-line reference, generated from the
Typer app so that it cannot drift from what ``--help`` prints (a test compares the committed
file with :func:`render`).

Each command gets its usage line, its description, a table of its arguments and options (names,
metavariable, meaning, default) and the examples of its help epilog.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any, Iterator

import typer
from typer.core import TyperArgument

from .app import app

PROG = "npuflow"

HEADER = """# Command-line reference

Generated from the Typer app by `python -m npuflow.cli.docs > docs/cli.md`; do not edit by hand
(`tests/unit/test_cli_grammar.py` fails when this file and the app differ).

The same grammar holds on every command:

- `-t, --target TARGET`: a bundled target's name (`npuflow targets`), its fingerprint, an
  `arch.json` or a target YAML.  hb_mapper's `--march` is accepted as another name for it.
- `-o, --output FILE|DIR`: where the results go.  A `FILE` for a command that writes one file
  (`compile` -> `.npuf`, `prune run` -> `.pt`, `analyze` -> `.json`), a `DIR` for a command that
  writes several (`check`, `quantize`, `run`, `compare`, `perf`, `bench`, `build`, whose `-o`
  overrides its config's `model_parameters.working_dir`).
- `-v, --verbose LEVEL` where a command prints a per-node table (`check`, `quantize`, `build`):
  0 summary lines, 1 (default) summary tables, 2 every node.
- `--input-shape NAME=DIMS` or `--input-shape NAME DIMS` (hb_mapper's spelling; `--input_shape`
  also works), repeated once per input, e.g. `--input-shape x 1x3x48x320`.
- Errors are `ERROR [NPF_...] message` plus a hint on stderr and exit status 2; Ctrl-C prints
  one line and exits with status 130.
- On a terminal, long stages show Rich progress bars; when the output is piped or logged they
  print one line per stage with its count and time on stderr.
"""


def _walk(group: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(cmd, "commands"):
            yield from _walk(cmd, path)
        else:
            yield path, cmd


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _param_row(param: Any, ctx: Any) -> str | None:
    if getattr(param, "hidden", False):
        return None
    if isinstance(param, TyperArgument):
        names = param.metavar
        value = ""
    else:
        names = ", ".join([*param.opts, *param.secondary_opts])
        value = param.metavar or ""
    default = ""
    if not param.required and param.default not in (None, [], ()) and not isinstance(param, TyperArgument) \
            and not getattr(param, "is_flag", False):
        default = str(param.default.value if hasattr(param.default, "value") else param.default)
    if getattr(param, "is_flag", False) and param.secondary_opts:
        default = param.opts[0] if param.default else param.secondary_opts[0]
    required = " (required)" if param.required else ""
    return f"| `{_cell(names)}` | {f'`{_cell(value)}`' if value else ''} | {_cell(param.help or '')}{required} | " \
           f"{f'`{_cell(default)}`' if default else ''} |"


def _command(path: str, cmd: Any) -> str:
    ctx = typer.Context(cmd, info_name=path)
    usage = " ".join([path, *cmd.collect_usage_pieces(ctx)])
    help_text = inspect.cleandoc(cmd.help or "").partition("\f")[0]
    lines = [f"## `{path}`", "", "```", usage, "```", "", help_text, "",
             "| argument / option | value | meaning | default |", "| --- | --- | --- | --- |"]
    lines += [row for p in cmd.get_params(ctx) if (row := _param_row(p, ctx))]
    if cmd.epilog:
        title, _, body = cmd.epilog.partition("\n\n")
        lines += ["", f"{title}", "", "```bash", *(line.strip().replace("\\[", "[") for line in body.splitlines()),
                  "```"]
    return "\n".join(lines) + "\n"


def render() -> str:
    """docs/cli.md as the app describes itself now."""
    from . import commands  # noqa: F401  (registers every command)

    root = typer.main.get_command(app)
    parts = [HEADER]
    parts += [_command(path, cmd) for path, cmd in _walk(root, PROG)]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(render())
