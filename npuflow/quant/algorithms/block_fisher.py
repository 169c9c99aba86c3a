"""Output-sensitivity (Fisher diagonal) weights for ``brecq``'s block loss (``block_loss: fisher``, issue 18).

A block's plain loss, the mean squared error of its outputs, weighs every output element alike,
yet the layers after the block amplify the error of some elements and clip or pool away that of
others.  On EfficientNet-Lite0 13 of 17 blocks lowered their own error while raising the model's
calibration output error (:mod:`.block_accept` reverted them).  BRECQ (Li et al., ICLR 2021)
weighs each block-output element's squared error by the squared gradient of the model's output
loss with respect to that element, a diagonal Fisher approximation of how much the model output
moves with it.

Here the output loss is the measure the acceptance decides with (:func:`.apply.relative_error`:
per model output, the summed squared distance to the float output over the float output's
energy), taken between the float model and the quantized model the blocks start from (layer-wise
AdaRound's).  Its gradient is computed once per group of blocks on the *float* model, run in torch
by the block runner (:class:`.block_recon.BlockRunner` over the whole float graph), for each
calibration sample and each element of the float tensors the blocks reconstruct; squared and
divided by its mean over the tensor (samples included), it multiplies that tensor's squared error
in the block loss, so a weighted loss keeps the plain loss's scale against AdaRound's regulariser.
A tensor whose gradient is zero everywhere (the outputs do not depend on it, or the quantized
model's outputs equal the float ones) keeps the plain weights.

The weights ride with the float block tensors (:class:`.block_recon.FloatValues`, under the
tensor's name prefixed with :data:`WEIGHT`), so they are held for one group of blocks at a time and
count against the same memory budget.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import onnx

from ...errors import NpuflowError
from ...graph import attr
from .block_ops import run_op, supported
from .block_recon import Block, BlockRunner, constant_tensors
from .capture import Feed

log = logging.getLogger(__name__)

#: Prefix of a float tensor's weights among the float block tensors (``WEIGHT + name``).
WEIGHT = "fisher:"

#: Share of the squared-gradient weights in each ``block_loss``'s element weights; the rest is
#: the plain loss's uniform weight (``fisher_mse``: an MSE floor under the elements whose
#: gradient at the float model is zero, a ReLU's negative side among them).
MIX = {"fisher": 1.0, "fisher_mse": 0.5}

#: Calibration samples per forward and backward pass of the float model.
BATCH = 4


class OutputSensitivity:
    """Squared gradients of the model's output error with respect to the float model's tensors."""

    def __init__(self, float_model: onnx.ModelProto, feeds: list[Feed], quantized: list[list[np.ndarray]],
                 reference: list[list[np.ndarray]], loss: str = "fisher", batch: int = BATCH) -> None:
        """``quantized`` / ``reference``: the quantized and float model's outputs per feed (ORT);
        ``loss``: a key of :data:`MIX`."""
        const = constant_tensors(float_model)
        nodes = [n for n in float_model.graph.node if not all(o in const for o in n.output if o)]
        bad = sorted({n.op_type for n in nodes if n.op_type not in FLOAT_OPS and not supported(n)})
        if bad:
            raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where="fast_finetune.block_loss fisher",
                               reason=f"the output-sensitivity weights run the float model in torch, which cannot "
                                      f"run its {', '.join(bad)} (set block_loss: mse)")
        self.inputs = [i.name for i in float_model.graph.input if i.name not in const]
        self.outputs = [o.name for o in float_model.graph.output]
        self.nodes = nodes
        self.consts = BlockRunner(float_model, Block(self.inputs, self.outputs, nodes)).consts
        self.feeds, self.batch, self.mix = list(feeds), batch, MIX[loss]
        self.quantized = quantized
        self.energy = [sum(float(np.sum(np.asarray(r[k], dtype=np.float64) ** 2)) for r in reference)
                       for k in range(len(self.outputs))]

    def weights(self, names: list[str]) -> dict[str, list[np.ndarray]]:
        """``{name: [weights per feed]}`` for the float tensors ``names`` (graph inputs are left out)."""
        import torch

        made = {o for n in self.nodes for o in n.output if o}
        names = [t for t in names if t in made and t not in self.inputs]
        if not names:
            return {}
        got: dict[str, list[np.ndarray]] = {t: [] for t in names}
        for i in range(0, len(self.feeds), self.batch):
            part = self.feeds[i:i + self.batch]
            # the inputs require a gradient so that torch records the graph (the weights are constants)
            x = {t: torch.from_numpy(np.concatenate([np.asarray(f[t], dtype=np.float32) for f in part])
                                     ).requires_grad_() for t in self.inputs}
            out = self.run(x)
            loss = 0.0
            for k, o in enumerate(self.outputs):
                q = torch.from_numpy(np.concatenate([np.asarray(self.quantized[i + j][k], dtype=np.float32)
                                                     for j in range(len(part))]))
                loss = loss + ((out[o] - q) ** 2).sum() / max(self.energy[k], 1e-30)
            grads = torch.autograd.grad(loss, [out[t] for t in names], allow_unused=True)
            for t, g in zip(names, grads):
                sq = np.zeros(tuple(out[t].shape), np.float32) if g is None else (g.detach() ** 2).numpy()
                got[t].extend(np.split(sq, len(part), axis=0))
        return {t: normalised(v, t, self.mix) for t, v in got.items()}

    def run(self, x: dict) -> dict:
        """Every tensor of the float model for the inputs ``x`` (batched on dim 0), differentiable."""
        env = {**x, **self.consts}
        for n in self.nodes:
            xs = [env[i] if i else None for i in n.input]
            env[n.output[0]] = FLOAT_OPS[n.op_type](n, xs) if n.op_type in FLOAT_OPS else run_op(n, xs)
        return env

    def collect(self, floats: Callable[[list[str]], dict[str, list[np.ndarray]]]
                ) -> Callable[[list[str]], dict[str, list[np.ndarray]]]:
        """``floats`` (the float block tensors by name) with each tensor's weights beside it."""
        def both(names: list[str]) -> dict[str, list[np.ndarray]]:
            values = floats(names)
            values.update({WEIGHT + t: w for t, w in self.weights(names).items()})
            return values
        return both


