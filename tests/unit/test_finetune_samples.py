"""``finetune_samples``: how many of the first calibration samples fast finetune and bias correction
read (default 64; the ranges read all).  Before it was a constant, so 256 calibration crops reached
EfficientNet-Lite0's AdaRound as 64 (docs/accuracy.md, "More calibration samples for fast finetune").  On the trained MNIST CNN for the DPU with real digits: the count read is the
configured one, a one-shot generator keeps as many for the steps after calibration, and the samples
beyond the default change the reconstruction."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
from tests import fixture_models
from tests.unit.test_block_accept import _digits

DPU = "DPUCZDX8G_ISA1_B4096"


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _quantize(feeds, **cfg):
    config = {"fast_finetune": {"method": "adaround", "iters": 30}, "min_output_cosine": 0.0, **cfg}
    return npuflow.quantize(str(fixture_models.mnist_cnn()), feeds, target=DPU, config=config)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))


def test_fast_finetune_reads_the_configured_samples(cache, caplog):
    feeds = _digits(96)
    with caplog.at_level("WARNING", logger="npuflow"):
        default = _quantize(feeds)
    assert "fast finetune reads the first 64 calibration samples" in caplog.text  # not silently fewer
    caplog.clear()
    with caplog.at_level("WARNING", logger="npuflow"):
        more = _quantize(feeds, finetune_samples=96)
    assert "fast finetune reads" not in caplog.text  # all of them read
    assert default.info["algorithms"]["fast_finetune"]["samples"] == 64
    assert more.info["algorithms"]["fast_finetune"]["samples"] == 96
    assert more.info["algorithms"]["bias_correction"]["checked_on"] == 96  # bias correction's auto check too
    # the ranges read all 96 either way: only the reconstruction's extra samples change the codes
    a, b = _weights(default.model), _weights(more.model)
    assert a.keys() == b.keys() and any(not np.array_equal(a[k], b[k]) for k in a)
    assert _quantize(feeds[:8], finetune_samples=96).info["algorithms"]["fast_finetune"]["samples"] == 8


def test_a_one_shot_iterator_keeps_the_configured_samples(cache):
    feeds = _digits(80)
    listed = _quantize(feeds, finetune_samples=72)
    once = _quantize((f for f in feeds), finetune_samples=72)  # read once: its first 72 are kept
    assert once.info["algorithms"]["fast_finetune"]["samples"] == 72
    a, b = _weights(listed.model), _weights(once.model)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_finetune_samples_must_be_positive():
    with pytest.raises(npuflow.errors.NpuflowError) as err:
        _quantize(_digits(4), finetune_samples=0)
    assert "finetune_samples" in str(err.value)
