"""Bit-exactness of the compiled integer program on real models.

Each model is quantized with ``npuflow.quantize`` (a few random calibration samples, small input
sizes), compiled, and run with a dump; every integer tensor an accelerator subgraph writes must
equal what ONNX Runtime computes for the same tensor of ``quantized_model.onnx`` (with graph
optimisations disabled and at the default level) on power-of-two targets, and be within one LSB
on the float-scale target.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

import npuflow
from tests.compile_check import integer_tensors
from tests.qdq_builder import ort_values

DPU = "DPUCZDX8G_ISA1_B4096"

MODELS = {
    "ppocr_det": ("ppocr_det", "x", [1, 3, 160, 160]),
    "ppocr_rec": ("ppocr_rec", "x", [1, 3, 48, 160]),
    "ppocr_cls": ("ppocr_cls", "x", [1, 3, 48, 192]),
    "yolov8n": ("yolov8n", "images", [1, 3, 160, 160]),
    "mnist": ("mnist_cnn", "input", [1, 1, 28, 28]),
    "effnet": ("efficientnet_lite0", "input", [1, 3, 224, 224]),
}


def _samples(name: str, shape: list[int], n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{name: rng.uniform(-1, 1, shape).astype(np.float32)} for _ in range(n)]


_CACHE: dict[tuple[str, str], tuple] = {}


def _compiled(models, key: str, target: str):
    if (key, target) not in _CACHE:
        fixture, name, shape = MODELS[key]
        path = getattr(models, fixture)()
        q = npuflow.quantize(str(path), _samples(name, shape, 3, 0), target=target, input_shapes={name: shape})
        _CACHE[(key, target)] = (q.model, npuflow.compile(q.model, target), name, shape)
    return _CACHE[(key, target)]


def _max_lsb_diffs(model, compiled, feeds, levels) -> dict[str, int]:
    sess = npuflow.Session(compiled)
    names = integer_tensors(compiled)
    assert names
    with tempfile.TemporaryDirectory() as d:
        sess.run(feeds, dump_dir=d)
        index = json.loads((Path(d) / "index.json").read_text())
        diffs = {}
        for level in levels:
            ref = ort_values(model, feeds, names, level)
            for n in names:
                got = np.load(Path(d) / index[n])
                assert got.shape == ref[n].shape and got.dtype == ref[n].dtype, n
                diffs[f"{level}:{n}"] = int(np.abs(got.astype(np.int64) - ref[n].astype(np.int64)).max(initial=0))
    return diffs


@pytest.mark.models
@pytest.mark.parametrize("key", sorted(MODELS))
def test_power_of_two_target_is_bit_exact(models, key):
    model, compiled, name, shape = _compiled(models, key, DPU)
    assert any(s.on_accelerator for s in compiled.subgraphs)
    feeds = {name: np.random.default_rng(7).uniform(-1, 1, shape).astype(np.float32)}
    diffs = _max_lsb_diffs(model, compiled, feeds, ("disable", "all"))
    bad = {k: v for k, v in diffs.items() if v}
    assert not bad, f"{len(bad)} of {len(diffs)} tensors differ: {list(bad.items())[:5]}"
    out = npuflow.Session(compiled).run(feeds)
    ref = ort_values(model, feeds, list(out))
    for k in out:
        assert np.array_equal(out[k], ref[k]), k


@pytest.mark.models
@pytest.mark.parametrize("key", ["mnist", "ppocr_cls"])
def test_float_scale_target_within_one_lsb(models, key):
    model, compiled, name, shape = _compiled(models, key, "cpu-int8")
    feeds = {name: np.random.default_rng(8).uniform(-1, 1, shape).astype(np.float32)}
    diffs = _max_lsb_diffs(model, compiled, feeds, ("disable",))
    assert max(diffs.values()) <= 1, {k: v for k, v in diffs.items() if v > 1}
