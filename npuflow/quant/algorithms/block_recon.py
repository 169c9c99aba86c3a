"""Block reconstruction: learn the weight rounding of several layers jointly (BRECQ / QDrop).

Layer-wise AdaRound makes each layer reproduce its own float output; the errors it leaves add up
through the activations, clips and residual adds that follow, which it never sees.  BRECQ
(Li et al., ICLR 2021) reconstructs a *block* of layers - an inverted-residual block: expand
conv, clip, depthwise conv, clip, project conv, residual add - against the float block's output,
learning every layer's rounding at once with AdaRound's rectified sigmoid and annealed
regulariser (shared with :mod:`.adaround`).  QDrop (Wei et al., ICLR 2022) adds one thing: while
learning, each activation quantize step inside the block passes the unquantized value instead,
elementwise with probability ``drop_prob`` (the block input takes the float model's value), so
the rounding is fitted to a flatter neighbourhood than the one calibration sample set defines.

The block is the QDQ model's own subgraph, run in torch: every quantize step computes
exactly :mod:`npuflow.numerics` (:mod:`npuflow.fake_quant`, straight-through gradients),
the weight layers read ``(floor(W/s) + h(V)) * s`` with the target's scale, and biases, clips
and pads are the exported ones.  The final codes are ``floor + (h >= 0.5)`` clipped to the code
range, written back as integers, so the exported QDQ model and the compiled ``.npuf`` compute the
rounding that was learned.  A block keeps its previous codes when the learned ones do not lower
its output error on the calibration samples, or when they raise the model's output error there
(:mod:`.block_accept`).

The blocks refine layer-wise AdaRound (or GPTQ, ``start: gptq``): ``fast_finetune`` runs it over
every layer first, and a block's soft rounding starts at those codes (:func:`start_floor`,
:func:`start_rest`), so a block ends at or below that start's output error on the calibration samples.  From the float weights, a few tens of steps
per block left PP-OCRv4 det's blocks above what AdaRound reaches on them (its first block: 0.195
after 20 steps against AdaRound's 0.119), and the model below AdaRound.

Blocks are cut where one tensor alone carries everything the next few layers need (the input
of an inverted-residual block, the output of its add).  Other tensors may be live across a cut
when they are *parked*: read next only after more than ``max_layers`` further weight layers (a
backbone stage's output waiting for an FPN neck), so no block starting there reads them; they pass
through the block unread.  A block's inputs are the tensors from before it that its nodes read;
its outputs are the tensors it computes that are still live at its end (a parked stage output
among them), each reconstructed against the float model's value (a quantize-dequantize step's
output against the float tensor it quantizes) and the loss is the sum of their mean squared
errors.  A piece between two cuts that holds several layers (a residual block) is a block of its
own; consecutive one-layer pieces (a chain without skip connections) are joined until a block
holds ``min_layers`` weight layers, and never beyond ``max_layers`` (the memory of a step grows
with them).  A piece with an op the torch runner does not know, or more than ``max_layers``
layers, is solved layer by layer instead (AdaRound), as are weight layers before the first and
after the last cut.  Blocks run in graph order on the quantized model as finetuned so far, like
the layer-wise methods.

torch is required (autograd through convolutions); the rest of npuflow works without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import onnx

from ...errors import NpuflowError
from ...graph import GraphView, outer_reads
from ...qdq import parse_function_name
from .adaround import GAMMA, ZETA, _beta, _init_v
from .block_ops import LAYER_OPS, constant_value, fake_quantize32, quant_spec, run_op, supported, torch_abs_pow
from .qdq_weights import QuantizedLayer, code_limits, read_codes, scale_rows, write_codes

if TYPE_CHECKING:
    import torch

    from .fast_finetune import LayerJob

log = logging.getLogger(__name__)

def require_torch() -> None:
    """A coded error when torch is missing: block reconstruction needs its autograd."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise NpuflowError(
            "NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.method brecq",
            reason="block reconstruction runs the blocks in torch, which is not installed "
                   "(pip install torch, or use method adaround/adaquant)") from None


# --- cutting the QDQ graph into blocks -------------------------------------------------------

