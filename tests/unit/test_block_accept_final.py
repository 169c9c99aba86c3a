"""``brecq`` with ``block_accept: final`` (:mod:`.block_accept`): each block starts from AdaRound re-solved
on its inputs as the blocks before it now give them and keeps the codes it learns, so the blocks
after it learn on its outputs; one decision at the end keeps the learned set or layer-wise
AdaRound's model, whichever has the lower calibration output error.  On the trained MNIST CNN
quantized for the DPU (real digits) the learned set ends below AdaRound's calibration output error
and below the per-block acceptance's (which reverts 3 of its 4 blocks there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from npuflow.errors import NpuflowError
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.apply import relative_error
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.algorithms.qdq_weights import read_codes
from tests.unit.test_block_accept import ROUNDING, adaround_start
from tests.unit.test_block_recon import one_torch_thread  # noqa: F401  (autouse fixture)


def _brecq(start, cache, accept: str, seed: int = 0):
    float_model, dynamic, _, feeds = start
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ff.fast_finetune(float_model, dynamic, feeds, ff.FinetuneSettings(
            method="brecq", iters=100, seed=seed, block_accept=accept, **ROUNDING), cache_dir=cache)
    finally:
        torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    cache = tmp_path_factory.mktemp("ff")
    return adaround_start(cache), cache


def _codes(float_model, model, rep) -> dict[str, np.ndarray]:
    names = {n for b in rep.blocks for n in b.layers}
    return {j.ql.name: read_codes(model, j.ql) for j in ff.layer_jobs(float_model, model, 8, []) if j.ql.name in names}


def test_final_acceptance_ends_below_adaround_and_the_per_block_acceptance(start):
    (float_model, _, layerwise, feeds), cache = start
    ref = run_outputs(float_model, feeds)
    adaround = relative_error(run_outputs(layerwise, feeds), ref)
    final, rep = _brecq(start[0], cache, "final")
    per_block, rep_pb = _brecq(start[0], cache, "per_block")
    err = relative_error(run_outputs(final, feeds), ref)
    assert err <= adaround
    assert all(b.output_error_before == pytest.approx(adaround, rel=1e-6) for b in rep.blocks)
    assert all(b.output_error_after == pytest.approx(err, rel=1e-6) for b in rep.blocks)
    # here the learned set is kept: below AdaRound and below the per-block acceptance's model
    assert not any(b.reverted for b in rep.blocks)
    assert err < relative_error(run_outputs(per_block, feeds), ref) < adaround
    assert _codes(float_model, final, rep) != {} and any(
        not np.array_equal(a, b) for a, b in zip(_codes(float_model, final, rep).values(),
                                                 _codes(float_model, per_block, rep_pb).values()))


def test_block_accept_other_than_per_block_needs_brecq(start):
    (float_model, dynamic, _, feeds), cache = start
    with pytest.raises(NpuflowError, match="block_accept"):
        ff.fast_finetune(float_model, dynamic, feeds, ff.FinetuneSettings(block_accept="final", **ROUNDING),
                         cache_dir=cache)
    with pytest.raises(NpuflowError, match="block_accept"):
        ff.fast_finetune(float_model, dynamic, feeds, ff.FinetuneSettings(method="brecq", block_accept="later",
                                                                          **ROUNDING), cache_dir=cache)
