"""Block reconstruction (fast_finetune method ``brecq``, BRECQ with QDrop) on a small
inverted-residual network quantized for the DPU: the blocks it cuts, the block output error it
reaches against nearest rounding and layer-wise AdaRound, integer power-of-two weights, QDrop's
switch, config validation, and a compiled model that runs equal to ONNX Runtime."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow import numerics
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.algorithms.block_ops import fake_quantize32
from npuflow.quant.algorithms.block_recon import (Block, BlockRunner, block_arrays, block_error,
                                                  plan_blocks, reconstruct)
from npuflow.quant.algorithms.capture import capture
from npuflow.fake_quant import QuantSpec
from npuflow.quant.algorithms.qdq_weights import quantized_layers, read_codes, scale_rows
from npuflow.quant.config import QuantConfig
from tests.compile_check import compare_with_ort


DPU = "DPUCZDX8G_ISA1_B4096"
C, E, S = 8, 24, 12   # channels, expanded channels, spatial size


def _irnet(seed: int = 0) -> onnx.ModelProto:
    """stem conv 3x3 + ReLU6, two inverted-residual blocks (1x1 expand, ReLU6, 3x3 depthwise,
    ReLU6, 1x1 project, residual add), GAP, Flatten, Gemm."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def init(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    six = init("six", 6.0)
    zero = init("zero", 0.0)

    def conv(name, x, cin, cout, k, group=1, relu6=True):
        w = init(f"{name}.w", rng.normal(0, 1.0 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k)))
        b = init(f"{name}.b", rng.normal(0, 0.1, cout))
        nodes.append(helper.make_node("Conv", [x, w, b], [f"{name}.y"], name=name, group=group,
                                      kernel_shape=[k, k], pads=[k // 2] * 4))
        if not relu6:
            return f"{name}.y"
        nodes.append(helper.make_node("Clip", [f"{name}.y", zero, six], [f"{name}.r"], name=f"{name}.relu6"))
        return f"{name}.r"

    x = conv("stem", "x", 3, C, 3)
    for b in range(2):
        h = conv(f"b{b}.expand", x, C, E, 1)
        h = conv(f"b{b}.dw", h, E, E, 3, group=E)
        h = conv(f"b{b}.project", h, E, C, 1, relu6=False)
        nodes.append(helper.make_node("Add", [h, x], [f"b{b}.out"], name=f"b{b}.add"))
        x = f"b{b}.out"
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", init("fc.w", rng.normal(0, 0.3, (5, C))), init("fc.b", np.zeros(5))],
                               ["y"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "irnet", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, S, S])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _feeds(n: int = 16, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(0, 1, (1, 3, S, S)).astype(np.float32)} for _ in range(n)]


def _torch(d: dict[str, list[np.ndarray]]) -> dict[str, torch.Tensor]:
    """:func:`block_arrays`' per-sample values as one ``(N, ...)`` torch tensor each."""
    return {k: torch.from_numpy(np.concatenate(v)) for k, v in d.items()}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Small blocks lose time to thread hand-offs (fast_finetune runs them on one thread too)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def quantized():
    q = npuflow.quantize(_irnet(), _feeds(), target=DPU, config={"include_bias_corr": False})
    return q.float_model, q.dynamic_model


def _units(float_model, qmodel):
    jobs = ff.layer_jobs(float_model, qmodel, 64, [])
    names = {i.name for i in float_model.graph.input} | {o for n in float_model.graph.node for o in n.output}
    return plan_blocks(qmodel, names, jobs)


def test_blocks_are_the_inverted_residual_blocks(quantized):
    units = _units(*quantized)
    blocks = [u for u in units if isinstance(u, Block)]
    layers = [[j.ql.name for j in b.jobs] for b in blocks]
    assert ["b0.expand", "b0.dw", "b0.project"] in layers and ["b1.expand", "b1.dw", "b1.project"] in layers
    b1 = blocks[layers.index(["b1.expand", "b1.dw", "b1.project"])]
    assert (b1.inputs, b1.outputs) == (["b0.out"], ["b1.out"])  # the residual add is inside the block
    every = [j.ql.name for u in units for j in (u.jobs if isinstance(u, Block) else [u])]
    assert sorted(every) == sorted(l.name for l in quantized_layers(quantized[1]))  # every layer once


@pytest.mark.parametrize("mode", list(numerics.RoundMode))
@pytest.mark.parametrize("bits,signed", [(8, True), (8, False), (16, True)])
def test_float32_fake_quantization_is_numerics_bit_for_bit(mode, bits, signed):
    rng = np.random.default_rng(3)
    scale = np.float32(2.0 ** -4)
    codes = rng.integers(-40000, 40000, 4000)
    ties = ((codes + 0.5) * scale).astype(np.float32)           # exact halves
    x = np.concatenate([ties, rng.normal(0, 3000 * scale, 4000).astype(np.float32), [3e9, -3e9]]).astype(np.float32)
    want = numerics.fake_quantize(x, scale, 0, bits=bits, signed=signed, round_mode=mode)
    got = fake_quantize32(torch.from_numpy(x), torch.tensor(scale), torch.tensor(0.0),
                          QuantSpec(bits, signed, False, numerics.RoundMode(mode)), None)
    np.testing.assert_array_equal(got.numpy(), want)


def test_block_runner_computes_what_onnx_runtime_computes(quantized):
    """The torch block with the stored codes is the QDQ model's subgraph, to the last bit."""
    float_model, qmodel = quantized
    feeds = _feeds(4)
    inputs = ff.QuantizedInputs(qmodel, feeds)
    for block in (u for u in _units(float_model, qmodel) if isinstance(u, Block)):
        ref: dict[str, list[np.ndarray]] = {t: [] for t in block.outputs}
        capture(qmodel, feeds, block.outputs, lambda _, v: [ref[t].append(v[t]) for t in block.outputs])
        runner = BlockRunner(qmodel, block)
        with torch.no_grad():
            got = runner.run({t: torch.from_numpy(np.concatenate(inputs.get(t))) for t in block.inputs},
                             codes=runner.current)
        for t in block.outputs:
            np.testing.assert_array_equal(got[t].numpy(), np.concatenate(ref[t]))


def _block_data(float_model, qmodel, block, feeds=None):
    feeds = feeds or _feeds()
    inputs = ff.QuantizedInputs(qmodel, feeds)
    return block_arrays(block, inputs.get, ff._collect_tensors(float_model, feeds, block.float_tensors()))


def test_block_reconstruction_beats_nearest_and_layerwise_adaround(quantized):
    float_model, qmodel = quantized
    block = next(u for u in _units(float_model, qmodel) if isinstance(u, Block) and u.inputs == ["b0.out"])
    x, xf, y = _block_data(float_model, qmodel, block)
    iters = 200
    with torch.random.fork_rng():
        codes, before, after = reconstruct(BlockRunner(qmodel, block), x, xf, y, iters, 1e-2, 4, 0.5)
    assert after < 0.95 * before
    # layer-wise AdaRound with the same iterations per layer, measured on the same block
    layerwise, _ = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(iters=iters, round_mode="std_round", bias_round_mode="std_round"), cache_dir=None)
    runner = BlockRunner(layerwise, block)
    adaround_error = block_error(runner, x, y, runner.current)
    assert after <= adaround_error


