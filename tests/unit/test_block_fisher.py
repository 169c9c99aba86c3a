"""``brecq``'s output-sensitivity (Fisher) block loss (:mod:`.block_fisher`, ``block_loss: fisher``) on
the trained MNIST CNN quantized for the DPU with real digits: the weights are the squared gradients
of the model's output error, non-uniform and finite; they change the rounding a block learns; and
with output-aware acceptance ``brecq`` still ends at or below layer-wise AdaRound's calibration
output error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npuflow.errors import NpuflowError
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.apply import relative_error
from npuflow.quant.algorithms.block_fisher import WEIGHT, OutputSensitivity, block_weights
from npuflow.quant.algorithms.block_recon import Block, BlockRunner, block_arrays, plan_blocks, reconstruct
from npuflow.quant.algorithms.capture import run_outputs
from tests.unit.test_block_accept import ROUNDING, adaround_start
from tests.unit.test_block_recon import one_torch_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """``(float model, AdaRound model, feeds, AdaRound cache)``."""
    cache = tmp_path_factory.mktemp("ff")
    return (*adaround_start(cache), cache)


def _sensitivity(start, loss: str = "fisher") -> tuple[OutputSensitivity, list, list]:
    float_model, _, layerwise, feeds, _ = start
    ref = run_outputs(float_model, feeds)
    quantized = run_outputs(layerwise, feeds)
    return OutputSensitivity(float_model, feeds, quantized, ref, loss), quantized, ref


def test_weights_are_the_squared_output_error_gradient_normalised(start):
    sens, quantized, ref = _sensitivity(start)
    names = [n.output[0] for n in sens.nodes]
    w = sens.weights(names)
    assert set(w) == set(names)
    for t, v in w.items():
        a = np.concatenate(v)
        assert len(v) == len(start[3]) and np.all(np.isfinite(a)) and np.all(a >= 0)
        assert np.isclose(a.mean(), 1.0, rtol=1e-4)
        assert a.std() > 0.5   # far from the plain loss's uniform weights
    # at the logits (the graph output) the gradient of sum((f - q)^2) / sum(f^2) is 2 (f - q) / sum(f^2)
    f = np.concatenate([r[0] for r in ref]).astype(np.float64)
    q = np.concatenate([o[0] for o in quantized]).astype(np.float64)
    expect = (f - q) ** 2 / np.mean((f - q) ** 2)
    np.testing.assert_allclose(np.concatenate(w["logits"]), expect, rtol=2e-3, atol=1e-5)
    # fisher_mse: half of it over a uniform floor, still mean 1
    half, _, _ = _sensitivity(start, "fisher_mse")
    np.testing.assert_allclose(np.concatenate(half.weights(["logits"])["logits"]), 0.5 + 0.5 * expect,
                               rtol=2e-3, atol=1e-5)


def test_fisher_weights_change_the_rounding_a_block_learns(start):
    float_model, _, layerwise, feeds, _ = start
    sens, _, _ = _sensitivity(start)
    names = {i.name for i in float_model.graph.input} | {o for n in float_model.graph.node for o in n.output}
    model = onnx.ModelProto()
    model.CopyFrom(layerwise)
    blocks = [u for u in plan_blocks(model, names, ff.layer_jobs(float_model, model, 8, [])) if isinstance(u, Block)]
    block = blocks[-1]   # the classifier: two Gemms
    floats = sens.collect(lambda ns: ff._collect_tensors(float_model, feeds, ns))(block.float_tensors())
    assert all(WEIGHT + block.targets[t] in floats for t in block.outputs)
    weights = block_weights(block, floats)
    inputs = ff.QuantizedInputs(model, feeds)
    x, xf, y = block_arrays(block, inputs.get, floats)
    learned = []
    for w in (None, weights):
        runner = BlockRunner(model, block)
        reconstruct(runner, x, xf, y, 100, 3e-2, 4, 0.5, weights=w)
        learned.append({k: sl.hard_codes() for k, sl in runner.soft.items()})
    assert any(not np.array_equal(learned[0][k], learned[1][k]) for k in learned[0])


def test_brecq_with_fisher_loss_ends_at_or_below_adaround(start):
    float_model, qmodel, layerwise, feeds, cache = start
    ref = run_outputs(float_model, feeds)
    adaround = relative_error(run_outputs(layerwise, feeds), ref)
    refined, rep = ff.fast_finetune(float_model, qmodel, feeds, ff.FinetuneSettings(
        method="brecq", iters=100, block_loss="fisher", **ROUNDING), cache_dir=cache)
    assert rep.blocks and all(r.cached for r in rep.layers)
    assert relative_error(run_outputs(refined, feeds), ref) <= adaround
    assert all(b.output_error_after <= b.output_error_before for b in rep.blocks)


def test_fisher_loss_outside_brecq_is_a_coded_conflict(start):
    float_model, qmodel, _, feeds, _ = start
    with pytest.raises(NpuflowError) as e:
        ff.fast_finetune(float_model, qmodel, feeds, ff.FinetuneSettings(block_loss="fisher", **ROUNDING))
    assert e.value.code == "NPF_QUANT_CONFIG_CONFLICT" and "block_loss" in str(e.value)


def test_a_float_op_torch_cannot_run_is_a_coded_error():
    w = numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Erf", ["c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], [w])
    model = helper.make_model(graph)
    with pytest.raises(NpuflowError) as e:
        OutputSensitivity(model, [], [], [])
    assert e.value.code == "NPF_QUANT_CONFIG_CONFLICT" and "Erf" in str(e.value)
