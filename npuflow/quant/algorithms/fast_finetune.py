"""Fast finetune: AdaRound or AdaQuant over every weight layer of a QDQ model, or block
reconstruction (``brecq``, :mod:`.block_recon`) over blocks of layers.

Each layer solves ``W x_q + b ~ W_float x_float + b``: its inputs ``x_q`` are what the quantized
model feeds it and its targets are the float layer's outputs on the float model's inputs (input
patches at sampled output positions).  One streaming pass over the float model collects every
layer's float patches.  Layers are solved in graph order and each one's ``x_q`` comes from the
model *as finetuned so far* (:class:`QuantizedInputs`), as AIMET and Vitis AI do:
inputs collected once from the nearest-rounded model go stale as earlier layers change, and the
more iterations each layer gets, the more it fits inputs it will never see (EfficientNet-Lite0
on B4096, AdaRound 200 iterations/layer: 38.0 % FP32 agreement with inputs collected once,
81.0 % sequentially).

Results are cached on disk per layer under a content hash of the layer's float weights, weight
scale, calibration inputs, settings and the solver version, so a re-run with other settings (another method for
other models, bias correction on or off, a changed activation config) skips the layers whose
problem did not change.

``learn_threshold`` (off by default) also moves each layer's power-of-two weight fix position
against the layer's output error (TQT, issue 18): AdaQuant learns ``log2 t`` with TQT's
straight-through gradient jointly with the weights and bias (:func:`.adaquant.adaquant_threshold`),
AdaRound moves to ``p-1`` or ``p+1`` only where that position's full AdaRound beats the calibrated
one's, short runs choosing which neighbour gets a full run (:func:`.adaround.search_fix_position`).
A moved position rewrites the weight's scale and the int32 bias's (``s_in * s_w``; a ``MatMul``'s
bias in the ``Add`` after it too, AdaRound's rounded again from the float bias); the activation
positions stay as calibration chose them.

A ``MatMul`` whose bias is the int32 ``Add`` after it (PP-OCRv4 rec's linears) has that bias in its
problem (:func:`_with_linear_bias`): the target adds the float bias, and AdaQuant's learned bias is
written into the ``Add``'s codes, so the error that chose it is the written layer's.  A layer with no
bias at all (a ``Conv`` without a bias input: PP-OCRv4 det's eight FPN convs, YOLOv8n's DFL conv)
learns none (``LayerProblem.has_bias``): adding a bias input would be a graph change after export
whose placement and compilation every target would have to agree on, for a handful of layers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from ...errors import NpuflowError
from ...model import write_atomic
from ...outputs import cache_root
from .adaquant import DEFAULT_LR as ADAQUANT_LR, adaquant, adaquant_threshold
from .activation import Activation, fused_activation
from .adaround import DEFAULT_LR as ADAROUND_LR, adaround, search_fix_position
from .gptq import gptq
from .block_accept import MODES as BLOCK_ACCEPTS, OutputCheck
from .block_fisher import OutputSensitivity, block_weights
from .block_recon import (Block, BlockResult, BlockRunner, FloatValues, block_arrays, plan_blocks, reconstruct,
                          require_torch, write_block)
from ...graph import GraphView, set_array, slice_model
from ...passes.linear_bias import linear_bias
from .capture import Feed, capture, run_outputs
from .layers import WeightLayer, layer_bias, layer_weight, weight_layers
from .layer_problem import LayerProblem, forward, torch_available, torch_threads
from .layer_stats import LayerStats, layer_stats
from .patches import PatchSampler, grouped_weight
from .qdq_weights import (QuantizedLayer, code_limits, quantized_layers, read_bias, read_codes, scale_rows, write_bias,
                          write_codes)

log = logging.getLogger(__name__)

METHODS = ("adaround", "adaquant", "brecq", "gptq")
STARTS = ("nearest", "gptq")
BLOCK_LOSSES = ("mse", "fisher", "fisher_mse")


@dataclass
class FinetuneSettings:
    """``fast_finetune`` settings of the quantizer config (Vitis AI's ``fast_finetune``)."""

    method: str = "adaround"
    iters: int = 500
    lr: float | None = None      # None: 0.1 for AdaRound (adaround.DEFAULT_LR), 3e-3 for AdaQuant (adaquant.DEFAULT_LR), 3e-2 for brecq
    batch: int = 256             # patch columns per iteration
    samples: int | None = 2048   # patch columns per layer over the feeds (config fast_finetune.columns; None: all)
    backend: str = "auto"        # auto | numpy | torch
    round_mode: str = field(kw_only=True)       # the target's weight tie rule (the export's); no default
    bias_round_mode: str = field(kw_only=True)  # the target's bias tie rule, for AdaQuant's int32 biases
    seed: int = 0
    drop_prob: float = 0.5       # brecq: QDrop's probability of passing an activation unquantized
    block_batch: int = 4         # brecq: calibration samples per step
    block_layers: int = 3        # brecq: weight layers a block holds at least
    block_loss: str = "mse"      # brecq: mse | fisher | fisher_mse (elements weighted by output sensitivity, .block_fisher)
    block_accept: str = "per_block"  # brecq: per_block | final (learned codes decided on the model, .block_accept)
    input_drop: float = 0.0      # adaquant: QDrop, chance a layer input value is the float model's while learning
    post_activation: bool = False  # adaround: reconstruct after the activation fused behind each layer (.activation)
    learn_threshold: bool = False  # adaquant/adaround: move each weight's power-of-two fix position (TQT; module doc)
    start: str = "nearest"       # adaquant, brecq: nearest | gptq (learn from GPTQ's codes and bias, .gptq)

    def key(self) -> dict:
        return {"method": self.method, "iters": self.iters, "lr": self.learning_rate, "batch": self.batch,
                "seed": self.seed, "round_mode": self.round_mode, "input_drop": self.input_drop, "v": 1,
                # only when on: the pre-activation problems keep their cached results
                **({"post_activation": True} if self.post_activation and self.method == "adaround" else {}),
                # AdaQuant's solver changes with it; AdaRound's final solve at a kept position does not
                **({"learn_threshold": True} if self.learn_threshold and self.method == "adaquant" else {}),
                **({"start": self.start} if self.start != "nearest" and self.method in ("adaquant", "brecq") else {})}

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return {"adaquant": ADAQUANT_LR, "brecq": 3e-2}.get(self.method, ADAROUND_LR)


@dataclass
class LayerResult:
    name: str
    error_before: float
    error_after: float
    cached: bool
    seconds: float
    fix_shift: int = 0  # learn_threshold: weight fix position moved by (+1: one step finer scale)


@dataclass
class FinetuneReport:
    layers: list[LayerResult] = field(default_factory=list)
    blocks: list[BlockResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_cache_dir() -> Path:
    return cache_root("fast_finetune")


def resolve_backend(backend: str) -> str:
    """``auto`` picks numpy: the per-layer problems are small matrix products, where numpy is
    as fast as torch on CPU and has no start-up cost; ``torch`` must be asked for."""
    if backend == "auto":
        return "numpy"
    if backend == "torch" and not torch_available():
        log.warning("torch is not installed; fast finetune uses numpy")
        return "numpy"
    return backend


def fast_finetune(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    calibration: Iterable[Feed],
    settings: FinetuneSettings,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    float_patches: FloatPatches | None = None,
) -> tuple[onnx.ModelProto, FinetuneReport]:
    """A copy of ``qmodel`` whose weight codes (and, for AdaQuant, biases) were finetuned.

    ``float_patches``: the float side shared by calls on the same float model and calibration samples
    (restarts with other seeds, :mod:`.restarts`)."""
    st = settings
    if st.method not in METHODS:
        raise NpuflowError("NPF_QUANT_BAD_CONFIG",
                           reason=f"fast_finetune.method must be one of {', '.join(METHODS)}, not {st.method!r}")
    if st.method == "brecq":
        require_torch()
        if st.learn_threshold:
            raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.learn_threshold",
                               reason="learn_threshold moves weight fix positions in AdaRound's and AdaQuant's layer "
                                      "problems, not in brecq's blocks (set learn_threshold: false or method: adaquant)")
    if st.block_loss not in BLOCK_LOSSES or (st.block_loss != "mse" and st.method != "brecq"):
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.block_loss",
                           reason=f"block_loss {st.block_loss!r}: one of {', '.join(BLOCK_LOSSES)}, and other than "
                                  f"mse only with method brecq (not {st.method})")
    if st.block_accept not in BLOCK_ACCEPTS or (st.block_accept != "per_block" and st.method != "brecq"):
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.block_accept",
                           reason=f"block_accept {st.block_accept!r}: one of {', '.join(BLOCK_ACCEPTS)}, and other "
                                  f"than per_block only with method brecq (not {st.method})")
    if st.start not in STARTS or (st.start != "nearest" and st.method not in ("adaquant", "brecq")):
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.start",
                           reason=f"start {st.start!r}: one of {', '.join(STARTS)}, and other than nearest only with "
                                  f"method adaquant or brecq (not {st.method}; method gptq alone is GPTQ without "
                                  "AdaQuant)")
    if st.learn_threshold and st.method == "gptq":
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.learn_threshold",
                           reason="learn_threshold moves weight fix positions in AdaRound's and AdaQuant's layer "
                                  "problems; gptq rounds on the calibrated grid (set learn_threshold: false or "
                                  "method: adaquant)")
    if st.samples is None and st.method != "gptq":
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.columns",
                           reason=f"columns: all holds every position's input patch of every layer for {st.method}; "
                                  "only gptq keeps their sums instead (set a number of columns, e.g. 8192, or "
                                  "method: gptq)")
    if st.learn_threshold and st.method == "adaquant":
        require_torch()  # TQT's straight-through gradient is the QAT quantizer's (npuflow.fake_quant)
    backend = resolve_backend(st.backend)
    if st.start == "gptq" and st.method == "adaquant" and (backend != "numpy" or st.learn_threshold):
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.start",
                           reason=f"start gptq starts AdaQuant's numpy solver, not backend {backend}"
                                  f"{' with learn_threshold' if st.learn_threshold else ''} (set start: nearest)")
    if st.input_drop > 0 and (st.method != "adaquant" or backend != "numpy"):
        raise NpuflowError(
            "NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.input_drop",
            reason=f"input_drop {st.input_drop} mixes float inputs into AdaQuant's layer problems (numpy backend), "
                   f"not method {st.method} with backend {backend} (brecq has drop_prob; set input_drop: 0)")
    t0 = time.time()
    feeds = list(calibration)
    start = FinetuneReport()
    if st.method == "brecq":   # blocks start from layer-wise AdaRound's (start: gptq: GPTQ's) rounding
        layerwise = replace(st, method="gptq" if st.start == "gptq" else "adaround", lr=None, block_loss="mse",
                            block_accept="per_block", start="nearest")
        qmodel, start = fast_finetune(float_model, qmodel, feeds, layerwise, cache_dir, progress)
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    report = FinetuneReport(layers=start.layers)
    per_sample = EVERY_POSITION if st.samples is None else max(1, st.samples // max(len(feeds), 1))
    jobs = layer_jobs(float_model, out, per_sample, report.skipped)
    units: list[LayerJob | Block] = list(jobs)
    if st.method == "brecq":
        float_names = {i.name for i in float_model.graph.input} | {o for n in float_model.graph.node for o in n.output}
        units = plan_blocks(out, float_names, jobs, st.block_layers)
        units = [u for u in units if isinstance(u, Block)]   # the layers outside blocks keep the AdaRound start
    alone = [u for u in units if isinstance(u, LayerJob)]
    blocks = [u for u in units if isinstance(u, Block)]
    resolve = [j for b in blocks for j in b.jobs] if st.block_accept == "final" else []   # see _restart_block
    # GPTQ alone reads each layer's columns through their sums, streamed from the float model's layer
    # inputs (memory independent of the column count, layer_stats.py); the others hold float patches
    streams = st.method == "gptq"
    wanted = {j.ql.name: (j.fl.node.input[0], j.sampler) for j in ([] if streams else alone) + resolve}
    fx = (float_patches or FloatPatches()).get(float_model, feeds, wanted)
    float_inputs = QuantizedInputs(float_model, feeds) if streams else None
    check = OutputCheck(float_model, feeds, st.block_accept) if blocks else None
    collect: Callable[[list[str]], dict[str, list[np.ndarray]]] = partial(_collect_tensors, float_model, feeds)
    if check is not None and st.block_loss != "mse":   # sensitivities at the start (AdaRound's) model
        collect = OutputSensitivity(float_model, feeds, run_outputs(out, feeds), check.reference,
                                    st.block_loss).collect(collect)
    fb = FloatValues(collect, blocks, FLOAT_BLOCK_BYTES)
    inputs = QuantizedInputs(out, feeds)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for k, unit in enumerate(units):
        if progress:
            progress(unit.name if isinstance(unit, Block) else unit.ql.name, k, len(units))
        if isinstance(unit, Block):
            if resolve:
                _restart_block(float_model, out, unit, inputs, fx, st, backend, cache)
            report.blocks.append(_solve_block(out, unit, inputs, fb, st, check))
        else:
            report.layers.append(_solve_layer(float_model, out, unit, inputs, float_inputs or fx[unit.ql.name], st,
                                              backend, cache))
    if check is not None:
        out = check.finish(qmodel, out, report.blocks)
    report.seconds = time.time() - t0
    log.info("fast finetune (%s): %d blocks, %d layers alone, %d cached, %.1f s", st.method, len(report.blocks),
             len(report.layers), sum(r.cached for r in report.layers), report.seconds)
    return out, report


def _solve_layer(float_model: onnx.ModelProto, out: onnx.ModelProto, job: LayerJob, inputs: QuantizedInputs,
                 float_side: np.ndarray | QuantizedInputs, st: FinetuneSettings, backend: str,
                 cache: Path) -> LayerResult:
    """One layer, AdaRound, AdaQuant or GPTQ (``brecq`` runs AdaRound over every layer before its
    blocks), written into ``out``.  ``float_side``: the layer's float patches, or the float model's
    layer inputs (GPTQ: the problem is the columns' sums, :func:`layer_stats`)."""
    ql, w, g = job.ql, job.w, job.sampler.groups
    method = st.method if st.method in ("adaquant", "gptq") else "adaround"
    lst = replace(st, method=method)
    t1 = time.time()
    act = fused_activation(out, ql.node) if method == "adaround" and st.post_activation else None
    ql, float_bias = _with_linear_bias(float_model, out, job)  # a MatMul's bias Add is the layer's bias
    addend = float_bias is not None
    if isinstance(float_side, QuantizedInputs):
        base: LayerProblem | LayerStats = layer_stats(float_model, job, inputs, float_side, st.round_mode,
                                                      (ql, float_bias))
    else:
        base = layer_problem(float_model, job, inputs, float_side, st.round_mode, keep_float=st.input_drop > 0,
                             act=act, linear=(ql, float_bias))
    nearest = grouped_weight(read_codes(out, ql), g)
    before = base.error(nearest)
    learn = st.learn_threshold and base.per_tensor_pow2() and _owns_scales(out, ql)

    fresh: list[int] = []  # shifts solved in this call, the search's included (none: a cached result)

    def solved(shift: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(codes, bias, scale)`` of the full solve at fix position shift ``shift``."""
        prob = base if not shift else base.at_scale((base.s * np.float32(2.0 ** -shift)).astype(np.float32))
        key = _cache_key(prob, lst)
        path = cache / key[:2] / f"{key}.npz"
        hit = _load(path, nearest.shape, prob.b.shape)
        if hit is not None:
            codes, bias, scale = hit
            return codes, bias, prob.s if scale is None else scale
        scale = prob.s
        if method == "adaround":
            codes, bias = adaround(prob, st.iters, st.learning_rate, st.batch, backend=backend, seed=st.seed), prob.b
        elif method == "gptq":
            codes, bias = gptq(prob)
        elif learn:
            codes, bias, scale = adaquant_threshold(prob, st.iters, st.learning_rate, st.batch, seed=st.seed,
                                                    input_drop=st.input_drop)
        else:
            codes, bias = adaquant(prob, st.iters, st.learning_rate, st.batch, backend=backend, seed=st.seed,
                                   input_drop=st.input_drop, start=gptq(prob) if st.start == "gptq" else None)
        if base.error(codes, bias, scale) > before:  # never make a layer worse than nearest rounding
            codes, bias, scale = nearest, base.b, base.s
        _save(path, codes, bias, scale if learn else None)
        fresh.append(shift)
        return codes, bias, scale

    shift = 0
    if learn and method == "adaround":  # the search's full solves are cached: the winner's is reused below
        shift = _searched_shift(base, lst, backend, cache, lambda d: base.error(*solved(d)))
    codes, bias, scale = solved(shift)
    cached = not fresh
    after = base.error(codes, bias, scale)
    shift = int(np.log2(base.s.reshape(-1)[0] / scale.reshape(-1)[0])) if learn else 0
    if shift:
        ql = _move_weight_scale(out, ql, float(scale.reshape(-1)[0]))
    write_codes(out, ql, codes.reshape(w.shape))
    if method != "adaround":  # the bias AdaQuant or GPTQ scored, on the (possibly moved) int32 grid
        write_bias(out, ql, np.asarray(bias).reshape(-1), st.bias_round_mode)
    elif shift:  # a moved weight scale moves the int32 bias's; a MatMul's is rounded again from the float bias
        write_bias(out, ql, float_bias if addend else np.asarray(bias).reshape(-1), st.bias_round_mode)
    log.debug("%s %s: error %.3g -> %.3g (%s, fix position %+d, %.1f s)", method, ql.name, before, after,
              "cached" if cached else "solved", shift, time.time() - t1)
    return LayerResult(ql.name, before, after, cached, time.time() - t1, shift)


def _searched_shift(p: LayerProblem, st: FinetuneSettings, backend: str, cache: Path,
                    full_error: Callable[[int], float]) -> int:
    """:func:`.adaround.search_fix_position` for ``p``, cached beside the layer results."""
    key = hashlib.sha256(f"fix search 2 {_cache_key(p, st)}".encode()).hexdigest()
    path = cache / key[:2] / f"{key}.npz"
    hit = _load_fields(path, ("shift",))
    if hit is not None and hit[0].shape == (1,) and hit[0][0] in (-1, 0, 1):
        return int(hit[0][0])
    shift = search_fix_position(p, full_error, st.iters, st.learning_rate, st.batch, backend=backend,
                                seed=st.seed)
    _save_fields(path, shift=np.array([shift], np.int32))
    return shift


def _owns_scales(model: onnx.ModelProto, ql: QuantizedLayer) -> bool:
    """Whether the layer's steps alone read the scale initializers a moved weight fix position
    rewrites (the weight's, the Quantize step's of a float weight, an int32 bias's, a ``MatMul``'s
    in the ``Add`` after it: :func:`_linear_addend`): where another node also reads one, moving it
    would move that node's quantization too, so the position is kept."""
    view = GraphView(model)
    dq = view.producer_node(ql.node.input[1])
    steps = [dq]
    if ql.float_name is not None:
        steps.append(view.producer_node(dq.input[0]))
    if ql.bias_scale is not None:
        steps.append(_bias_step(view, ql))
    elif any(_int32_addend(view, c) for c in view.consumer_nodes(ql.node.output[0])):
        return False  # an int32 Add that is not the layer's bias (linear_bias): its scale would stay behind
    readers = {n.name or id(n) for name in {n.input[1] for n in steps} for n in view.consumer_nodes(name)}
    return len(readers) <= len(steps)


def _bias_step(view: GraphView, ql: QuantizedLayer) -> onnx.NodeProto:
    """The dequantize step of ``ql``'s int32 bias: its own bias input, or a ``MatMul``'s ``Add``'s
    (the codes' only reader, :func:`_linear_addend`)."""
    if ql.node.op_type != "MatMul":
        return view.producer_node(ql.node.input[2])
    return view.consumer_nodes(ql.bias_name)[0]


def _linear_addend(model: onnx.ModelProto, ql: QuantizedLayer) -> QuantizedLayer | None:
    """``ql`` with the int32 bias of the ``Add`` after it as its bias, when ``ql`` is a ``MatMul``
    whose bias that ``Add`` is (:func:`npuflow.passes.linear_bias.linear_bias`) and the codes and
    their dequantize step have no other reader; ``None`` otherwise.

    ONNX Runtime fuses ``MatMul -> Add`` into one QGemm that reads those codes at ``s_in * s_w``,
    so a moved weight fix position has to move that scale with it (:func:`_move_weight_scale`)."""
    if ql.node.op_type != "MatMul" or ql.bias_name is not None:
        return None
    view = GraphView(model)
    found = linear_bias(ql.node, view)
    dq = view.producer_node(found.bias) if found is not None else None
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in view.inits:
        return None
    if len(view.consumer_nodes(dq.input[0])) != 1 or len(view.consumer_nodes(found.bias)) != 1:
        return None
    return replace(ql, bias_name=dq.input[0], bias_scale=np.asarray(view.const(dq.input[1]), np.float32))


def _float_linear_bias(float_model: onnx.ModelProto, fl: WeightLayer) -> np.ndarray | None:
    """The float bias of the ``Add`` after the float ``MatMul`` ``fl`` (what the export rounded to
    int32), or ``None`` when the float model has none there."""
    view = GraphView(float_model)
    found = linear_bias(fl.node, view)
    return None if found is None else np.asarray(view.value(found.bias), np.float32).reshape(-1)


def _with_linear_bias(float_model: onnx.ModelProto, qmodel: onnx.ModelProto,
                      job: LayerJob) -> tuple[QuantizedLayer, np.ndarray | None]:
    """``(layer, float bias)``: for a ``MatMul`` whose bias is the int32 ``Add`` after it
    (:func:`_linear_addend`) and the float model's ``Add`` after the float ``MatMul`` (what the export
    rounded to those codes), the layer with that ``Add``'s codes as its bias and that float bias, so
    that the layer's problem scores the bias the written model adds and AdaQuant's learned bias has
    somewhere to go; ``(job.ql, None)`` otherwise."""
    addend = _linear_addend(qmodel, job.ql)
    float_bias = _float_linear_bias(float_model, job.fl) if addend is not None else None
    return (job.ql, None) if addend is None or float_bias is None else (addend, float_bias)


def _int32_addend(view: GraphView, node: onnx.NodeProto) -> bool:
    """Whether ``node`` adds a dequantized int32 constant after a ``MatMul`` that is not that layer's
    bias by :func:`_linear_addend`'s test: ONNX Runtime may still fuse the pair into one QGemm
    reading the codes at ``s_in * s_w``, so the position is kept there."""
    if node.op_type != "Add":
        return False
    for t in node.input:
        dq = view.producer_node(t) if t else None
        if dq is not None and dq.op_type == "DequantizeLinear":
            codes = view.value(dq.input[0])
            if codes is not None and codes.dtype == np.int32:
                return True
    return False


def _move_weight_scale(model: onnx.ModelProto, ql: QuantizedLayer, scale: float) -> QuantizedLayer:
    """Set ``ql``'s weight scale to the power of two ``scale`` and its int32 bias scale with it
    (``s_in * s_w`` moves by the same power of two, exactly); ``ql`` as it now reads."""
    view = GraphView(model)
    dq = view.producer_node(ql.node.input[1])
    new_w = np.full(ql.scale.shape, scale, np.float32)
    set_array(model, dq.input[1], new_w)
    if ql.float_name is not None:
        set_array(model, view.producer_node(dq.input[0]).input[1], new_w)
    bias_scale = ql.bias_scale
    if bias_scale is not None:
        bias_scale = (bias_scale * np.float32(scale / float(ql.scale.reshape(-1)[0]))).astype(np.float32)
        set_array(model, _bias_step(view, ql).input[1], bias_scale)
    return replace(ql, scale=new_w, bias_scale=bias_scale)


def _restart_block(float_model: onnx.ModelProto, out: onnx.ModelProto, block: Block, inputs: QuantizedInputs,
                   fx: dict[str, np.ndarray], st: FinetuneSettings, backend: str, cache: Path) -> None:
    """``block_accept: final``: the block's layers solved again by AdaRound (``start: gptq``: GPTQ) on
    the inputs that the blocks learned before it now give (cached where those did not change): the
    codes the first layer-wise pass gave it were fitted to the layer-wise blocks before it, and the
    block learns from what is written here (:mod:`.block_accept`)."""
    method = "gptq" if st.start == "gptq" else "adaround"
    for job in block.jobs:
        _solve_layer(float_model, out, job, inputs, fx[job.ql.name], replace(st, method=method, lr=None),
                     backend, cache)
    for t in {t for n in block.nodes for t in n.output} & set(inputs.values):
        del inputs.values[t]   # computed with codes the block is about to change


def _solve_block(out: onnx.ModelProto, block: Block, inputs: QuantizedInputs, float_values: FloatValues,
                 st: FinetuneSettings, check: OutputCheck) -> BlockResult:
    """One block by :func:`.block_recon.reconstruct`, written into ``out`` when its codes do not
    raise the model's calibration output error (``check``, :mod:`.block_accept`)."""
    t1 = time.time()
    with torch_threads():
        runner = BlockRunner(out, block)
        floats = float_values.get(block)
        x, xf, y = block_arrays(block, inputs.get, floats)
        codes, before, after = reconstruct(runner, x, xf, y, st.iters, st.learning_rate, st.block_batch,
                                           st.drop_prob, seed=st.seed, weights=block_weights(block, floats))
    d = check.decide(out, runner, codes, dict(inputs.values), lambda c: write_block(out, runner, c))
    res = BlockResult(block.name, [j.ql.name for j in block.jobs], before, before if d.reverted else after,
                      time.time() - t1, d.error_before, d.error_after, d.reverted)
    log.debug("brecq %s (%d layers): error %.3g -> %.3g, model output error %.4g -> %.4g%s (%.1f s)", res.name,
              len(res.layers), before, res.error_after, d.error_before, d.error_after,
              ", reverted" if d.reverted else "", res.seconds)
    return res


@dataclass
class LayerJob:
    """A weight layer fast finetune can solve: its QDQ and float views, float weight, sampler."""

    ql: QuantizedLayer
    fl: WeightLayer
    w: np.ndarray
    sampler: PatchSampler


def layer_jobs(float_model: onnx.ModelProto, qmodel: onnx.ModelProto, per_batch: int,
               skipped: list[str]) -> list[LayerJob]:
    """The solvable layers of ``qmodel`` in graph order; names of the others go to ``skipped``."""
    floats = {l.name: l for l in weight_layers(float_model)}
    jobs = []
    for ql in quantized_layers(qmodel):
        fl = floats.get(ql.name)
        if fl is None:
            skipped.append(ql.name)
            continue
        w = layer_weight(float_model, fl)
        sampler = PatchSampler(ql.node, w.shape, per_batch)
        if not sampler.supported or w.shape != read_codes(qmodel, ql).shape:
            skipped.append(ql.name)
            continue
        jobs.append(LayerJob(ql, fl, w, sampler))
    return jobs


#: Memory for the float model's block tensors ``brecq`` holds at once (:class:`.block_recon.FloatValues`).
FLOAT_BLOCK_BYTES = 1024 * 2**20

#: Columns per sample and layer that stand for "every output position" (``columns: all``).
EVERY_POSITION = 2**62

#: Memory for the full quantized-model layer inputs :class:`QuantizedInputs` keeps.
INPUT_CACHE_BYTES = 512 * 2**20


class QuantizedInputs:
    """Layer inputs of a QDQ model that fast finetune changes layer by layer, in graph order (also
    the float model's, which never changes, for GPTQ's streamed statistics).

    A layer's input depends only on the layers upstream of it, which are finished by the time it
    is asked for, so once computed it never changes.  The newest inputs are kept (within
    :data:`INPUT_CACHE_BYTES`) and the next one is computed from them: in a chain that runs one
    layer instead of the network from its inputs (EfficientNet-Lite0: 50 layers' inputs in
    6 s instead of 50 s).  An evicted tensor only makes a later slice start further up.
    """

    def __init__(self, qmodel: onnx.ModelProto, feeds: list[Feed], budget: int = INPUT_CACHE_BYTES) -> None:
        self.model, self.feeds, self.budget = qmodel, feeds, budget
        self.values: dict[str, list[np.ndarray]] = {}

    def get(self, tensor: str) -> list[np.ndarray]:
        """``tensor`` for every feed, from the model as it is now."""
        if tensor not in self.values:
            part = slice_model(self.model, [tensor], self.values)
            runs = [{**f, **{t: v[k] for t, v in self.values.items()}} for k, f in enumerate(self.feeds)]
            got: list[np.ndarray] = []
            capture(part, runs, [tensor], lambda _, v: got.append(v[tensor]))
            self.values[tensor] = got
            while len(self.values) > 1 and sum(a.nbytes for v in self.values.values() for a in v) > self.budget:
                del self.values[next(iter(self.values))]  # oldest first
        return self.values[tensor]


def layer_problem(float_model: onnx.ModelProto, job: LayerJob, inputs: QuantizedInputs,
                  float_patches: np.ndarray, round_mode: str, keep_float: bool = False,
                  act: Activation | None = None,
                  linear: tuple[QuantizedLayer, np.ndarray | None] | None = None) -> LayerProblem:
    """``job``'s problem: inputs from the quantized model as it is now, targets from the float layer
    on ``float_patches`` (through ``act``, the activation fused behind the layer, when given), bias
    and limits from the quantized model; ``has_bias`` False where the written layer holds none.

    ``linear``: :func:`_with_linear_bias`'s answer for ``job`` when the caller has it (computed here
    otherwise)."""
    w, g, qmodel = job.w, job.sampler.groups, inputs.model
    ql, linear_bias_value = linear if linear is not None else _with_linear_bias(float_model, qmodel, job)
    full = inputs.get(ql.node.input[0])
    qx = np.concatenate([job.sampler.sample(v, k) for k, v in enumerate(full)], axis=2)
    wg = grouped_weight(w, g)
    fb = layer_bias(float_model, job.fl, w.shape[0]) if linear_bias_value is None else linear_bias_value
    y = forward(wg.astype(np.float32), float_patches) + fb.reshape(g, -1, 1)
    if act is not None:
        y = act.value(y)
    s = grouped_weight(scale_rows(ql, w.shape) * np.ones_like(w), g)[:, :, :1]
    lo, hi = code_limits(ql, read_codes(qmodel, ql))
    return LayerProblem(wg, s, read_bias(qmodel, ql, w.shape[0]).reshape(g, -1, 1), qx, y, lo, hi, round_mode,
                        xf=float_patches if keep_float else None, act=act, has_bias=ql.bias_name is not None)


def _collect_tensors(model: onnx.ModelProto, feeds: list[Feed], names: list[str]) -> dict[str, list[np.ndarray]]:
    """``{tensor: [value per feed]}`` of ``model`` (graph inputs are taken from the feeds)."""
    got: dict[str, list[np.ndarray]] = {n: [] for n in names}
    inputs = {i.name for i in model.graph.input}
    run = [n for n in names if n not in inputs]
    for n in names:
        if n in inputs:
            got[n] = [np.asarray(f[n]) for f in feeds]
    if run:
        capture(model, feeds, run, lambda _, v: [got[n].append(v[n]) for n in run])
    return got


class FloatPatches:
    """The float model's layer-input patches on one calibration set, collected once for every call that
    asks for the same layers: the patch positions do not depend on the seed, so restarts share them
    (PP-OCRv4 rec: 12.6 s of a 290-460 s reconstruction at load 13-19)."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._patches: dict[str, np.ndarray] = {}

    def get(self, model: onnx.ModelProto, feeds: list[Feed],
            wanted: dict[str, tuple[str, PatchSampler]]) -> dict[str, np.ndarray]:
        """:func:`_collect`'s answer, from the last call when it asked for the same layers' tensors."""
        key = tuple(sorted((name, tensor) for name, (tensor, _) in wanted.items()))
        if key != self._key:
            self._key, self._patches = key, _collect(model, feeds, wanted)
        return self._patches


def _collect(model, feeds, wanted: dict[str, tuple[str, PatchSampler]]) -> dict[str, np.ndarray]:
    """``{layer: (g, K, m)}`` patches of each layer's input tensor over all feeds."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    tensors = sorted({t for t, _ in wanted.values()})

    def keep(batch: int, values: dict[str, np.ndarray]) -> None:
        for name, (tensor, sampler) in wanted.items():
            parts[name].append(sampler.sample(values[tensor], batch))

    if tensors:
        capture(model, feeds, tensors, keep)
    return {n: np.concatenate(p, axis=2) for n, p in parts.items() if p}


#: Part of every cache key: raise it when an algorithm's results change for the same inputs.
SOLVER_VERSION = 4  # 2: AdaRound loss a mean over outputs (was a sum); 3: batches are shuffled blocks;
#: 4: AdaQuant returns its best rounded iterate


def _cache_key(p: LayerProblem | LayerStats, st: FinetuneSettings) -> str:
    h = hashlib.sha256()
    h.update(f"solver {SOLVER_VERSION}".encode())
    if isinstance(p, LayerStats):  # the sums, not the columns: a key of its own for every column count
        h.update(b"column sums")
    for a in (p.w, p.s, p.b, p.x, p.y) if isinstance(p, LayerProblem) else p.key_arrays():
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    h.update(f"{p.qmin},{p.qmax}".encode())
    if not p.has_bias:  # only then: the layers with a bias keep their cached results
        h.update(b"no bias")
    h.update(json.dumps(st.key(), sort_keys=True).encode())
    return h.hexdigest()


def _load(path: Path, codes_shape: tuple[int, ...],
          bias_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """A cached layer result ``(codes, bias, weight scale or None)``, or ``None`` when there is none
    (the scale is stored only by ``learn_threshold``; ``None``: the problem's own)."""
    hit = _load_fields(path, ("codes", "bias"), ("scale",))
    if hit is None:
        return None
    codes, bias, scale = hit
    if codes.shape != codes_shape or bias.size != int(np.prod(bias_shape)) or (
            scale is not None and scale.size != int(np.prod(bias_shape))):
        log.warning("fast-finetune cache entry %s holds codes %s / bias %s, expected %s / %s; discarded, the layer "
                    "is solved again", path, codes.shape, bias.shape, codes_shape, bias_shape)
        path.unlink(missing_ok=True)
        return None
    return codes, bias.reshape(bias_shape), None if scale is None else scale.reshape(bias_shape)


def _load_fields(path: Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> list | None:
    """The arrays ``fields`` (then ``optional`` ones, ``None`` where absent) of a cache file, or
    ``None`` when there is none.  A truncated or foreign file (a killed writer, a full disk,
    someone else's file) is discarded with a warning: the layer is solved again instead of
    failing every later quantization until the cache is cleared by hand."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return [np.asarray(data[f]) for f in fields] + [
                np.asarray(data[f]) if f in data.files else None for f in optional]
    except Exception as exc:  # noqa: BLE001  (np.load raises ValueError, OSError, EOFError, zipfile errors, KeyError)
        log.warning("fast-finetune cache entry %s is unreadable (%s: %s); discarded, the layer is solved again",
                    path, type(exc).__name__, exc)
        path.unlink(missing_ok=True)
        return None


def _save(path: Path, codes: np.ndarray, bias: np.ndarray, scale: np.ndarray | None = None) -> None:
    extra = {} if scale is None else {"scale": np.asarray(scale, np.float32)}
    _save_fields(path, codes=codes.astype(np.int32), bias=np.asarray(bias, np.float32), **extra)


def _save_fields(path: Path, **arrays: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        write_atomic(path, buf.getvalue())
    except NpuflowError as exc:  # a read-only cache must not stop quantization
        log.warning("cannot write fast-finetune cache %s: [%s] %s", path, exc.code, exc.message)
