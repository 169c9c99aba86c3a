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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
import torch
from torch import nn

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


def export_qat(qat: QatModel, path) -> onnx.ModelProto:
    """Write ``qat`` as a QDQ ONNX file ready for ``npuflow compile``."""
    return qat.to_deployable(path)