@dataclass
class Block:
    """Nodes of the QDQ model between two cuts, and their weight layers.

    ``inputs``: the tensors from before the block that its nodes read; ``outputs``: the tensors
    it computes that later nodes (or the graph outputs) read; ``targets``: the float model's
    tensor for each input and output (the reconstruction target, QDrop's float input).
    """

    inputs: list[str]
    outputs: list[str]
    nodes: list[onnx.NodeProto]
    jobs: list["LayerJob"] = field(default_factory=list)
    targets: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.jobs[0].ql.name} .. {self.jobs[-1].ql.name}" if self.jobs else ",".join(self.outputs)

    def dropped_inputs(self) -> list[str]:
        """The inputs a quantize step of the block reads: QDrop passes their float value instead."""
        read = {n.input[0] for n in self.nodes if _quantize_step(n)}
        return [t for t in self.inputs if t in read and t in self.targets]

    def float_tensors(self) -> list[str]:
        """The float model's tensors the block needs: its dropped inputs' and its outputs' targets."""
        return list(dict.fromkeys(self.targets[t] for t in [*self.dropped_inputs(), *self.outputs]))


def _quantize_step(n: onnx.NodeProto) -> bool:
    return n.op_type == "QuantizeLinear" or (n.domain not in ("", "ai.onnx") and parse_function_name(n.op_type) is not None)


#: Weight layers a block holds at most; also the reach beyond which a live tensor counts as parked.
MAX_LAYERS = 8

