"""The two subgraph executors: the integer program (accelerator) and ONNX Runtime (CPU)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnxruntime as ort

from .kernels import KERNELS

Dump = Callable[[str, np.ndarray], None]


class IntegerExecutor:
    """Runs one accelerator subgraph's integer program.

    Prepared kernels are built once and only read while running; each run gets its own arena
    (the compiler's memory plan: internal tensors are views at planned offsets, reused once
    dead), so concurrent runs from several threads never share mutable state.
    """

    def __init__(self, sg: dict, tensors: dict, blob: Callable[[str], np.ndarray]) -> None:
        self.outputs = list(sg["outputs"])
        self.steps = []
        for op in sg["ops"]:
            blobs = {role: blob(name) for role, name in op["blobs"].items()}
            self.steps.append((KERNELS[op["op"]](op["attrs"], blobs), op["inputs"], op["outputs"]))
        plan = sg["memory"]
        self.arena_bytes = plan["arena_bytes"]
        self.buffers = {}
        for name, b in plan["buffers"].items():
            info = tensors[name]
            dtype = np.dtype(info["dtype"])
            count = int(np.prod(info["shape"]))
            self.buffers[name] = (b["offset"], count, dtype, tuple(info["shape"]))

    def run(self, feeds: dict[str, np.ndarray], dump: Dump | None = None) -> dict[str, np.ndarray]:
        arena = np.empty(self.arena_bytes, np.uint8)
        env = dict(feeds)
        for kernel, ins, outs in self.steps:
            results = kernel([env[i] for i in ins])
            for name, value in zip(outs, results):
                buf = self.buffers.get(name)
                if buf is not None and value.shape == buf[3] and value.dtype == buf[2]:
                    off, count, dtype, shape = buf
                    view = arena[off:off + count * dtype.itemsize].view(dtype).reshape(shape)
                    np.copyto(view, value)
                    value = view
                env[name] = value
                if dump is not None:
                    dump(name, value)
        return {o: env[o] for o in self.outputs}


class OnnxExecutor:
    """Runs one CPU subgraph (plain ONNX with the quantized model's own Q/DQ) on ONNX Runtime.

    Graph optimisations are limited to the basic level so that ONNX Runtime does not fuse Q/DQ
    pairs into QLinear kernels with a different requantisation than the reference.  CPU
    subgraphs are small (a few nodes between accelerator parts), so each session runs on one
    thread by default: a thread pool per subgraph costs more in wake-ups than it gains.
    """

    def __init__(self, sg: dict, onnx_bytes: bytes, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.inputs = list(sg["inputs"])
        self.outputs = list(sg["outputs"])

    def run(self, feeds: dict[str, np.ndarray], dump: Dump | None = None) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, {k: feeds[k] for k in self.inputs})
        result = dict(zip(self.outputs, values))
        if dump is not None:
            for name, value in result.items():
                if value.dtype.kind in "iu":
                    dump(name, value)
        return result
