"""Issue 19, peak memory at load: a CPU subgraph with large weights (PP-OCRv4 rec's CTC head on the
DPU targets) gets its ONNX Runtime session after its serialized blob is let go and the load's
``release`` (the mapped file's pages, the C heap's free pages) has run.

That creation (ONNX Runtime's copy of the weights and its packed form) was rec's high-water mark,
with the blob's bytes (held by the caller), the pages they were read from and the protobuf's freed
copy beside it (docs/runtime-measurements.md, "Peak memory").  The outputs do not change.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

import npuflow
from npuflow.compiler import artifact
from npuflow.runtime import executors, session as session_module
from tests.unit.test_compiler_kernels import DPU, _x
from tests.unit.test_runtime_cpu_weights import _head

K, N = 64, 4100  # 4100 output channels: over B4096's 256 * 16, so the MatMul stays on the CPU; 1.05 MB


def _head_model():
    """A DPU convolution, then a float 64 x 4100 ``MatMul`` (1.05 MB) with a bias and a ``Softmax``."""
    return _head(K, seed=5, w_std=0.1).model()


def test_the_heads_session_opens_after_its_blob_is_dropped_and_the_load_released(monkeypatch, tmp_path: Path):
    path = tmp_path / "head.npuf"
    npuflow.compile(_head_model(), DPU).save(path)
    events: list = []
    real_open, real_program = executors.open_session, session_module._Program.__init__

    def program(self, manifest, blob, threads, cpu_threads, fuse, release=executors.return_freed_heap):
        def releasing():
            events.append("release")
            return release()
        real_program(self, manifest, blob, threads, cpu_threads, fuse, releasing)

    def opening(model, **kwargs):
        if any(n.name == "head" for n in model.graph.node):
            held = sum(s.size for s in tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(True, artifact.__file__)]).statistics("filename"))
            events.append(("open head", held))
        return real_open(model, **kwargs)

    monkeypatch.setattr(session_module._Program, "__init__", program)
    monkeypatch.setattr(executors, "open_session", opening)
    tracemalloc.start()
    try:
        s = npuflow.Session(path)
    finally:
        tracemalloc.stop()
    monkeypatch.undo()
    k = next(i for i, e in enumerate(events) if isinstance(e, tuple))
    assert k > 0 and events[k - 1] == "release", events  # released just before the head's session
    assert events[k][1] < K * N * 4 // 4, events  # the blob's bytes (1.05 MB) are not held then

    # outputs: those of the Session before this change (the bytes given, no release), on the same file
    before = npuflow.Session(path, fuse=False)
    for seed in range(4):
        feeds = {"x": _x([1, K, 1, 6], seed, 2.0 + seed)}
        a, b = s.run(feeds), before.run(feeds)
        assert all(np.array_equal(a[n], b[n]) for n in b), seed


def test_an_executor_still_takes_the_bytes_themselves():
    compiled = npuflow.compile(_head_model(), DPU)
    sg = next(sg for sg in compiled.manifest["subgraphs"] if sg["engine"] == "onnx" and "head" in sg["nodes"])
    by_bytes = executors.OnnxExecutor(sg, compiled.blob(sg["onnx"]), lookup=False)
    by_reader = executors.OnnxExecutor(sg, lambda: compiled.blob(sg["onnx"]), lookup=False,
                                       release=executors.return_freed_heap)
    tensors = compiled.manifest["tensors"]
    rng = np.random.default_rng(1)
    feeds = {t: rng.integers(-128, 128, tensors[t]["shape"]).astype(tensors[t]["dtype"]) for t in sg["inputs"]}
    a, b = by_bytes.run(feeds), by_reader.run(feeds)
    assert all(np.array_equal(a[n], b[n]) for n in a)