def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and the outputs of nodes that read only constants (weight DequantizeLinears)."""
    const = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" or (n.input and all(i in const for i in n.input if i) and not outer_reads(n)):
            const.update(o for o in n.output if o)
    return const


def float_counterparts(qmodel: onnx.ModelProto, float_names: set[str]) -> dict[str, str]:
    """``{QDQ tensor: float model tensor}``: a tensor the float model has maps to itself, the
    output of a dequantize step that undoes a quantize step to the float tensor that step reads."""
    view = GraphView(qmodel)
    out: dict[str, str] = {}

    def resolve(t: str) -> str | None:
        if t in out:
            return out[t]
        if t in float_names:
            return t
        n = view.producer_node(t)
        if n is None or n.op_type != "DequantizeLinear":
            return None
        q = view.producer_node(n.input[0])
        if q is None or not _quantize_step(q):
            return None
        return resolve(q.input[0])

    for t in list(view.producer):
        r = resolve(t) if t else None
        if r is not None:
            out[t] = r
    out.update({i.name: i.name for i in qmodel.graph.input if i.name in float_names})
    return out


def plan_blocks(qmodel: onnx.ModelProto, float_names: set[str], jobs: list["LayerJob"],
                min_layers: int = 3, max_layers: int = MAX_LAYERS) -> list[Block | "LayerJob"]:
    """Work units in graph order: :class:`Block` s, and the :class:`LayerJob` s to solve alone.

    A cut is a point between two nodes where one live non-constant tensor, which the float model
    also has, is read within the next ``max_layers`` weight layers and every other live tensor is
    parked (read only after that) and has a float counterpart (:func:`float_counterparts`).
    """
    const = constant_tensors(qmodel)
    nodes = [n for n in qmodel.graph.node if not all(o in const for o in n.output if o)]
    reads: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in [*n.input, *outer_reads(n)]:
            if t and t not in const and (not reads.get(t) or reads[t][-1] != i):
                reads.setdefault(t, []).append(i)
    for o in qmodel.graph.output:
        reads.setdefault(o.name, []).append(len(nodes))
    layer_count = np.cumsum([0] + [n.op_type in LAYER_OPS for n in nodes])   # weight layers before node i
    counterpart = float_counterparts(qmodel, float_names)

    def next_read(t: str, i: int) -> int:
        r = reads[t]
        return r[int(np.searchsorted(r, i))]

    def cut_kind(i: int, live: set[str]) -> int:
        """2: one tensor read soon, the others parked; 1: any live set with float counterparts; 0: no cut."""
        if not all(t in counterpart for t in live):
            return 0
        near = [t for t in live if layer_count[min(next_read(t, i), len(nodes))] - layer_count[i] <= max_layers]
        return 2 if len(near) == 1 and near[0] in float_names else 1

    live = {i.name for i in qmodel.graph.input if i.name in reads}
    narrow: list[int] = []   # index of the first node after the cut
    wide: list[int] = []
    for i in range(len(nodes) + 1):
        kind = cut_kind(i, live)
        if kind:
            wide.append(i)
        if kind == 2:
            narrow.append(i)
        if i == len(nodes):
            break
        n = nodes[i]
        for t in [*n.input, *outer_reads(n)]:
            if t in live and reads[t][-1] == i:
                live.discard(t)
        live.update(o for o in n.output if o and reads.get(o, [-1])[-1] > i)
    by_weight = {j.ql.node.input[1]: j for j in jobs}

    def layers_in(ns: list[onnx.NodeProto]) -> list[LayerJob]:
        return [by_weight[n.input[1]] for n in ns if n.op_type in LAYER_OPS
                and len(n.input) > 1 and n.input[1] in by_weight]

    def make(a: int, b: int) -> Block:
        inside = nodes[a:b]
        made = {o for n in inside for o in n.output if o}
        ins = [t for n in inside for t in [*n.input, *outer_reads(n)] if t and t not in const and t not in made]
        outs = [o for n in inside for o in n.output if o and reads.get(o, [-1])[-1] >= b]
        ins = list(dict.fromkeys(ins))
        return Block(ins, outs, inside, layers_in(inside), {t: counterpart[t] for t in [*ins, *outs] if t in counterpart})

    units: list[Block | LayerJob] = []
    pending: tuple[int, int] | None = None   # node range of the block being joined

    def flush() -> None:
        nonlocal pending
        if pending is not None:
            units.append(make(*pending))
            pending = None

    def join(cuts: list[int], split: bool) -> None:
        """Blocks from the pieces between ``cuts``; with ``split``, a piece that cannot be one
        block is cut further at the wide cuts inside it (several tensors live, none parked)."""
        nonlocal pending
        for a, b in zip(cuts, cuts[1:]):
            piece_jobs = layers_in(nodes[a:b])
            if not all(supported(n) for n in nodes[a:b]) or len(piece_jobs) > max_layers:
                flush()
                inner = [c for c in wide if a <= c <= b]
                if split and len(inner) > 2:
                    join(inner, False)   # what is pending at its end joins the next piece
                else:
                    units.extend(piece_jobs)
                continue
            held = len(layers_in(nodes[pending[0]:pending[1]])) if pending is not None else 0
            if pending is not None and held and (len(piece_jobs) > 1 or held + len(piece_jobs) > max_layers):
                flush()   # a piece of several layers (a residual block) stands alone
            pending = (a, b) if pending is None else (pending[0], b)
            if len(layers_in(nodes[pending[0]:pending[1]])) >= min_layers:
                flush()

    join(narrow, True)
    flush()
    after = narrow[-1] if narrow else 0
    before = narrow[0] if narrow else len(nodes)
    units[:0] = layers_in(nodes[:before])
    units.extend(layers_in(nodes[after:]))
    return [u for u in units if not isinstance(u, Block) or u.jobs]


# --- running a block in torch ----------------------------------------------------------------

@dataclass
class SoftLayer:
    """One weight layer's learnable rounding: ``clip(floor + h(v), lo, hi) * s``."""

    ql: QuantizedLayer
    floor: Any          # torch tensor, rows layout
    v: Any              # torch Parameter
    s: Any              # torch tensor broadcast to rows
    lo: int
    hi: int

    def h(self):
        import torch

        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def weight(self, codes=None):
        """The dequantized weight in the stored layout: soft rounding, or integer ``codes``."""
        import torch

        c = torch.clamp(self.floor + self.h(), self.lo, self.hi) if codes is None else codes
        w = c * self.s
        return w if self.ql.trans_b else w.T

    def hard_codes(self) -> np.ndarray:
        import torch

        with torch.no_grad():
            return np.clip(self.floor.numpy() + (self.h().numpy() >= 0.5), self.lo, self.hi)