def test_a_block_learns_without_copying_its_calibration_tensors_whole(quantized):
    """brecq stacks one step's batch at a time from the per-sample tensors it already holds: a full
    ``(N, ...)`` copy of a block's inputs, float inputs and targets cost PP-OCRv4 det (640) 0.8 GiB
    more at its 320x320 blocks, on a machine where that run was killed for memory."""
    import tracemalloc

    float_model, qmodel = quantized
    feeds = _feeds(64)
    block = next(u for u in _units(float_model, qmodel) if isinstance(u, Block) and u.inputs == ["b0.out"])
    inputs = ff.QuantizedInputs(qmodel, feeds)
    floats = ff._collect_tensors(float_model, feeds, block.float_tensors())
    held = [inputs.get(t) for t in block.inputs] + list(floats.values())
    total = sum(a.nbytes for v in held for a in v)
    runner = BlockRunner(qmodel, block)
    reconstruct(BlockRunner(qmodel, block), *block_arrays(block, inputs.get, floats), 1, 1e-2, 4, 0.5)  # imports
    tracemalloc.start()
    try:
        x, xf, y = block_arrays(block, inputs.get, floats)
        _, before, after = reconstruct(runner, x, xf, y, 10, 1e-2, 4, 0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after <= before
    assert peak < 0.5 * total, (peak, total)


def test_weights_stay_on_the_targets_integer_power_of_two_grid(quantized, tmp_path):
    float_model, qmodel = quantized
    out, report = ff.fast_finetune(float_model, qmodel, _feeds(), ff.FinetuneSettings(method="brecq", iters=30, round_mode="std_round", bias_round_mode="std_round"),
                                   cache_dir=tmp_path)
    assert len(report.blocks) == 4 and all(b.error_after <= b.error_before for b in report.blocks)
    changed = 0
    floats = {l.name: l for l in ff.weight_layers(float_model)}
    for ql, qo in zip(quantized_layers(qmodel), quantized_layers(out)):
        assert ql.q_name is not None
        stored = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == qo.q_name))
        assert stored.dtype == np.int8
        codes = read_codes(out, qo)
        lo, hi = qo.qlimits()
        assert codes.min() >= lo and codes.max() <= hi
        assert numerics.fix_pos_of(qo.scale) is not None  # power-of-two, per tensor
        assert qo.scale.size == 1
        w = ff.layer_weight(float_model, floats[qo.name]) / scale_rows(qo, codes.shape)
        assert np.all((codes == np.floor(w)) | (codes == np.ceil(w)) | (codes == lo) | (codes == hi))
        changed += int(np.sum(codes != read_codes(qmodel, ql)))
    assert changed > 0


