"""The integer program: ops over integer tensors, as stored in a ``.npuf`` manifest.

An :class:`IntOp` is one accelerator operation after lowering: it reads and writes *integer*
tensors named as in ``quantized_model.onnx`` (the outputs of quantize steps), carries its
constants (packed integer weights, biases in accumulator units, lookup tables) as named blobs,
and remembers which ONNX nodes it replaced.  The JSON form (``to_json``) plus the blobs is the
whole description the runtime needs; nothing executable is stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class IntOp:
    op: str  # kernel name: conv, conv_transpose, matmul, eltwise, maxpool, avgpool, ...
    name: str  # the ONNX node it comes from (the core node)
    kind: str  # target operation kind (conv2d, depthwise_conv2d, fc, ...) for placement and perf
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    blobs: dict[str, np.ndarray] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)  # ONNX nodes replaced (core, fused chain, Q)
    reads: list[str] = field(default_factory=list)  # DQ nodes whose integer inputs it reads
    macs: int = 0

    def to_json(self, blob_names: dict[str, str]) -> dict:
        return {
            "op": self.op,
            "name": self.name,
            "kind": self.kind,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "attrs": self.attrs,
            "blobs": blob_names,
            "nodes": list(self.nodes),
            "macs": int(self.macs),
        }

    @property
    def weight_bytes(self) -> int:
        return int(sum(b.nbytes for b in self.blobs.values()))
