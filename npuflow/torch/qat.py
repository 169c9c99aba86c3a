"""Quantization-aware training: ``prepare_qat`` -> train -> ``to_deployable``.

The user keeps their own training loop.  What :class:`QatModel` adds:

* :meth:`QatModel.calibrate` runs a few batches through the observers (no gradients, eval-mode
  BatchNorm) and freezes them, so training starts from good scales;
* :meth:`QatModel.freeze_bn` switches folded BatchNorms to their running statistics (do it for the
  last part of training, so the network adapts to the weights that will be deployed);
* :meth:`QatModel.freeze_observers` stops the observers (learnable quantizers start training);
* :meth:`QatModel.quantizer_parameters` / :meth:`QatModel.non_quantizer_parameters` split
  parameters for two optimizer groups (quantizer parameters want a much larger learning rate);
* :meth:`QatModel.to_deployable` writes the QDQ ONNX model with the trained parameters.

Data-parallel training (torch DDP under ``torchrun``, gloo on CPU, nccl on GPU): wrap with
:func:`distributed` instead of ``DistributedDataParallel`` directly.  Each rank's activation
observers then observe the *global* batch (the ranks' batches gathered in rank order), so
ranges, votes and scales are those of one process on the concatenated batch, identical on
every rank; weights need nothing (DDP keeps them equal).  The gather runs only while observers
observe (``calibrate`` and training before ``freeze_observers``).  :func:`export_qat` writes
from rank 0 only.  BatchNorm folds with per-rank batch statistics until :meth:`QatModel.freeze_bn`;
freeze it early under DDP (the compiled model uses the running statistics).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import onnx
import torch
import torch.distributed as dist
from torch import nn

from ..errors import NpuflowError
from ..model import save
from ..targets import Target, load_target
from .capture import capture, example_tuple
from .config import Formats, QatConfig, formats_for, qat_config
from .export import export_qdq
from .layers import QatWeighted
from .prepare import rewrite
from .quantizer import FakeQuantizer

_QUANTIZER_PARAMS = ("log2_threshold", "step_size")


class QatModel(nn.Module):
    """A trainable module whose forward computes the deployed integer model's numbers."""

    def __init__(self, graph_module: torch.fx.GraphModule, target: Target, formats: Formats,
                 example_inputs: tuple, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.target = target
        self.formats = formats
        self.example_inputs = example_inputs
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)

    # --- quantizers ---------------------------------------------------------------------

    def quantizers(self) -> Iterator[tuple[str, FakeQuantizer]]:
        """Every fake quantizer (activations and weights) with its module path."""
        for name, m in self.graph_module.named_modules():
            if isinstance(m, FakeQuantizer):
                yield name, m

    def activation_quantizers(self) -> Iterator[tuple[str, FakeQuantizer]]:
        return ((n, q) for n, q in self.quantizers() if not q.weight)

    def freeze_observers(self) -> None:
        """Stop observing: scales are frozen, or trained when ``learnable``."""
        for _, q in self.quantizers():
            q.freeze()

    def freeze_bn(self) -> None:
        """Fold BatchNorm with running statistics from now on and stop updating them."""
        for m in self.graph_module.modules():
            if isinstance(m, QatWeighted):
                m.freeze_bn()

    @torch.no_grad()
    def calibrate(self, batches: Iterable, freeze: bool = True) -> None:
        """Run calibration batches through the observers (eval mode), then freeze them."""
        was_training = self.training
        self.eval()
        acts = [q for _, q in self.activation_quantizers()]
        for q in acts:
            q.unfreeze()
            q.calibrating = True
        try:
            for batch in batches:
                self(*example_tuple(batch))
        finally:
            for q in acts:
                q.calibrating = False
        if freeze:
            self.freeze_observers()
        self.train(was_training)

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """Learnable quantizer parameters (log2 thresholds / step sizes)."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in _QUANTIZER_PARAMS]

    def non_quantizer_parameters(self) -> list[nn.Parameter]:
        """Weights, biases and BatchNorm affine parameters."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] not in _QUANTIZER_PARAMS]

    def sync_observers(self) -> "QatModel":
        """Activation observers observe the global batch of a torch.distributed job (see the
        module docstring); group members vote through their leader, which is the one gathering."""
        for _, q in self.activation_quantizers():
            if not q._leader and "_observe" not in vars(q):
                q._observe = functools.partial(_observe_global_batch, q)
        return self

    # --- deployment -----------------------------------------------------------------------

    def to_deployable(self, path=None) -> onnx.ModelProto:
        """The QDQ ONNX model with the trained quantization parameters (saved when ``path``)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():  # weight scales follow the final weights before they are frozen in
                self.graph_module(*self.example_inputs)
            meta = {"npuflow.target": self.target.name, "npuflow.scale_type": self.target.numerics.scale_type,
                    "npuflow.source": "qat"}
            model = export_qdq(self.graph_module, self.example_inputs, self.input_names, self.output_names, meta)
        finally:
            self.train(was_training)
        if path is not None:
            save(model, path)
        return model


def prepare_qat(module: nn.Module, example_inputs, target: str | Target,
                config: QatConfig | dict | None = None, *, input_names: list[str] | None = None,
                output_names: list[str] | None = None) -> QatModel:
    """Capture ``module`` and return a trainable :class:`QatModel` for ``target``.

    The returned model is in training mode with observers active; call
    :meth:`QatModel.calibrate` first for a better start.  ``module`` itself is not modified.
    """
    tgt = target if isinstance(target, Target) else load_target(target)
    cfg = qat_config(config)
    formats = formats_for(tgt, cfg)
    inputs = example_tuple(example_inputs)
    gm = capture(module, inputs)
    rewrite(gm, tgt, formats)
    names_in = input_names or ([n.name for n in gm.graph.nodes if n.op == "placeholder"][: len(inputs)])
    gm.eval()
    if output_names is None:
        with torch.no_grad():
            out = gm(*inputs)
        count = len(out) if isinstance(out, (tuple, list)) else 1
        output_names = ["output"] if count == 1 else [f"output_{i}" for i in range(count)]
    qat = QatModel(gm, tgt, formats, inputs, list(names_in), list(output_names))
    return qat.train()


def export_qat(qat: QatModel | nn.parallel.DistributedDataParallel, path) -> onnx.ModelProto | None:
    """Write ``qat`` (or its DDP wrapper) as a QDQ ONNX file ready for ``npuflow compile``; in a
    torch.distributed job only rank 0 writes (the others return None: their models are equal)."""
    if isinstance(qat, nn.parallel.DistributedDataParallel):
        qat = qat.module
    if _world() > 1 and dist.get_rank() != 0:
        return None
    return qat.to_deployable(path)


def distributed(qat: QatModel, **ddp_options) -> nn.parallel.DistributedDataParallel:
    """``qat`` wrapped in ``DistributedDataParallel`` with synchronised observers (call after
    ``torch.distributed.init_process_group``).  Learnable quantizers are unused until observers
    freeze, so DDP is then told to expect unused parameters unless ``ddp_options`` says otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        raise NpuflowError("NPF_SCALEOUT_NO_PROCESS_GROUP")
    ddp_options.setdefault("find_unused_parameters", any(q.learnable for _, q in qat.quantizers()))
    return nn.parallel.DistributedDataParallel(qat.sync_observers(), **ddp_options)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _observe_global_batch(quantizer: FakeQuantizer, x: torch.Tensor) -> None:
    """Observe the ranks' batches concatenated in rank order (padded to one size for the gather)."""
    world = _world()
    if world > 1:
        sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        rows = [int(s) for s in sizes]
        padded = torch.cat([x, x.new_zeros((max(rows) - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        x = torch.cat([p[:n] for p, n in zip(parts, rows)])
    FakeQuantizer._observe(quantizer, x)
