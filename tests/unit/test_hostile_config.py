"""Hostile or mistyped configs and target files: each is a coded error, quickly and in little
memory, never a hang, a traceback or a gigabyte."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from npuflow.build import load_config
from npuflow.cli.app import main
from npuflow.errors import NpuflowError
from npuflow.quant.config import QuantConfig
from npuflow.targets import DATA_DIR, load_target
from npuflow.targets.expr import evaluate
from tests.unit.test_build_config import _calib, _conv_model, _edit, _write


def _alias_bomb(indent: str = "") -> str:
    """About 600 bytes describing 9**8 (43 million) strings."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def _refused_cheaply(load, code: str) -> NpuflowError:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(NpuflowError) as err:
            load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.code == code
    assert time.perf_counter() - t0 < 5 and peak < 20 * 2**20, (time.perf_counter() - t0, peak)
    assert len(str(err.value)) < 1000
    return err.value


def test_yaml_alias_bombs_are_refused_before_they_expand(tmp_path):
    bomb = _alias_bomb("  ")
    assert len(bomb) < 700
    build = yaml.safe_dump(_edit()).replace("model_parameters:\n", "model_parameters:\n  layer_out_dump: *h\n")
    (tmp_path / "b.yaml").write_text("npuflow:\n" + bomb + build)
    err = _refused_cheaply(lambda: load_config(tmp_path / "b.yaml"), "NPF_BUILD_CONFIG_INVALID_YAML")
    assert "expands to more than" in err.message
    (tmp_path / "q.yaml").write_text("keep_float: *h\nextra:\n" + bomb)
    _refused_cheaply(lambda: QuantConfig.load(tmp_path / "q.yaml"), "NPF_QUANT_CONFIG_FILE")
    (tmp_path / "t.yaml").write_text("description: *h\nextra:\n" + bomb)
    _refused_cheaply(lambda: load_target(tmp_path / "t.yaml"), "NPF_TARGET_BAD_FILE")


@pytest.mark.parametrize("text, reason", [("a: &a [*a]\n", "contains itself"), ("a: " + "[" * 100 + "]" * 100, "nests")])
def test_self_referring_and_deeply_nested_yaml(tmp_path, text, reason):
    (tmp_path / "q.yaml").write_text(text)
    with pytest.raises(NpuflowError, match=reason) as err:
        QuantConfig.load(tmp_path / "q.yaml")
    assert err.value.code == "NPF_QUANT_CONFIG_FILE"


def test_target_base_loops_are_refused(tmp_path):
    (tmp_path / "self.yaml").write_text("base: self.yaml\nname: X\n")
    with pytest.raises(NpuflowError, match="base chain is a loop: self.yaml -> self.yaml") as err:
        load_target(tmp_path / "self.yaml")
    assert err.value.code == "NPF_TARGET_BAD_FILE"
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: A\n")
    (tmp_path / "b.yaml").write_text("base: ./a.yaml\n")
    with pytest.raises(NpuflowError, match="a.yaml -> b.yaml -> a.yaml"):
        load_target(tmp_path / "a.yaml")


def _user_target(folder: Path, expr: str) -> Path:
    """The B4096 target as a user file, with one extra constraint on conv2d."""
    for name in ("_dpuczdx8g.yaml", "DPUCZDX8G_ISA1_B4096.yaml"):
        (folder / name).write_text((DATA_DIR / name).read_text())
    path = folder / "mine.yaml"
    path.write_text("base: DPUCZDX8G_ISA1_B4096.yaml\nname: MINE\nfingerprint: '0x1'\n"
                    f"ops:\n  conv2d:\n    constraints:\n      - {{label: Hostile, expr: '{expr}'}}\n")
    return path


def test_huge_constant_formula_is_refused_when_the_target_loads(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(NpuflowError, match=r"9 \*\* 387420489 exceeds 4096 bits") as err:
        load_target(_user_target(tmp_path, "input_channel < 9**9**9**9"))
    assert err.value.code == "NPF_TARGET_BAD_FILE" and time.perf_counter() - t0 < 5


def test_huge_formula_over_layer_values_is_a_coded_error_when_checking(tmp_path, capsys):
    target = _user_target(tmp_path, "input_channel ** 99999999 > 0")
    assert load_target(target).name == "MINE"  # nothing to evaluate without a layer
    _conv_model(tmp_path / "m.onnx")
    t0 = time.perf_counter()
    code = main(["check", str(tmp_path / "m.onnx"), "--target", str(target), "--output", str(tmp_path / "chk")])
    err = capsys.readouterr().err
    assert code == 2 and "ERROR [NPF_TARGET_FORMULA_BOUND]" in err and "3 ** 99999999 exceeds 4096 bits" in err, err
    assert time.perf_counter() - t0 < 30
    for text in ("2 ** 12 * 'x'", "ceil(1e308 * 10)"):
        with pytest.raises(NpuflowError) as bad:
            evaluate(f"input_channel < {text}", {"input_channel": 3})
        assert bad.value.code == "NPF_TARGET_FORMULA_BOUND"
    assert evaluate("input_channel < 2 ** 12", {"input_channel": 3}) is True


@pytest.mark.parametrize("key, value", [("mean_value", "nan"), ("scale_value", "1e400"), ("mean_value", "1 2 -inf")])
def test_non_finite_mean_and_scale_are_coded_errors(tmp_path, capsys, key, value):
    _conv_model(tmp_path / "m.onnx")
    _calib(tmp_path / "calib")
    code = main(["build", str(_write(tmp_path, _edit(input_parameters={key: value})))])
    err = capsys.readouterr().err
    assert code == 2 and f"ERROR [NPF_BUILD_BAD_VALUE] input_parameters.{key}: {value!r}" in err and "finite" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "tiny.npuf").exists()


def test_unbounded_finetune_iterations_are_refused(tmp_path):
    (tmp_path / "q.yaml").write_text("fast_finetune: {method: adaround, iters: 1000000000000}\n")
    with pytest.raises(NpuflowError, match="fast_finetune.iters: Input should be less than or equal to 100000") as err:
        QuantConfig.load(tmp_path / "q.yaml")
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"
    assert QuantConfig.from_dict({"fast_finetune": {"iters": 100_000}}).fast_finetune.iters == 100_000
