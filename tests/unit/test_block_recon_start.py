"""Block reconstruction starts from layer-wise AdaRound: the start values round to the AdaRound
codes, and a block refined from AdaRound never ends with a higher output error than AdaRound's."""

from __future__ import annotations

import numpy as np
import torch

from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.adaround import GAMMA, ZETA, _init_v
from npuflow.quant.algorithms.block_recon import Block, BlockRunner, block_error, start_rest
from tests.unit.test_block_recon import _block_data, _feeds, _torch, _units, one_torch_thread, quantized  # noqa: F401


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
    adaround_error = block_error(start, _torch(x), _torch(y), start.current)
    assert np.isclose(rep.blocks[0].error_before, adaround_error, rtol=1e-6)
    assert block_error(end, _torch(x), _torch(y), end.current) <= adaround_error