#: How far past 1/2 a weight's start value is put where the start codes round it against its float value.
START_MARGIN = 0.1


def start_rest(rest: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Start values of ``h`` whose hard rounding (``h >= 1/2``) gives the codes ``floor + up``:
    the float remainder ``rest``, moved to at least ``START_MARGIN`` past 1/2 on the codes' side.

    Starting at the codes themselves (``h`` at 0 or 1) leaves the rectified sigmoid nearly flat,
    and Adam needs tens of steps to move one across; starting at the float remainder forgets the
    layer-wise result.  This keeps the float value's information for the weights the codes round
    to nearest and lets the block's loss flip the others back within a few steps.
    """
    up = np.clip(up, 0, 1) >= 0.5
    return np.where(up, np.maximum(rest, 0.5 + START_MARGIN), np.minimum(rest, 0.5 - START_MARGIN))


def start_floor(ws: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The lower of the two codes a weight's soft rounding chooses between: ``floor(W/s)``, moved
    where the start codes lie outside ``{floor, floor + 1}`` so that they are one of the two.

    AdaRound's codes are always floor or ceiling of the float weight; GPTQ's (``start: gptq``) are
    not: it rounds weights it has already moved to absorb earlier columns' errors, so a code can be
    two or more steps from the float value.  Kept at ``floor(W/s)``, such a weight's soft rounding
    could not represent its start code, and the block would start from other codes than the
    layer-wise result it refines (its error before learning is measured on the true codes)."""
    fl = np.floor(ws)
    return np.where(codes < fl, codes, np.where(codes > fl + 1, codes - 1, fl)).astype(np.float32)


class BlockRunner:
    """The QDQ subgraph of a :class:`Block` as a differentiable torch function."""

    def __init__(self, qmodel: onnx.ModelProto, block: Block) -> None:
        """The soft rounding starts from the block's current codes in ``qmodel`` (:func:`start_rest`)."""
        import torch

        self.block = block
        inits = {t.name: t for t in qmodel.graph.initializer}
        made_by = GraphView(qmodel)
        self.consts: dict[str, torch.Tensor] = {}
        self.soft: dict[str, SoftLayer] = {}
        for job in block.jobs:
            ql = job.ql
            codes = read_codes(qmodel, ql)
            s = scale_rows(ql, job.w.shape) * np.ones_like(job.w)
            lo, hi = code_limits(ql, codes)
            ws = (job.w / s).astype(np.float32)
            fl = start_floor(ws, codes.reshape(ws.shape))
            rest = start_rest(np.clip(ws - fl, 0.0, 1.0), codes.reshape(ws.shape) - fl)
            self.soft[ql.node.input[1]] = SoftLayer(
                ql, torch.from_numpy(fl), torch.nn.Parameter(torch.from_numpy(_init_v(rest).astype(np.float32))),
                torch.from_numpy(s.astype(np.float32)), lo, hi)
        self.current = {k: torch.from_numpy(read_codes(qmodel, sl.ql).astype(np.float32))
                        for k, sl in self.soft.items()}
        for n in block.nodes:
            for t in n.input:
                if t and t not in self.consts and t not in self.soft:
                    value = constant_value(t, inits, made_by)
                    if value is not None:
                        self.consts[t] = torch.from_numpy(np.array(value))
        specs = {n.output[0]: (n, quant_spec(n, inits)) for n in block.nodes}
        self.quant = {t: n for t, (n, spec) in specs.items() if spec is not None}   # quantize steps by output
        self.specs = {t: spec for t, (n, spec) in specs.items() if spec is not None}

    def parameters(self) -> list:
        return [sl.v for sl in self.soft.values()]

    def regulariser(self, beta: float):
        return sum((1 - torch_abs_pow(2 * sl.h() - 1, beta)).sum() for sl in self.soft.values())

    def run(self, x: dict, *, codes: dict | None = None, drop_prob: float = 0.0, x_float: dict | None = None,
            gen=None) -> dict:
        """The block's outputs ``{name: tensor}`` for its inputs ``x`` (``{name: tensor}``, batched on dim 0).

        ``codes``: integer codes per weight tensor (default: the soft rounding being learned);
        ``drop_prob`` > 0: each quantize step passes the unquantized value with that probability
        (one that reads a block input passes that input's float model value from ``x_float``).
        """
        import torch

        env: dict[str, torch.Tensor] = {**x, **self.consts}
        x_float = x_float or {}
        for key, sl in self.soft.items():
            env[key] = sl.weight(None if codes is None else codes[key])
        for n in self.block.nodes:
            if n.output[0] in self.specs:
                spec, axis = self.specs[n.output[0]]
                xin = env[n.input[0]]
                scale = self.consts[n.input[1]]
                zp = self.consts[n.input[2]] if len(n.input) > 2 and n.input[2] else torch.zeros(())
                out = fake_quantize32(xin, scale, zp, spec, axis)
                if drop_prob > 0:
                    alt = x_float.get(n.input[0], xin) if n.input[0] in x else xin
                    keep = torch.rand(out.shape, generator=gen) >= drop_prob
                    out = torch.where(keep, out, alt)
                env[n.output[0]] = out
                continue
            if n.op_type == "DequantizeLinear" and n.output[0] not in env:
                src = self.quant.get(n.input[0])
                if src is None or list(src.input[1:]) != list(n.input[1:]):
                    raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"fast_finetune block {self.block.name}",
                                       reason=f"DequantizeLinear {n.name} does not undo its quantize step")
                env[n.output[0]] = env[n.input[0]]   # the quantize step already dequantized
                continue
            if n.output[0] in env:
                continue
            env[n.output[0]] = run_op(n, [env[i] if i else None for i in n.input])
        return {t: env[t] for t in self.block.outputs}


