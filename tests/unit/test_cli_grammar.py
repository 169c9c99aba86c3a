"""One CLI grammar (issue 20 item 2): readable metavariables on every command, -t/-o/--input-shape
meaning the same everywhere, examples in every help, and docs/cli.md generated from the app."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

from npuflow.cli import app, main
from npuflow.cli import commands  # noqa: F401  (registers every command)
from npuflow.cli.docs import PROG, _walk, render

REPO = Path(__file__).resolve().parents[2]
COMMANDS = list(_walk(typer.main.get_command(app), PROG))
IDS = [path for path, _ in COMMANDS]
#: What Typer prints when a parameter has no readable metavariable.
INTERNAL = re.compile(r"<bool>|<list\[|<str>|<path>|<int>|<float>|<text>|\{[a-z_]+\}")


def test_docs_cli_md_is_what_the_generator_writes():
    """Regenerate with ``python -m npuflow.cli.docs > docs/cli.md``."""
    assert (REPO / "docs" / "cli.md").read_text() == render()


def test_command_order_does_not_depend_on_which_module_was_imported_first():
    """A test or plugin importing one command module early once moved that command up the list."""
    import subprocess
    import sys

    code = ("from npuflow.cli import prune_cmd, info_cmd, build_cmd\n"
            "from npuflow.cli.docs import render\nimport sys\nsys.stdout.write(render())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out == (REPO / "docs" / "cli.md").read_text()


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_help_shows_readable_metavariables_and_examples(path, cmd):
    args = path.split()[1:] + ["--help"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "NO_COLOR": "1"}, prog_name=PROG)
    assert result.exit_code == 0, result.output
    assert not INTERNAL.search(result.output), INTERNAL.findall(result.output)
    assert f"Usage: {path} [OPTIONS]" in result.output
    assert "Examples:" in result.output and f"  {path}" in (cmd.epilog or "")


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_target_output_and_input_shape_mean_the_same_everywhere(path, cmd):
    for p in cmd.params:
        opts = set(p.opts)
        if "-t" in opts or p.name == "target":
            assert opts == {"-t", "--target"} and p.metavar == "TARGET", path
            assert "--march also works" in p.help, path
        if "-o" in opts or p.name == "output":
            assert {"-o", "--output"} <= opts and p.metavar in ("FILE", "DIR"), path
        if "--input-shape" in opts:
            assert p.metavar == "NAME=DIMS" and "NAME=DIMS or NAME DIMS" in p.help, path
        if getattr(p, "is_flag", False):
            assert p.metavar == "", (path, p.name)


def test_every_command_that_writes_has_o():
    writers = {"check", "quantize", "analyze sensitivity", "analyze mixed-precision", "compile", "run", "compare",
               "perf", "bench", "prune run", "build"}
    have = {path.split(" ", 1)[1] for path, cmd in COMMANDS if any("-o" in p.opts for p in cmd.params)}
    assert writers <= have


def _identity(tmp_path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_march_is_another_name_for_target(tmp_path, capsys):
    model = _identity(tmp_path)
    for spelling in (["--march", "cpu-int8"], ["--march=cpu-int8"], ["-t", "cpu-int8"]):
        assert main(["check", str(model), *spelling, "-o", str(tmp_path / "i"), "-v", "0"]) == 0
    assert "npuflow: interrupted" not in capsys.readouterr().err


def test_run_o_and_the_old_output_dir(tmp_path, capsys):
    from npuflow.cli.app import join_pair_options

    assert join_pair_options(["check", "m", "--input_shape", "x", "1x4", "--march", "T"]) == \
        ["check", "m", "--input-shape", "x=1x4", "--target", "T"]
    run = typer.main.get_command(app).commands["run"]
    hidden = [p for p in run.params if p.hidden]
    assert [p.opts for p in hidden] == [["--output-dir"]]
