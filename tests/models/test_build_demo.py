"""The README's first command: ``python examples/demo.py`` (check -> build -> run) on the bundled
MNIST CNN for the DPU, and the bundled example data itself."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from npuflow.build import load_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "demo.py"), "--workdir", str(work), "--eval", "200"],
        capture_output=True, text=True, cwd=REPO, timeout=900,
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
    total = sum(p.stat().st_size for p in EXAMPLES.rglob("*") if p.is_file())
    assert total < 5_000_000