def _softmax(n: onnx.NodeProto, xs: list):
    import torch

    return torch.softmax(xs[0], dim=int(attr(n, "axis", -1)))


def _max_pool(n: onnx.NodeProto, xs: list):
    import torch.nn.functional as F

    k = list(attr(n, "kernel_shape"))
    pads = list(attr(n, "pads", [0] * 2 * len(k)))
    if attr(n, "ceil_mode", 0) or pads[:len(k)] != pads[len(k):] or len(k) != 2 \
            or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"fast_finetune.block_loss fisher, node {n.name}",
                           reason="the output-sensitivity pass runs 2-D MaxPool with symmetric pads only "
                                  "(set block_loss: mse)")
    return F.max_pool2d(xs[0], k, list(attr(n, "strides", [1, 1])), pads[:2], list(attr(n, "dilations", [1, 1])))


#: Float-model ops that blocks never hold (no quantize step follows them in a DPU model's blocks)
#: but the sensitivity pass runs through, by op type.
FLOAT_OPS: dict[str, Callable[[onnx.NodeProto, list], Any]] = {"MaxPool": _max_pool, "Softmax": _softmax}


def normalised(squared: list[np.ndarray], name: str, mix: float = 1.0) -> list[np.ndarray]:
    """``squared`` over its mean (all samples), ``mix`` of it plus ``1 - mix`` (mean 1 either
    way); ones where it is zero everywhere."""
    mean = float(np.mean([float(np.mean(a, dtype=np.float64)) for a in squared]))
    if not np.isfinite(mean) or mean <= 0:
        log.debug("block_loss fisher: the outputs do not move with %s; plain weights", name)
        return [np.ones_like(a) for a in squared]
    return [(1.0 - mix + mix * a / mean).astype(np.float32) for a in squared]


def block_weights(block: Block, floats: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]] | None:
    """The weights of the block's outputs (one array per sample each, as :func:`.block_recon.reconstruct`
    reads them) from the float block tensors, or ``None`` when they were not computed (plain loss)."""
    keys = {t: WEIGHT + block.targets[t] for t in block.outputs}
    if not all(k in floats for k in keys.values()):
        return None
    return {t: floats[k] for t, k in keys.items()}