def test_qdrop_probability_zero_is_plain_block_reconstruction(quantized):
    float_model, qmodel = quantized
    block = next(u for u in _units(float_model, qmodel) if isinstance(u, Block) and u.inputs == ["b0.out"])
    x, xf, _ = (_torch(a) for a in _block_data(float_model, qmodel, block))
    assert list(xf) == ["b0.out"]
    (out,) = block.outputs
    runner = BlockRunner(qmodel, block)
    gen = torch.Generator().manual_seed(0)

    def part(d, a, b, plus=0.0):
        return {k: v[a:b] + plus for k, v in d.items()}

    with torch.no_grad():
        plain = runner.run(part(x, 0, 4))[out]
        assert torch.equal(runner.run(part(x, 0, 4), drop_prob=0.0, x_float=part(xf, 0, 4, 1.0), gen=gen)[out], plain)
        # all dropped: no quantize step acts and the block reads the float model's input only
        a = runner.run(part(x, 0, 4), drop_prob=1.0, x_float=part(xf, 0, 4), gen=gen)[out]
        b = runner.run(part(x, 4, 8), drop_prob=1.0, x_float=part(xf, 0, 4), gen=gen)[out]
        assert torch.equal(a, b) and not torch.equal(a, plain)


@pytest.mark.parametrize("bad", [{"method": "blockwise"}, {"method": "brecq", "drop_prob": 1.5},
                                 {"method": "brecq", "block_batch": 0}])
def test_config_validation(bad):
    with pytest.raises(NpuflowError) as err:
        QuantConfig.from_dict({"fast_finetune": bad})
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"


def test_unknown_method_and_missing_torch_are_coded(quantized, monkeypatch):
    float_model, qmodel = quantized
    with pytest.raises(NpuflowError) as err:
        ff.fast_finetune(float_model, qmodel, _feeds(2), ff.FinetuneSettings(method="blockwise", round_mode="std_round", bias_round_mode="std_round"))
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(NpuflowError) as err:
        ff.fast_finetune(float_model, qmodel, _feeds(2), ff.FinetuneSettings(method="brecq", round_mode="std_round", bias_round_mode="std_round"))
    assert err.value.code == "NPF_QUANT_CONFIG_CONFLICT" and "torch" in err.value.message


def test_reconstructed_model_compiles_and_runs_equal_to_onnx_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    q = npuflow.quantize(_irnet(), _feeds(), target=DPU,
                         config={"fast_finetune": {"method": "brecq", "iters": 20}})
    assert q.info["algorithms"]["fast_finetune"]["blocks"]
    diffs = compare_with_ort(q.model, _feeds(1, seed=7)[0], DPU)
    assert max(diffs.values()) == 0, diffs