# --- learning a block ------------------------------------------------------------------------

@dataclass
class BlockResult:
    name: str
    layers: list[str]
    error_before: float
    error_after: float
    seconds: float
    #: the model's calibration output error before the block and after it (:mod:`.block_accept`)
    output_error_before: float | None = None
    output_error_after: float | None = None
    reverted: bool = False   # learned codes that lowered the block's error but raised the model's


#: A block tensor's calibration values: ``{tensor: one array per calibration feed (batch on dim 0)}``.
Samples = dict[str, list[np.ndarray]]


def batch_of(values: Samples, idx: Any) -> dict:
    """``{tensor: torch tensor (len(idx), ...)}``: the samples ``idx`` of ``values`` stacked in float32.

    Only a step's batch is ever stacked: the whole calibration set of a block's tensors stays in
    the per-sample arrays it was computed in (:class:`.fast_finetune.QuantizedInputs`,
    :class:`FloatValues`), where a full ``(N, ...)`` copy of the inputs, QDrop's float inputs and
    the targets of PP-OCRv4 det's first blocks (32 samples at 320x320) took 0.8 GiB more."""
    import torch

    return {k: torch.from_numpy(np.concatenate([v[int(i)] for i in idx], axis=0).astype(np.float32, copy=False))
            for k, v in values.items()}


def sample_count(values: Samples) -> int:
    return len(next(iter(values.values())))


