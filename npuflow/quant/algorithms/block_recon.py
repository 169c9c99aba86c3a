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
its output error on the calibration samples.

Blocks are cut where one tensor alone carries everything later nodes need (the input of an
inverted-residual block, the output of its add).  A piece between two cuts that holds several
layers (a residual block) is a block of its own; consecutive one-layer pieces (a chain without
skip connections) are joined until a block holds ``min_layers`` weight layers.  A piece with an op the torch runner does not know is
solved layer by layer instead (AdaRound), as are weight layers after the last cut.  Blocks run
in graph order on the quantized model as finetuned so far, like the layer-wise methods.

torch is required (autograd through convolutions); the rest of npuflow works without it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from ...errors import NpuflowError
from ...graph import outer_reads
from ...numerics import ONNX_ROUND_MODE, RoundMode, dequantize, round_values
from ...qdq import parse_function_name
from .adaround import GAMMA, ZETA, _beta, _init_v
from ...graph import GraphView, attr
from .qdq_weights import QuantizedLayer, code_limits, read_codes, scale_rows, write_codes

if TYPE_CHECKING:
    import torch

    from .fast_finetune import LayerJob

log = logging.getLogger(__name__)

#: Ops the torch runner executes (besides the quantize functions); a piece holding any other op
#: is solved layer by layer.
OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Clip", "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish",
    "Add", "Sub", "Mul", "Div", "Pad", "GlobalAveragePool", "Reshape", "Flatten", "Concat", "Identity",
    "QuantizeLinear", "DequantizeLinear",
})


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
    """Nodes of the QDQ model that compute ``end`` from ``start`` alone, and their weight layers."""

    start: str
    end: str
    nodes: list[onnx.NodeProto]
    jobs: list["LayerJob"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.jobs[0].ql.name} .. {self.jobs[-1].ql.name}" if self.jobs else self.end


def constant_tensors(model: onnx.ModelProto) -> set[str]:
    """Initializers and the outputs of nodes that read only constants (weight DequantizeLinears)."""
    const = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" or (n.input and all(i in const for i in n.input if i) and not outer_reads(n)):
            const.update(o for o in n.output if o)
    return const


def plan_blocks(qmodel: onnx.ModelProto, float_names: set[str], jobs: list["LayerJob"],
                min_layers: int = 3) -> list[Block | "LayerJob"]:
    """Work units in graph order: :class:`Block` s, and the :class:`LayerJob` s to solve alone.

    A cut is a tensor that is the only live non-constant value between two nodes and that the
    float model also has (its float value is the block's target).
    """
    const = constant_tensors(qmodel)
    nodes = [n for n in qmodel.graph.node if not all(o in const for o in n.output if o)]
    last_use: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for t in [*n.input, *outer_reads(n)]:
            if t and t not in const:
                last_use[t] = i
    for o in qmodel.graph.output:
        last_use[o.name] = len(nodes)
    live = {i.name for i in qmodel.graph.input if i.name in last_use}
    cuts: list[tuple[int, str]] = []   # (index of the first node after the cut, tensor)
    for i, n in enumerate(nodes):
        if len(live) == 1 and next(iter(live)) in float_names:
            cuts.append((i, next(iter(live))))
        for t in [*n.input, *outer_reads(n)]:
            if t in live and last_use.get(t) == i:
                live.discard(t)
        live.update(o for o in n.output if o and last_use.get(o, -1) > i)
    if len(live) == 1 and next(iter(live)) in float_names:
        cuts.append((len(nodes), next(iter(live))))
    by_weight = {j.ql.node.input[1]: j for j in jobs}
    units: list[Block | LayerJob] = []
    pending: Block | None = None

    def layers_in(ns: list[onnx.NodeProto]) -> list[LayerJob]:
        return [by_weight[n.input[1]] for n in ns if n.op_type in ("Conv", "Gemm", "MatMul")
                and len(n.input) > 1 and n.input[1] in by_weight]

    for (a, start), (b, end) in zip(cuts, cuts[1:]):
        piece = nodes[a:b]
        if not all(supported(n) for n in piece):
            if pending is not None:
                units.append(pending)
                pending = None
            units.extend(layers_in(piece))
            continue
        piece_jobs = layers_in(piece)
        if pending is not None and pending.jobs and len(piece_jobs) > 1:
            units.append(pending)   # a piece of several layers (a residual block) stands alone
            pending = None
        if pending is None:
            pending = Block(start, end, [], [])
        pending.nodes += piece
        pending.end = end
        pending.jobs += piece_jobs
        if len(pending.jobs) >= min_layers:
            units.append(pending)
            pending = None
    if pending is not None and pending.jobs:
        units.append(pending)
    after = cuts[-1][0] if cuts else 0
    before = cuts[0][0] if cuts else len(nodes)
    units[:0] = layers_in(nodes[:before])
    units.extend(layers_in(nodes[after:]))
    return [u for u in units if not isinstance(u, Block) or u.jobs]


