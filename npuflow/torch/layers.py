"""QAT versions of the weighted layers: convolution (with BatchNorm folded) and linear.

The compiled model runs a convolution with the BatchNorm folded into its weights and bias,
int8 weights, and an int32 bias whose scale is ``input_scale * weight_scale``.  :class:`QatWeighted`
computes exactly that:

* BatchNorm folding: ``w' = w * gamma / sqrt(var + eps)``, ``b' = beta + (b - mean) * gamma /
  sqrt(var + eps)``; before :meth:`freeze_bn` a training forward folds with the batch statistics
  (measured by a float pass) and updates the running statistics, as the float BN would; after
  it, and in eval mode, the running statistics are used, which is what gets exported;
* the weight is fake-quantized by its own :class:`FakeQuantizer` (per tensor or per channel);
* the bias is quantized to int32 with the target's bias rounding and scale ``s_in * s_w``.

The wrapped module's own ``forward`` runs with the quantized tensors substituted
(``torch.func.functional_call``), so conv subclasses with built-in padding keep working.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..fake_quant import QuantSpec, fake_quantize, quantize_codes
from .markers import QuantRecord, active_recorder, mark
from .quantizer import FakeQuantizer


class QatWeighted(nn.Module):
    """A Conv/Linear (optionally with its BatchNorm folded) with quantized weight and bias."""

    def __init__(
        self, module: nn.Module, weight_quant: FakeQuantizer, bias_spec: QuantSpec,
        bn: nn.modules.batchnorm._BatchNorm | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.bn = bn
        self.weight_quant = weight_quant
        self.bias_spec = bias_spec
        self.bn_frozen = False
        self.path = ""  # module path in the captured graph (names the exported weights)

    def freeze_bn(self) -> None:
        """Fold with the running statistics from now on (and stop updating them)."""
        self.bn_frozen = True

    def folded_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias the integer layer uses (BatchNorm folded)."""
        w, b = self.module.weight, self.module.bias
        if self.bn is None:
            return w, b
        bn = self.bn
        if self.training and not self.bn_frozen:
            mean, var = self._batch_stats(x)
        else:
            mean, var = bn.running_mean, bn.running_var
        gamma = bn.weight if bn.affine else torch.ones_like(mean)
        beta = bn.bias if bn.affine else torch.zeros_like(mean)
        factor = gamma / torch.sqrt(var + bn.eps)
        w = w * factor.reshape([-1] + [1] * (w.dim() - 1))
        base = b if b is not None else torch.zeros_like(mean)
        return w, beta + (base - mean) * factor

    def _batch_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bn = self.bn
        with torch.no_grad():
            y = self.module(x)
            dims = [0] + list(range(2, y.dim()))
            mean = y.mean(dim=dims)
            var = y.var(dim=dims, unbiased=False)
            if bn.track_running_stats:
                n = y.numel() // y.shape[1]
                momentum = 0.1 if bn.momentum is None else bn.momentum
                bn.running_mean.lerp_(mean, momentum)
                bn.running_var.lerp_(var * n / max(n - 1, 1), momentum)
                bn.num_batches_tracked += 1
        return mean, var

    def forward(self, x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
        w, b = self.folded_params(x)
        wq = self.weight_quant(w)
        s_w, zp_w = self.weight_quant.quant_params()
        params = {"weight": wq}
        bias_scale = bq = None
        if b is not None:
            bias_scale = (input_scale.detach() * s_w.detach()).to(torch.float32)
            zeros = torch.zeros(bias_scale.shape, dtype=torch.int32, device=bias_scale.device)
            axis = 0 if bias_scale.dim() == 1 else None
            bq = fake_quantize(b, bias_scale, zeros, self.bias_spec, axis)
            params["bias"] = bq
        if active_recorder() is not None:
            params = self._mark(params, w, b, s_w, zp_w, bias_scale)
        return _call_with(self.module, params, x)

    def _mark(self, params, w, b, s_w, zp_w, bias_scale):
        """Hand the exported weight/bias codes to the recorder (export only)."""
        wq = self.weight_quant
        _, w_codes = quantize_codes(w, s_w, zp_w, wq.spec, wq.axis)
        out = {"weight": mark(params["weight"].detach().clone(), QuantRecord(
            "weight", f"{self.path}.weight", wq.spec, _np(s_w), _np(zp_w), wq.axis, w_codes.to(torch.int64).numpy()))}
        if "bias" in params:
            zeros = torch.zeros(bias_scale.shape, dtype=torch.int32, device=bias_scale.device)
            axis = 0 if bias_scale.dim() == 1 else None
            _, b_codes = quantize_codes(b, bias_scale, zeros, self.bias_spec, axis)
            out["bias"] = mark(params["bias"].detach().clone(), QuantRecord(
                "bias", f"{self.path}.bias", self.bias_spec, _np(bias_scale), _np(zeros), axis,
                b_codes.to(torch.int64).numpy()))
        return out


def _call_with(module: nn.Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` with substituted weight/bias.

    ``functional_call`` refuses to run under the TorchScript tracer that ``torch.onnx.export``
    uses, so during export the tensors are swapped into the parameter table for one call.
    """
    if not torch.jit.is_tracing():
        return functional_call(module, params, (x,))
    saved = {k: module._parameters[k] for k in params}
    try:
        module._parameters.update(params)
        return module(x)
    finally:
        module._parameters.update(saved)


def _np(t: torch.Tensor):
    return t.detach().cpu().numpy()
