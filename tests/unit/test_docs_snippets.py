"""The commands and paths README.md and docs/*.md show users still exist.

Users copy commands from the docs; a documented option that was renamed or a file that moved
fails on their machine, not in CI.  This checks every ``npuflow SUB ... --opt`` the docs write
(inline code spans that start with ``npuflow`` and command lines of fenced blocks) against the
Typer app, and every repository path in a code span against the checkout.  The Python blocks
need models and data the docs leave as placeholders, so they are run by hand
(benchmarks/results/docs_check.md), not here.  docs/cli.md is generated and checked by
test_cli_grammar.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer

from npuflow.cli import app
from npuflow.cli import commands  # noqa: F401  (registers every command)
from npuflow.cli.docs import PROG, _walk

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md"] + sorted(p for p in (REPO / "docs").glob("*.md") if p.name != "cli.md")
#: Command-line positions where a shell command starts inside a fenced block.
COMMAND_START = re.compile(r"(?:^|&&|\|\||;|\$ |-m )\s*(npuflow [^#\n]*)")
INLINE = re.compile(r"`(npuflow [^`]*)`")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
#: A repository path in a code span: a top-level folder of the checkout, then a file or folder.
REPO_PATH = re.compile(r"`((?:npuflow|benchmarks|tests|examples|docs)/[\w./-]+)`")


def _options() -> dict[str, set[str]]:
    """Command path (``analyze sensitivity``) -> every option spelling it accepts; groups map to set()."""
    root = typer.main.get_command(app)
    table: dict[str, set[str]] = {name: set() for name, cmd in root.commands.items() if hasattr(cmd, "commands")}
    for path, cmd in _walk(root, PROG):
        names = {"--help"}
        for param in cmd.params:
            names.update(param.opts)
            names.update(getattr(param, "secondary_opts", []))
        table[path.split(" ", 1)[1]] = names
    return table


def _commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every npuflow command the markdown shows."""
    found: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            found += [(number, m.group(1).strip()) for m in COMMAND_START.finditer(line)]
        else:
            found += [(number, m.group(1)) for m in INLINE.finditer(line)]
    return found


def _problems(doc: Path, table: dict[str, set[str]]) -> list[str]:
    """Unknown commands and options of one markdown file, as 'file:line: what'."""
    names = sorted(table, key=len, reverse=True)
    out: list[str] = []
    for number, command in _commands(doc.read_text()):
        rest = command[len("npuflow "):].replace("\\|", "|")
        head = rest.split(" ", 1)[0]
        if not re.fullmatch(r"[a-z][a-z-]*(/[a-z-]+)*", head):
            continue  # prose such as `npuflow / ORT`, not a command
        # `run/info/graph --model NAME`: each alternative must take the options
        alternatives = head.split("/") if "/" in head else [None]
        for alternative in alternatives:
            line = rest if alternative is None else alternative + rest[len(head):]
            sub = next((n for n in names if line == n or line.startswith(n + " ")), None)
            if sub is None:
                out.append(f"{doc.name}:{number}: no command 'npuflow {line.split(' ', 1)[0]}' in `{command}`")
                continue
            for option in OPTION.findall(line[len(sub):]):
                if option not in table[sub]:
                    out.append(f"{doc.name}:{number}: 'npuflow {sub}' has no option {option} (`{command}`)")
    return out


def test_documented_commands_and_options_exist():
    table = _options()
    problems = [p for doc in DOCS for p in _problems(doc, table)]
    assert not problems, "documented commands the CLI does not accept:\n" + "\n".join(problems)


def _exists(path: str) -> bool:
    """A file or folder of the checkout, or ``folder/module.name``: a name defined in ``module.py``."""
    if (REPO / path).exists():
        return True
    module, _, name = path.rpartition(".")
    source = REPO / f"{module}.py"
    return bool(module) and source.is_file() and re.search(rf"^(def|class) {name}\b", source.read_text(), re.M) is not None


def test_documented_repository_paths_exist():
    missing = [
        f"{doc.name}:{number}: {path}"
        for doc in DOCS
        for number, line in enumerate(doc.read_text().splitlines(), 1)
        for path in (m.group(1).rstrip(".,:;") for m in REPO_PATH.finditer(line))
        if "*" not in path and not _exists(path)
    ]
    assert not missing, "paths the docs name that the checkout lacks:\n" + "\n".join(missing)


def test_the_checker_catches_a_vanished_option_and_command(tmp_path):
    """The check itself: a misspelt option and an unknown command are reported, prose is not."""
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Run `npuflow compile q.onnx -t cpu-int8 --no-such-flag -o m.npuf` or\n"
        "```bash\nnpuflow compiel q.onnx  # typo\nnpuflow info m.npuf --json\n```\n"
        "`npuflow / ORT` is prose; `npuflow run/info --model NAME` is fine.\n"
    )
    problems = _problems(doc, _options())
    assert problems == [
        "doc.md:1: 'npuflow compile' has no option --no-such-flag "
        "(`npuflow compile q.onnx -t cpu-int8 --no-such-flag -o m.npuf`)",
        "doc.md:3: no command 'npuflow compiel' in `npuflow compiel q.onnx`",
    ]


def test_the_path_check_takes_files_and_module_names():
    """``npuflow/errors.NpuflowError`` (a class of a module) counts as present; moved files do not."""
    assert _exists("npuflow/errors.py") and _exists("npuflow/errors.NpuflowError")
    assert not _exists("npuflow/errors.NoSuchName") and not _exists("npuflow/no_such_module.py")