def supported(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx") and parse_function_name(node.op_type) is None:
        return False
    if node.domain in ("", "ai.onnx") and node.op_type not in OPS:
        return False
    if node.op_type == "Conv" and attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return False
    if node.op_type == "Pad" and attr(node, "mode", b"constant") not in (b"constant", "constant"):
        return False
    return True


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


class BlockRunner:
    """The QDQ subgraph of a :class:`Block` as a differentiable torch function."""

    def __init__(self, qmodel: onnx.ModelProto, block: Block) -> None:
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
            fl = np.floor(ws)
            self.soft[ql.node.input[1]] = SoftLayer(
                ql, torch.from_numpy(fl), torch.nn.Parameter(torch.from_numpy(_init_v(ws - fl).astype(np.float32))),
                torch.from_numpy(s.astype(np.float32)), lo, hi)
        self.current = {k: torch.from_numpy(read_codes(qmodel, sl.ql).astype(np.float32))
                        for k, sl in self.soft.items()}
        for n in block.nodes:
            for t in n.input:
                if t and t not in self.consts and t not in self.soft:
                    value = _constant(t, inits, made_by)
                    if value is not None:
                        self.consts[t] = torch.from_numpy(np.array(value))
        specs = {n.output[0]: (n, _quant_spec(n, inits)) for n in block.nodes}
        self.quant = {t: n for t, (n, spec) in specs.items() if spec is not None}   # quantize steps by output
        self.specs = {t: spec for t, (n, spec) in specs.items() if spec is not None}

    def parameters(self) -> list:
        return [sl.v for sl in self.soft.values()]

    def regulariser(self, beta: float):
        return sum((1 - torch_abs_pow(2 * sl.h() - 1, beta)).sum() for sl in self.soft.values())

    def run(self, x, *, codes: dict | None = None, drop_prob: float = 0.0, x_float=None, gen=None):
        """The block's output for input ``x`` (batched on dim 0).

        ``codes``: integer codes per weight tensor (default: the soft rounding being learned);
        ``drop_prob`` > 0: each quantize step passes the unquantized value with that probability
        (the one on the block input passes ``x_float``, the float model's input).
        """
        import torch

        env: dict[str, torch.Tensor] = {self.block.start: x, **self.consts}
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
                    alt = x_float if (n.input[0] == self.block.start and x_float is not None) else xin
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
            env[n.output[0]] = _op(n, [env[i] if i else None for i in n.input])
        return env[self.block.end]


def fake_quantize32(x, scale, zero_point, spec, axis: int | None):
    """``numerics.fake_quantize`` in float32 with a straight-through gradient inside the code range.

    :func:`npuflow.fake_quant.fake_quantize` adds the zero point and clips in float64 so
    that it is exact for any code width; for codes of 16 bits or fewer float32 is exact too (every
    code and zero point is a float32 integer, and :func:`npuflow.numerics.round_values` rounds
    float32 exactly), and the block's elementwise steps, not its convolutions, are what a step
    costs (EfficientNet-Lite0's 112x112 blocks: 3x faster).  A test compares both bit for bit.
    """
    import torch

    if spec.bits > 16:
        raise ValueError(f"float32 fake quantization is exact up to 16 bits, not {spec.bits}")
    shape = [1] * x.dim()
    if axis is not None and scale.dim() == 1:
        shape[axis] = -1
    s = scale.to(torch.float32).reshape(shape or scale.shape) if axis is not None else scale.to(torch.float32)
    zp = zero_point.to(torch.float32)
    zp = zp.reshape(shape) if axis is not None and zp.dim() == 1 else zp
    r = round_values(x.detach() / s, spec.round_mode, xp=torch) + zp
    inside = (r >= spec.qmin) & (r <= spec.qmax)
    out = (r.clamp(spec.qmin, spec.qmax) - zp) * s
    return out + (x - x.detach()) * inside


def torch_abs_pow(t, beta: float):
    import torch

    return torch.abs(t) ** beta


def _constant(t: str, inits: dict, made_by: GraphView) -> np.ndarray | None:
    if t in inits:
        return numpy_helper.to_array(inits[t])
    n = made_by.producer_node(t)
    if n is None:
        return None
    if n.op_type == "Constant":
        return numpy_helper.to_array(attr(n, "value"))
    if n.op_type == "DequantizeLinear" and n.input[0] in inits:
        q = numpy_helper.to_array(inits[n.input[0]])
        s = numpy_helper.to_array(inits[n.input[1]])
        zp = numpy_helper.to_array(inits[n.input[2]]) if len(n.input) > 2 and n.input[2] else 0
        axis = attr(n, "axis", 1) if np.ndim(s) == 1 and np.size(s) > 1 else None
        return dequantize(q, s, zp, axis=axis)
    return None


def _quant_spec(n: onnx.NodeProto, inits: dict):
    """``(QuantSpec, axis)`` of a quantize step (``QuantizeLinear`` or an ``ai.npuflow`` function)."""
    from ...fake_quant import QuantSpec

    parsed = parse_function_name(n.op_type) if n.domain not in ("", "ai.onnx") else None
    if parsed is not None:
        mode, dtype = parsed
    elif n.op_type == "QuantizeLinear":
        mode = ONNX_ROUND_MODE
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        dtype = "uint8" if zp is None else onnx.helper.tensor_dtype_to_np_dtype(zp.data_type).name
    else:
        return None
    info = np.iinfo(np.dtype(dtype))
    s = numpy_helper.to_array(inits[n.input[1]]) if n.input[1] in inits else None
    axis = attr(n, "axis", 1) if s is not None and s.ndim == 1 and s.size > 1 else None
    return QuantSpec(info.bits, info.min < 0, False, RoundMode(mode)), axis


def _op(n: onnx.NodeProto, xs: list):
    """One ONNX op in torch (float32, batch on dim 0)."""
    import torch
    import torch.nn.functional as F

    op = n.op_type
    if op == "Conv":
        x, w = xs[0], xs[1]
        k = w.dim() - 2
        pads = list(attr(n, "pads", [0] * 2 * k))
        strides, dil = list(attr(n, "strides", [1] * k)), list(attr(n, "dilations", [1] * k))
        if pads[:k] != pads[k:]:
            x = F.pad(x, [p for d in reversed(range(k)) for p in (pads[d], pads[d + k])])
            pads = [0] * 2 * k
        conv = F.conv1d if k == 1 else F.conv2d
        return conv(x, w, xs[2] if len(xs) > 2 else None, strides, pads[:k], dil, int(attr(n, "group", 1)))
    if op == "Gemm":
        a, b = xs[0], xs[1]
        a = a.T if attr(n, "transA", 0) else a
        b = b.T if attr(n, "transB", 0) else b
        y = attr(n, "alpha", 1.0) * (a @ b)
        return y + attr(n, "beta", 1.0) * xs[2] if len(xs) > 2 and xs[2] is not None else y
    if op == "MatMul":
        return torch.matmul(xs[0], xs[1])
    if op == "Clip":
        lo = xs[1] if len(xs) > 1 and xs[1] is not None else None
        hi = xs[2] if len(xs) > 2 and xs[2] is not None else None
        return torch.clamp(xs[0], None if lo is None else float(lo), None if hi is None else float(hi))
    if op == "Relu":
        return torch.relu(xs[0])
    if op == "LeakyRelu":
        return F.leaky_relu(xs[0], attr(n, "alpha", 0.01))
    if op == "Sigmoid":
        return torch.sigmoid(xs[0])
    if op == "HardSigmoid":
        return torch.clamp(attr(n, "alpha", 0.2) * xs[0] + attr(n, "beta", 0.5), 0, 1)
    if op == "HardSwish":
        return xs[0] * torch.clamp(xs[0] / 6 + 0.5, 0, 1)
    if op in ("Add", "Sub", "Mul", "Div"):
        return {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](xs[0], xs[1])
    if op == "Pad":
        pads = [int(p) for p in xs[1].tolist()]
        k = len(pads) // 2
        value = float(xs[2]) if len(xs) > 2 and xs[2] is not None else 0.0
        return F.pad(xs[0], [p for d in reversed(range(k)) for p in (pads[d], pads[d + k])], value=value)
    if op == "GlobalAveragePool":
        return xs[0].mean(dim=tuple(range(2, xs[0].dim())), keepdim=True)
    if op == "Reshape":
        shape = [int(d) for d in xs[1].tolist()]
        shape = [xs[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
        if shape and shape[0] == 1 and xs[0].shape[0] != 1:
            shape[0] = xs[0].shape[0]   # samples are batched on dim 0
        return xs[0].reshape(shape)
    if op == "Flatten":
        axis = attr(n, "axis", 1)
        return xs[0].reshape(int(np.prod(xs[0].shape[:axis])), -1)
    if op == "Concat":
        return torch.cat(xs, dim=attr(n, "axis"))
    if op == "Identity":
        return xs[0]
    raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"fast_finetune node {n.name}",
                       reason=f"block reconstruction cannot run op {op}")


# --- learning a block ------------------------------------------------------------------------

@dataclass
class BlockResult:
    name: str
    layers: list[str]
    error_before: float
    error_after: float
    seconds: float


def reconstruct(runner: BlockRunner, x: np.ndarray, x_float: np.ndarray, y: np.ndarray, iters: int, lr: float,
                batch: int, drop_prob: float, lam: float = 0.01, warmup: float = 0.2,
                seed: int = 0) -> tuple[dict[str, np.ndarray], float, float]:
    """``(codes per weight tensor, error before, error after)``: the block's rounding learned on
    inputs ``x`` (quantized model), ``x_float`` and targets ``y`` (float model), all ``(N, ...)``.

    The codes are the learned ones when they lower the block's output error on all ``N``
    samples, else the current ones.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    xt, xf, yt = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (x, x_float, y))
    opt = torch.optim.Adam(runner.parameters(), lr=lr)
    n = xt.shape[0]
    order = torch.randperm(n, generator=gen)
    pos = 0
    for t in range(iters):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + batch]
        pos += batch
        out = runner.run(xt[idx], drop_prob=drop_prob, x_float=xf[idx], gen=gen)
        loss = ((out - yt[idx]) ** 2).mean()
        beta = _beta(t, iters, warmup)
        if beta is not None:
            loss = loss + lam * runner.regulariser(beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    learned = {k: sl.hard_codes() for k, sl in runner.soft.items()}
    before = block_error(runner, xt, yt, runner.current)
    after = block_error(runner, xt, yt, {k: torch.from_numpy(v.astype(np.float32)) for k, v in learned.items()})
    if after > before:
        return {k: v.numpy().astype(np.float64) for k, v in runner.current.items()}, before, before
    return learned, before, after


def block_error(runner: BlockRunner, x, y, codes: dict, chunk: int = 8) -> float:
    """Mean squared error of the block output with integer ``codes`` and every quantize step on."""
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            out = runner.run(x[i:i + chunk], codes=codes)
            total += float(((out - y[i:i + chunk]) ** 2).sum())
            count += out.numel()
    return total / max(count, 1)


def write_block(qmodel: onnx.ModelProto, runner: BlockRunner, codes: dict[str, np.ndarray]) -> None:
    """Store a block's integer codes in ``qmodel`` (the layers' stored layout)."""
    for key, sl in runner.soft.items():
        write_codes(qmodel, sl.ql, codes[key])
