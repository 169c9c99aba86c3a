"""GPTQ from its columns' sums (:mod:`npuflow.quant.algorithms.layer_stats`, issue 18).

GPTQ reads a layer's columns only through ``X X^T``, ``Y X^T`` and ``sum Y^2``, so fast finetune
streams those sums over the calibration samples instead of holding every layer's float patches:
the sums equal those of the columns the problem held (same positions, same halves), GPTQ's codes
are the same, memory no longer grows with the column count and ``columns: all`` (every position)
runs.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from onnx import TensorProto, helper

from npuflow.errors import NpuflowError
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.gptq import gptq
from npuflow.quant.algorithms.layer_stats import LayerStats, layer_stats

from tests.unit.test_adaquant_lr import _net, _problem

TARGET = "DPUCZDX8G_ISA1_B4096"


def _sized_net(size: int):
    """:func:`_net` (3x3 conv, 3x3 depthwise, 1x1 conv) on ``size`` x ``size`` inputs."""
    model = _net()
    for value, channels in ((model.graph.input[0], 3), (model.graph.output[0], 4)):
        value.CopyFrom(helper.make_tensor_value_info(value.name, TensorProto.FLOAT, [1, channels, size, size]))
    return model


def _quantized(model, feeds, tmp_path, monkeypatch):
    import npuflow

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    return npuflow.quantize(model, feeds, target=TARGET, config={"include_bias_corr": False}).model


def _feeds(n: int, size: int, seed: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, size, size)).astype(np.float32)} for _ in range(n)]


def _settings(samples: int | None) -> ff.FinetuneSettings:
    return ff.FinetuneSettings(method="gptq", samples=samples, round_mode="half_even", bias_round_mode="half_even")


@pytest.mark.parametrize("feeds_count", [16, 15])   # 15: the halves split inside one sample's columns
def test_streamed_sums_equal_the_sums_of_the_columns_the_problem_held(feeds_count, tmp_path, monkeypatch):
    """Per layer of a small conv net (dense, depthwise, 1x1): the sums streamed one sample at a time from
    the quantized and the float model's layer inputs equal those of the problem's columns (the float
    patches collected in one pass), halves included, and GPTQ gives the same codes and bias from both."""
    model, feeds = _net(), _feeds(feeds_count, 10)
    qmodel = _quantized(model, feeds, tmp_path, monkeypatch)
    jobs = ff.layer_jobs(model, qmodel, 8, [])
    assert [j.sampler.groups for j in jobs] == [1, 8, 1]
    patches = ff.FloatPatches().get(model, feeds, {j.ql.name: (j.fl.node.input[0], j.sampler) for j in jobs})
    inputs, floats = ff.QuantizedInputs(qmodel, feeds), ff.QuantizedInputs(model, feeds)
    for job in jobs:
        linear = ff._with_linear_bias(model, qmodel, job)
        problem = ff.layer_problem(model, job, inputs, patches[job.ql.name], "half_even", linear=linear)
        held, streamed = LayerStats.of(problem), layer_stats(model, job, inputs, floats, "half_even", linear)
        assert [p.m for p in streamed.parts] == [p.m for p in held.parts] == [feeds_count * 4, feeds_count * 4]
        for a, b in zip(held.key_arrays(), streamed.key_arrays()):
            np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9)
        codes, bias = gptq(streamed)
        held_codes, held_bias = gptq(problem)
        assert np.array_equal(codes, held_codes)
        np.testing.assert_allclose(bias, held_bias, rtol=1e-6, atol=1e-7)
        assert streamed.error(codes, bias) == pytest.approx(problem.error(codes, bias), rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_error_from_the_sums_is_the_error_on_the_columns(seed):
    p = _problem(seed, 2.0 ** -4)
    stats = LayerStats.of(p)
    rng = np.random.default_rng(seed)
    for codes in (p.nearest_codes(), p.nearest_codes() + rng.integers(-1, 2, p.w.shape)):
        bias = p.b + rng.normal(0, 0.01, p.b.shape).astype(np.float32)
        assert stats.error(codes, bias) == pytest.approx(p.error(codes, bias), rel=1e-6)
        assert stats.part(1).error(codes) == pytest.approx(
            type(p)(p.w, p.s, p.b, p.x[:, :, 512:], p.y[:, :, 512:], p.qmin, p.qmax, p.round_mode).error(codes),
            rel=1e-6)


def _peak_bytes(model, qmodel, feeds, samples, cache) -> int:
    tracemalloc.start()
    try:
        ff.fast_finetune(model, qmodel, feeds, _settings(samples), cache_dir=cache)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_columns_and_every_position_runs(tmp_path, monkeypatch):
    """16 samples at 48 x 48: every position is 36,864 columns per layer, whose float patches (27,
    72 and 8 rows) take 15.8 MB, held together for all layers before the sums (peak 74.8 MB); from
    the sums one sample's columns at a time are held (peak 3.8 MB)."""
    model, feeds = _sized_net(48), _feeds(16, 48)
    qmodel = _quantized(model, feeds, tmp_path, monkeypatch)
    seen: list[int] = []
    monkeypatch.setattr(ff, "gptq", lambda p: seen.append(p.m) or gptq(p))
    small = _peak_bytes(model, qmodel, feeds, 64, tmp_path / "a")
    every = _peak_bytes(model, qmodel, feeds, 10**9, tmp_path / "b")
    assert seen == [64] * 3 + [16 * 48 * 48] * 3
    columns = (27 + 8 * 9 + 8) * 16 * 48 * 48 * 4     # float32 bytes of the three layers' float patches
    assert small < 0.05 * columns and every < 0.35 * columns, (small, every, columns)
    seen.clear()
    _, report = ff.fast_finetune(model, qmodel, feeds, _settings(None), cache_dir=tmp_path / "b")
    assert seen == [] and all(r.cached for r in report.layers)   # columns: all is every position: the same problems


def test_every_position_is_a_config_value_for_gptq_only(tmp_path, monkeypatch):
    import npuflow

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    feeds = _feeds(4, 10)
    q = npuflow.quantize(_net(), feeds, target=TARGET,
                         config={"include_bias_corr": False, "fast_finetune": {"method": "gptq", "columns": "all"}})
    assert q.info["algorithms"]["fast_finetune"]["layers"] == 3
    with pytest.raises(NpuflowError) as err:
        npuflow.quantize(_net(), feeds, target=TARGET, config={
            "include_bias_corr": False, "fast_finetune": {"method": "adaround", "iters": 5, "columns": "all"}})
    assert err.value.code == "NPF_QUANT_CONFIG_CONFLICT" and "columns" in err.value.message


def test_the_cache_key_separates_column_counts_and_keeps_the_same_problem(tmp_path, monkeypatch):
    """A layer's cached GPTQ result is found again for the same sums and never for another column
    count's (nor for a problem with columns: sums are keyed apart)."""
    model, feeds = _net(), _feeds(8, 10)
    qmodel = _quantized(model, feeds, tmp_path, monkeypatch)
    keys = {}
    for per in (8, 16, 8):
        job = ff.layer_jobs(model, qmodel, per, [])[2]
        inputs, floats = ff.QuantizedInputs(qmodel, feeds), ff.QuantizedInputs(model, feeds)
        linear = ff._with_linear_bias(model, qmodel, job)
        keys.setdefault(per, set()).add(ff._cache_key(layer_stats(model, job, inputs, floats, "half_even", linear),
                                                      _settings(per * 8)))
    assert len(keys[8]) == 1 and keys[8] != keys[16]
