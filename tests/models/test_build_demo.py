"""The README's first command: ``python examples/demo.py`` (check -> build -> run) on the bundled
MNIST CNN for the DPU, and the bundled example data itself."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import numpy as np
import pytest

from npuflow.build import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.models


def _core_closure() -> set[str]:
    """Distributions a plain ``pip install .`` brings: the core dependencies and theirs."""
    from packaging.requirements import Requirement

    core = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [Requirement(r).name for r in core]
    seen: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for r in map(Requirement, requires):
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return seen


def _only_core_imports(folder: Path) -> dict[str, str]:
    """A ``sitecustomize`` that makes importing anything outside the stdlib and the core
    dependency closure fail, as on a machine where only ``pip install .`` was run."""
    closure = _core_closure()
    allowed = sorted({m for m, dists in packages_distributions().items()
                      if any(d.lower().replace("_", "-") in closure for d in dists)} | {"npuflow", "usercustomize"})
    (folder / "sitecustomize.py").write_text(
        "import sys\n"
        f"ALLOWED = set({allowed!r}) | set(sys.stdlib_module_names)\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] not in ALLOWED and not name.startswith('_'):\n"
        "            raise ImportError(f'{name} is not a core dependency of npuflow')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    return {**os.environ, "PYTHONPATH": str(folder)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo with only the core dependencies importable (no torch, sklearn, OpenCV...)."""
    work = tmp_path_factory.mktemp("demo")
    env = _only_core_imports(tmp_path_factory.mktemp("site"))
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--workdir", str(work), "--eval", "200"],
        capture_output=True, text=True, cwd=REPO, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return work, proc.stdout


def test_demo_builds_every_artifact(demo):
    work, _ = demo
    for suffix in ("_original_float_model.onnx", "_optimized_float_model.onnx", "_quantized_model.onnx",
                   ".npuf", "_build_report.json"):
        assert (work / f"mnist_cnn{suffix}").stat().st_size > 0, suffix
    assert not [p for p in work.iterdir() if p.name.startswith(".")], "staging files left behind"
    report = json.loads((work / "mnist_cnn_build_report.json").read_text())
    assert report["target"] == "DPUCZDX8G_ISA1_B4096"
    output_row = report["similarity"]["nodes"][-1]
    assert output_row["cosine"] > 0.99 and output_row["on"] == "DPU"


def test_demo_accuracies_are_sane(demo):
    _, out = demo
    acc = {k: float(v) for k, v in re.findall(r"^\s+(float|quantized|compiled)\s+([\d.]+) %", out, re.M)}
    assert set(acc) == {"float", "quantized", "compiled"}, out
    assert acc["float"] >= 97.0
    assert acc["quantized"] >= acc["float"] - 1.5
    assert abs(acc["compiled"] - acc["quantized"]) <= 0.5
    for step in ("check", "build", "run float", "run quantized", "run compiled", "perf estimate"):
        assert re.search(rf"^\s+{step}\s+[\d.]+ s$", out, re.M), step


def test_bundled_example_data_matches_config():
    """The committed data fits the config: 100 raw uint8 digits, a labelled evaluation set."""
    config = load_config(EXAMPLES / "mnist_dpu.yaml")
    files = sorted(config.path(config.calibration_parameters.cal_data_dir).iterdir())
    assert len(files) == 100 and all(f.stat().st_size == 28 * 28 for f in files)
    images = np.load(EXAMPLES / "mnist" / "eval_images.npy")
    labels = np.load(EXAMPLES / "mnist" / "eval_labels.npy")
    assert images.dtype == np.uint8 and images.shape == (1000, 1, 28, 28)
    assert sorted(np.bincount(labels).tolist()) == [100] * 10
    bundled = [p for p in EXAMPLES.rglob("*") if p.is_file() and not any(
        part.endswith("_output") or part == "__pycache__" for part in p.relative_to(EXAMPLES).parts)]
    assert sum(p.stat().st_size for p in bundled) < 5_000_000  # "a few MB at most"