def reconstruct(runner: BlockRunner, x: Samples, x_float: Samples, y: Samples, iters: int, lr: float, batch: int,
                drop_prob: float, lam: float = 0.01, warmup: float = 0.2, seed: int = 0,
                weights: Samples | None = None) -> tuple[dict[str, np.ndarray], float, float]:
    """``(codes per weight tensor, error before, error after)``: the block's rounding learned on
    its inputs ``x`` (quantized model), ``x_float`` and output targets ``y`` (float model), each
    :data:`Samples` (:func:`block_arrays`); the loss is the sum over the outputs of their mean squared
    error, each element's squared error times its weight in ``weights`` (same shapes) when given
    (:mod:`.block_fisher`).

    The codes are the learned ones when they lower the block's output error on all ``N``
    samples, else the current ones.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(runner.parameters(), lr=lr)
    n = sample_count(x)
    order = torch.randperm(n, generator=gen)
    pos = 0
    for t in range(iters):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        yt = batch_of(y, idx)
        wt = batch_of(weights, idx) if weights is not None else None
        out = runner.run(batch_of(x, idx), drop_prob=drop_prob, x_float=batch_of(x_float, idx), gen=gen)
        loss = sum((((out[k] - yt[k]) ** 2) * (wt[k] if wt is not None else 1.0)).mean() for k in out)
        beta = _beta(t, iters, warmup)
        if beta is not None:
            loss = loss + lam * runner.regulariser(beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = {k: sl.hard_codes() for k, sl in runner.soft.items()}
    before = block_error(runner, x, y, runner.current, weights=weights)
    after = block_error(runner, x, y, {k: torch.from_numpy(v.astype(np.float32)) for k, v in learned.items()},
                        weights=weights)
    if after > before:
        return {k: v.numpy().astype(np.float64) for k, v in runner.current.items()}, before, before
    return learned, before, after


def block_error(runner: BlockRunner, x: Samples, y: Samples, codes: dict, chunk: int = 8,
                weights: Samples | None = None) -> float:
    """Sum over the block outputs of their mean squared error (weighted by ``weights`` when
    given), with integer ``codes`` and every quantize step on."""
    import torch

    total = {k: 0.0 for k in y}
    size = {k: 0 for k in y}
    n = sample_count(x)
    with torch.no_grad():
        for i in range(0, n, chunk):
            idx = range(i, min(i + chunk, n))
            out = runner.run(batch_of(x, idx), codes=codes)
            yt = batch_of(y, idx)
            wt = batch_of(weights, idx) if weights is not None else None
            for k, o in out.items():
                w = wt[k] if wt is not None else 1.0
                total[k] += float((((o - yt[k]) ** 2) * w).sum())
                size[k] += yt[k].numel()
    return sum(total[k] / max(size[k], 1) for k in y)


def block_arrays(block: Block, quantized: Callable[[str], list[np.ndarray]],
                 floats: Samples) -> tuple[Samples, Samples, Samples]:
    """``(x, x_float, y)`` for :func:`reconstruct`: the block's inputs from the quantized model
    (``quantized(tensor)``: one value per calibration sample), their float values, and its
    outputs' float targets (``floats``: the float model's tensors by name), each the lists it was
    given (no copy)."""
    x = {t: quantized(t) for t in block.inputs}
    xf = {t: floats[block.targets[t]] for t in block.dropped_inputs()}
    y = {t: floats[block.targets[t]] for t in block.outputs}
    return x, xf, y


class FloatValues:
    """The float model's block tensors, collected a group of blocks at a time.

    Collecting every block's tensors in one pass holds all of them for every calibration sample
    at once (PP-OCRv4 det at 640x640, 32 samples: several GiB over its blocks); one pass per block
    repeats the float model once per block.  Groups of consecutive blocks are sized to ``budget``
    bytes from what the previous group took.
    """

    def __init__(self, collect: Callable[[list[str]], dict[str, list[np.ndarray]]], blocks: list[Block],
                 budget: int) -> None:
        self.collect, self.blocks, self.budget = collect, blocks, budget
        self.values: dict[str, list[np.ndarray]] = {}
        self.held: list[int] = []       # indices of the blocks whose tensors are in values
        self.per_block = 0.0            # bytes per block in the last group

    def get(self, block: Block) -> dict[str, list[np.ndarray]]:
        k = next(i for i, b in enumerate(self.blocks) if b is block)
        if k not in self.held:
            size = 1 if not self.per_block else max(1, int(self.budget // self.per_block))
            self.held = list(range(k, min(k + size, len(self.blocks))))
            self.values = {}
            names = list(dict.fromkeys(t for i in self.held for t in self.blocks[i].float_tensors()))
            self.values = self.collect(names)
            self.per_block = max(1.0, sum(a.nbytes for v in self.values.values() for a in v) / len(self.held))
        return self.values


def write_block(qmodel: onnx.ModelProto, runner: BlockRunner, codes: dict[str, np.ndarray]) -> None:
    """Store a block's integer codes in ``qmodel`` (the layers' stored layout)."""
    for key, sl in runner.soft.items():
        write_codes(qmodel, sl.ql, codes[key])
