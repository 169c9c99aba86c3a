"""Calibration on random noise instead of images warns, naming the input and the statistic.

Round 13's open item 1: ddddocr's OCR model calibrated on uniform noise read 1 of 12 text lines
as the float model does on cpu-int8 (12 of 12 calibrated on text lines) while quantize reported
0.9993 on that noise and said nothing.  Users of rknn-toolkit2 and Vitis AI expect to be told.
The statistic (neighbouring-pixel correlation, :mod:`npuflow.quant.calib_stats`) must not fire on
the bundled MNIST example's digits nor on the corpus' photo, text, page and digit calibration sets.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npuflow
from npuflow.quant.calib_stats import noise_like_inputs
from tests import fixture_models
from tests.corpus import registry

ROOT = Path(__file__).resolve().parents[2]
CODE = "NPF_QUANT_CALIB_LOOKS_RANDOM"


def _noise(n: int, shape=(1, 1, 28, 28)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.random(shape, dtype=np.float32) for _ in range(n)]


def test_cli_quantize_on_noise_warns_naming_the_input_and_the_correlation(tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, x in enumerate(_noise(4)):
        np.save(calib / f"{i}.npy", x)
    proc = subprocess.run([sys.executable, "-m", "npuflow", "quantize", str(fixture_models.mnist_cnn()), "-t",
                           "cpu-int8", "--calib", str(calib), "-o", str(tmp_path / "q")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"WARNING [{CODE}] calibration input 'input' looks like random noise" in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"neighbouring pixels correlate -?0\.0\d \(mean of \d sample", proc.stderr), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_api_quantize_logs_it_and_keeps_it_on_the_result(caplog):
    with caplog.at_level(logging.WARNING, logger="npuflow"):
        q = npuflow.quantize(fixture_models.mnist_cnn(), _noise(4), "DPUCZDX8G_ISA1_B4096")
    assert [w.code for w in q.calibration_warnings] == [CODE]
    assert CODE in caplog.text and "'input'" in caplog.text


def test_the_bundled_examples_digits_do_not_warn(caplog):
    digits = np.load(ROOT / "examples/mnist/eval_images.npy")[:8].astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="npuflow"):
        q = npuflow.quantize(fixture_models.mnist_cnn(), [d[None] for d in digits], "cpu-int8")
    assert q.calibration_warnings == [] and CODE not in caplog.text


@pytest.mark.parametrize("kind, shape", [("photo", [1, 3, 224, 224]), ("text", [1, 3, 48, 320]),
                                         ("page", [1, 3, 320, 320]), ("digits", [1, 1, 28, 28])])
def test_the_corpus_calibration_sets_read_as_images(kind, shape):
    samples = [{"x": x} for x in registry.MAKERS[kind](shape, 4, 0)]
    assert noise_like_inputs(samples) == []


def test_noise_is_found_in_either_layout_and_only_in_image_inputs():
    rng = np.random.default_rng(1)
    found = noise_like_inputs([{"nhwc": rng.standard_normal((1, 32, 48, 3)).astype(np.float32),
                                "audio": rng.standard_normal((1, 16000)).astype(np.float32),
                                "tiny": rng.standard_normal((1, 4, 8, 8)).astype(np.float32),
                                "tokens": rng.integers(0, 9, (1, 1, 32, 32))} for _ in range(2)])
    assert [f.name for f in found] == ["nhwc"] and abs(found[0].correlation) < 0.1 and found[0].samples == 2
    # uint8 pixels, as npuflow build's models with preprocessing take them (NHWC rgb), are judged too
    pixels = [{"img": rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)} for _ in range(2)]
    assert [f.name for f in noise_like_inputs(pixels)] == ["img"]
    # a smooth image in NHWC (rows correlated, columns too) is not flagged
    smooth = np.cumsum(rng.standard_normal((1, 32, 48, 3)), axis=2).astype(np.float32)
    assert noise_like_inputs([{"nhwc": smooth}]) == []
