"""Block reconstruction starts from layer-wise AdaRound (or GPTQ, `start: gptq`): the start values round to its
codes, and a block refined from AdaRound never ends with a higher output error than AdaRound's."""

from __future__ import annotations

import numpy as np
import torch

from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.adaround import GAMMA, ZETA, _init_v
from npuflow.quant.algorithms.block_recon import Block, BlockRunner, block_error, start_floor, start_rest
from tests.unit.test_block_recon import _block_data, _feeds, _units, one_torch_thread, quantized  # noqa: F401


def test_start_values_round_to_the_start_codes():
    rng = np.random.default_rng(1)
    rest = rng.uniform(0, 1, 1000).astype(np.float32)
    up = (rng.uniform(0, 1, 1000) < 0.5).astype(np.float32)
    start = start_rest(rest, up)
    v = torch.from_numpy(_init_v(start).astype(np.float32))
    h = torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1).numpy()
    np.testing.assert_array_equal(h >= 0.5, up >= 0.5)
    agree = (rest >= 0.5) == (up >= 0.5)
    far = np.abs(rest - 0.5) >= 0.1
    np.testing.assert_array_equal(start[agree & far], rest[agree & far])   # the float value where it agrees


def test_brecq_starts_from_adaround_and_never_ends_above_it(quantized, tmp_path):
    float_model, qmodel = quantized
    settings = dict(round_mode="std_round", bias_round_mode="std_round")
    layerwise, _ = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(iters=30, **settings),
                                    cache_dir=tmp_path)
    refined, rep = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(
        method="brecq", iters=30, **settings), cache_dir=tmp_path)
    assert rep.blocks and all(r.cached for r in rep.layers)   # the AdaRound start is the layer-wise run's
    assert all(b.error_after <= b.error_before for b in rep.blocks)
    # the first block's start is layer-wise AdaRound's codes, on the same inputs
    block = next(u for u in _units(float_model, qmodel) if isinstance(u, Block))
    x, _, y = _block_data(float_model, layerwise, block)
    start, end = BlockRunner(layerwise, block), BlockRunner(refined, block)
    adaround_error = block_error(start, x, y, start.current)
    assert np.isclose(rep.blocks[0].error_before, adaround_error, rtol=1e-6)
    assert block_error(end, x, y, end.current) <= adaround_error


def test_brecq_from_gptq_starts_at_gptqs_codes_and_never_ends_above_them(quantized, tmp_path):
    """``start: gptq``: the layer-wise pass is GPTQ's (its codes and bias), the blocks start from those
    codes even where GPTQ moved a code two steps from the float weight (``start_floor``), and every
    block ends at or below its start's error."""
    float_model, qmodel = quantized
    settings = dict(round_mode="std_round", bias_round_mode="std_round")
    layerwise, _ = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(method="gptq", iters=30, **settings),
                                    cache_dir=tmp_path)
    refined, rep = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(
        method="brecq", start="gptq", iters=30, **settings), cache_dir=tmp_path)
    assert rep.blocks and all(r.cached for r in rep.layers)   # the GPTQ start is the layer-wise run's
    assert all(b.error_after <= b.error_before for b in rep.blocks)
    block = next(u for u in _units(float_model, qmodel) if isinstance(u, Block))
    start = BlockRunner(layerwise, block)
    for sl in start.soft.values():   # the soft rounding's hard codes at the start are GPTQ's codes
        np.testing.assert_array_equal(np.clip(sl.floor.numpy() + (sl.h().detach().numpy() >= 0.5), sl.lo, sl.hi),
                                      start.current[sl.ql.node.input[1]].numpy().reshape(sl.floor.shape))
    x, _, y = _block_data(float_model, layerwise, block)
    gptq_error = block_error(start, x, y, start.current)
    assert np.isclose(rep.blocks[0].error_before, gptq_error, rtol=1e-6)


def test_start_floor_puts_far_codes_on_one_of_the_two_choices():
    ws = np.array([0.3, 0.3, 0.3, 0.3, -1.7], np.float32)
    codes = np.array([0, 1, -1, 3, -4], np.float32)
    fl = start_floor(ws, codes)
    np.testing.assert_array_equal(fl, [0, 0, -1, 2, -4])
    assert np.all((codes - fl >= 0) & (codes - fl <= 1))


def test_brecq_from_gptq_with_final_acceptance_re_solves_its_layers_with_gptq(quantized, tmp_path, monkeypatch):
    """``block_accept: final`` solves each block's layers again before the block learns; from GPTQ's
    start that is GPTQ again, not AdaRound (the block would otherwise start from another method's codes)."""
    float_model, qmodel = quantized
    methods: list[str] = []
    solve = ff._solve_layer

    def spy(*args, **kwargs):
        methods.append(args[5].method)
        return solve(*args, **kwargs)

    monkeypatch.setattr(ff, "_solve_layer", spy)
    _, rep = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(
        method="brecq", start="gptq", block_accept="final", iters=10, round_mode="std_round",
        bias_round_mode="std_round"), cache_dir=tmp_path)
    assert rep.blocks and methods and set(methods) == {"gptq"}, methods
