"""``npuflow check`` through the CLI: outputs, verbosity, and every error code it can raise."""

from __future__ import annotations

import json
import os
import stat

import onnx
import pytest
from onnx import TensorProto, helper

from tests import onnx_builders as B


@pytest.fixture(scope="module")
def seed_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "seed004.onnx"
    onnx.save(B.seed004(), path)
    return path


def test_check_writes_reports_and_table(cli, seed_model, tmp_path):
    out = tmp_path / "inspect"
    r = cli("check", seed_model, "--target", "bernoulli2", "--output", out, "-v", "2")
    assert r.returncode == 0, r.stderr
    assert "Convolution1" in r.stdout and "id(0)" in r.stdout and "id(1)" in r.stdout and "--" in r.stdout
    assert "BPU" in r.stdout and "HzSQuantizedConv" in r.stdout
    txt = (out / "inspect_bernoulli2.txt").read_text()
    for field in ("target info", "inspection summary", "graph name:", "node name:", "input nodes:", "output nodes:",
                  "op type:", "output shape:", "op attributes:", "assigned device:", "hardware constraints:",
                  "node messages:"):
        assert field in txt, field
    assert "kernel 9x9 outside [1,7]x[1,7]" in txt
    data = json.loads((out / "inspect_bernoulli2.json").read_text())
    assert [n["device"] for n in data["nodes"]] == ["NPU", "CPU", "NPU"]
    assert data["summary"]["npu_subgraphs"] == 2
    gv = (out / "inspect_bernoulli2.gv").read_text()
    assert "Convolution2" in gv and "#d9d9d9" in gv


def test_verbose_levels(cli, seed_model, tmp_path):
    quiet = cli("check", seed_model, "--target", "bernoulli2", "-o", tmp_path, "-v", "0")
    default = cli("check", seed_model, "--target", "bernoulli2", "-o", tmp_path)
    assert quiet.returncode == default.returncode == 0
    assert "Convolution2" not in quiet.stdout and "2 BPU subgraph(s)" in quiet.stdout
    assert "Convolution2" in default.stdout and "kernel 9x9" in default.stdout
    assert "Convolution1" not in default.stdout  # verbose 1 lists CPU nodes only
    assert "nodes per op type" in default.stdout and "why 1 node(s) run on the CPU" in default.stdout


def test_default_table_groups_cpu_nodes_by_reason(tmp_path):
    """YOLOv8n's 58 Sigmoids share one reason: one row with a few names, not 58 (issue 20 item 6)."""
    import io

    from rich.console import Console

    from npuflow.check import check
    from npuflow.check.render import NAMES_SHOWN, console_tables

    nodes = [helper.make_node("Sigmoid", [f"x{i}"], [f"x{i + 1}"], name=f"sig{i}") for i in range(10)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("x10", TensorProto.FLOAT, [1, 4, 8, 8])])
    report = check(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), "DPUCZDX8G_ISA1_B4096")
    out = io.StringIO()
    for table in console_tables(report, 1):
        Console(file=out, width=200).print(table)
    text = out.getvalue()
    assert "sig0, sig1, sig2, ... (+7)" in text and "sig9" not in text and NAMES_SHOWN == 3
    assert len(text.splitlines()) < 20
    out = io.StringIO()
    for table in console_tables(report, 2):
        Console(file=out, width=200).print(table)
    assert all(f"sig{i}" in out.getvalue() for i in range(10))


def test_input_shape_both_spellings_and_svg(cli, seed_model, tmp_path):
    r = cli("check", seed_model, "--target", "0xb000000000000002", "--input_shape", "data", "1x3x16x16",
            "-o", tmp_path, "--format", "svg")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "inspect_bernoulli2.svg").read_text().lstrip().startswith(("<?xml", "<svg"))
    data = json.loads((tmp_path / "inspect_bernoulli2.json").read_text())
    assert data["nodes"][0]["output_shape"] == [1, 16, 16, 16]
    r = cli("check", seed_model, "--target", "bernoulli2", "--input-shape", "data", "1x3x8x8", "-o", tmp_path)
    assert r.returncode == 0 and json.loads((tmp_path / "inspect_bernoulli2.json").read_text())["nodes"][0][
        "output_shape"] == [1, 16, 8, 8]


