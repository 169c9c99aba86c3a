"""Hints for the reasons ``check`` gives (the judging itself is ``targets/judge.py``, which the
quantizer's target rewrites share)."""

from __future__ import annotations


def hint_for(reason: str, device: str) -> str:
    """A practical next step for a reason (the vendors' tuning advice, condensed)."""
    low = reason.lower()
    if " computes on " in low and " tensor " in low:
        return ("Integer and bool arithmetic (indices, masks, shape math) runs on the CPU; keep it off the "
                "feature-map path or fold it into constants.")
    if "is not quantized (it runs in float)" in low:
        return "Quantize this node's inputs and outputs (npuflow quantize does) to run it on the accelerator."
    if "has no integer lowering" in low:
        return "npuflow's compiler has no integer program for this op; it runs on the CPU in float."
    if low.startswith("hard-sigmoid"):
        return ("npuflow rewrites it into the target's hard-sigmoid (check judges, quantize applies the rewrite) "
                "only when a Conv/ConvTranspose/Gemm before it feeds this node alone: its parameters fold into that "
                "layer (passes/target_rewrites.py); give it such a producer or accept CPU execution.")
    if "(sigmoid) has no " in low:
        return (f"The {device} has no sigmoid.  Where the target runs hard_sigmoid and hard_swish (npuflow targets "
                "NAME lists its ops), a model fine-tuned with nn.Hardsigmoid in place of the sigmoid, and nn.Hardswish "
                "in place of SiLU (x * sigmoid(x): YOLOv5/v8, EfficientNet), runs them on the accelerator "
                "(npuflow qat fine-tunes); or accept the sigmoid on the CPU.")
    if "(gelu) has no " in low:
        return (f"The {device} has no GELU.  A model fine-tuned with nn.Hardswish or nn.ReLU in its place runs on the "
                "accelerator where the target runs them (npuflow targets NAME lists its ops; npuflow qat "
                "fine-tunes); or accept the GELU on the CPU.")
    if low.startswith("kernel"):
        return "Use a kernel within the range (e.g. stack 3x3 convolutions instead of one large kernel)."
    if low.startswith("stride"):
        return "Use a stride within the range (e.g. stride 2 twice, or a pooling layer)."
    if low.startswith("pad"):
        return "Reduce the padding, or pad with an explicit Pad op."
    if low.startswith("resize mode"):  # before "size": "Resize" holds it (a linear Resize was told to reduce channels)
        return (f"A linear Resize runs on the {device} as a depthwise ConvTranspose when it upsamples each axis by "
                "2 or 4 with half_pixel coordinates (torch: align_corners=False) or by 2, 4 or 8 with asymmetric "
                "ones: export it so, or upsample with mode 'nearest' (a convolution after it smooths as a linear "
                "one does), or accept this Resize on the CPU in float.")
    if low.startswith("resize"):
        return "Give the Resize constant scales or sizes (export at a fixed input shape)."
    if "channel" in low or "size" in low:
        return "Reduce the channel count or split the layer into smaller ones the target accepts."
    if low.startswith("group"):
        return f"Group convolutions other than depthwise do not run on the {device}; split into separate convolutions."
    if low.startswith("mode"):
        return "Use a mode the target supports."
    if low.startswith("the quantizer quantizes"):
        return ("npuflow's quantizer leaves this op in float unless quantized work is on both sides of it (a model "
                "quantized elsewhere with quantize steps around it is lowered); place it between quantized layers, "
                "or accept CPU execution.")
    if "needs its input's relative precision" in low:
        return ("Kept in float on purpose (an 8-bit grid loses the small values this op needs).  To force int8 "
                "anyway, give the node a bit width in the quantizer config: "
                "layers: [{name: NODE, activation: {bit_width: 8}}] (docs/check.md).")
    if "is control flow" in low:
        return ("To run the branch on the accelerator, fix the input its condition reads (--freeze-input "
                "NAME=VALUE) so the branch is inlined, or export the model without the If/Loop.")
    return "Change the layer to fit the limit, or accept CPU execution for it."