def _fake_dot(tmp_path, body: str | None):
    """A PATH with only python and (optionally) a fake ``dot``."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    if body is not None:
        dot = bindir / "dot"
        dot.write_text("#!/bin/sh\n" + body + "\n")
        dot.chmod(dot.stat().st_mode | stat.S_IEXEC)
    return str(bindir)


def test_graphviz_missing_is_a_coded_error(seed_model, tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PATH=_fake_dot(tmp_path, None))
    r = subprocess.run([sys.executable, "-m", "npuflow", "check", str(seed_model), "--target", "bernoulli2",
                        "-o", str(tmp_path / "o"), "--format", "png"], capture_output=True, text=True, env=env,
                       cwd=os.getcwd())
    assert r.returncode == 2 and "NPF_CHECK_GRAPHVIZ_MISSING" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "o" / "inspect_bernoulli2.gv").is_file()  # the .gv is still written


def test_graphviz_failure_is_a_coded_error(seed_model, tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PATH=_fake_dot(tmp_path, "echo broken >&2; exit 3") + os.pathsep + os.environ["PATH"])
    r = subprocess.run([sys.executable, "-m", "npuflow", "check", str(seed_model), "--target", "bernoulli2",
                        "-o", str(tmp_path / "o"), "--format", "svg"], capture_output=True, text=True, env=env,
                       cwd=os.getcwd())
    assert r.returncode == 2 and "NPF_CHECK_GRAPHVIZ_FAILED" in r.stderr
    assert not (tmp_path / "o" / "inspect_bernoulli2.svg").exists()


def test_check_outputs_are_one_set(seed_model, tmp_path, monkeypatch):
    """A check that fails while writing leaves the earlier files as they were, and no staging
    folder; a picture that cannot be drawn still publishes the text set and retires the earlier
    picture (which would describe another run)."""
    import npuflow
    from npuflow.check import files

    out = tmp_path / "o"
    first = npuflow.check(str(seed_model), "bernoulli2")
    files.write_outputs(first, out, "svg")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == {f"inspect_bernoulli2.{x}" for x in ("txt", "json", "gv", "svg")}

    real_write = files.write_atomic

    def failing(path, data):
        if str(path).endswith(".json"):
            raise KeyboardInterrupt
        return real_write(path, data)

    second = npuflow.check(str(seed_model), "bernoulli2")
    second.nodes[0].reasons = ["changed"]
    monkeypatch.setattr(files, "write_atomic", failing)
    with pytest.raises(KeyboardInterrupt):
        files.write_outputs(second, out, "svg")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing hidden left either
    monkeypatch.setattr(files, "write_atomic", real_write)

    monkeypatch.setenv("PATH", _fake_dot(tmp_path, None))
    with pytest.raises(npuflow.NpuflowError) as err:
        files.write_outputs(second, out, "svg")
    assert err.value.code == "NPF_CHECK_GRAPHVIZ_MISSING"
    assert sorted(p.name for p in out.iterdir()) == [f"inspect_bernoulli2.{x}" for x in ("gv", "json", "txt")]


def _err(r, code):
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"ERROR [{code}]" in r.stderr and "hint:" in r.stderr and "Traceback" not in r.stderr


def test_model_not_found(cli, tmp_path):
    _err(cli("check", tmp_path / "missing.onnx", "--target", "bernoulli2"), "NPF_MODEL_NOT_FOUND")


def test_not_onnx(cli, tmp_path):
    p = tmp_path / "x.onnx"
    p.write_text("hello, this is text")
    _err(cli("check", p, "--target", "bernoulli2"), "NPF_MODEL_NOT_ONNX")


def test_corrupt(cli, seed_model, tmp_path):
    p = tmp_path / "cut.onnx"
    p.write_bytes(seed_model.read_bytes()[:200])
    _err(cli("check", p, "--target", "bernoulli2"), "NPF_MODEL_CORRUPT")


def test_dynamic_shape(cli, tmp_path):
    m = B.seed004()
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "H"
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    r = cli("check", p, "--target", "bernoulli2")
    _err(r, "NPF_MODEL_DYNAMIC_SHAPE")
    assert "--input-shape data" in r.stderr


def test_opset_unsupported(cli, tmp_path):
    m = B.seed004()
    m.opset_import[0].version = 6  # older than ONNX Runtime's oldest; 7-10 are upgraded
    p = tmp_path / "old.onnx"
    onnx.save(m, p)
    _err(cli("check", p, "--target", "bernoulli2"), "NPF_MODEL_OPSET_UNSUPPORTED")


def test_bad_input_shape(cli, seed_model):
    _err(cli("check", seed_model, "--target", "bernoulli2", "--input-shape", "data", "1xAx3"), "NPF_MODEL_BAD_INPUT_SHAPE")


def test_unknown_input(cli, seed_model):
    r = cli("check", seed_model, "--target", "bernoulli2", "--input-shape", "images", "1x3x8x8")
    _err(r, "NPF_MODEL_UNKNOWN_INPUT")
    assert "data" in r.stderr


def test_unknown_target(cli, seed_model):
    _err(cli("check", seed_model, "--target", "0x603000b16013831"), "NPF_TARGET_UNKNOWN")


def test_bad_arch_json(cli, seed_model, tmp_path):
    p = tmp_path / "arch.json"
    p.write_text('{"board": "zcu102"}')
    _err(cli("check", seed_model, "--target", p), "NPF_TARGET_BAD_ARCH_JSON")
    p.write_text(json.dumps({"fingerprint": "0x101000016010407"}))
    r = cli("check", seed_model, "--target", p, "-o", tmp_path)
    assert r.returncode == 0 and (tmp_path / "inspect_DPUCZDX8G_ISA1_B4096.txt").is_file()
