"""A CPU subgraph's large constants reach ONNX Runtime outside the model protobuf (issue 19, "peak
memory <= ORT's"): PP-OCRv4 rec's CTC head on the DPU, a float ``MatMul`` with more output channels
than the target holds, stays in a CPU subgraph, and ONNX Runtime's Python session would keep its
weights resident in the serialized model it was given.  Outputs stay those of the inline form."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx import TensorProto

import npuflow
from npuflow.runtime import executors, fused_graph
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import DPU, _x

K, N = 16, 4100  # 4100 output channels: over B4096's 256 * 16, so the MatMul stays on the CPU


def _head(k: int = K, seed: int = 3, w_std: float = 0.2) -> Builder:
    """A DPU convolution of ``k`` channels, then a float ``k x N`` ``MatMul`` (float weights, as the
    quantizer leaves a node placed on the CPU) with a bias and a ``Softmax``: rec's CTC head in small."""
    rng = np.random.default_rng(seed)
    b = Builder("half_up")
    x = b.input("x", [1, k, 1, 6], 2.0 ** -4)
    w = b.weight("w", rng.normal(0, w_std, (k, k, 1, 1)).astype(np.float32), 2.0 ** -7)
    c = b.quantize(b.node("Conv", [b.dq(x), w], "conv"), 2.0 ** -3)
    rows = b.node("Transpose", [b.node("Squeeze", [b.dq(c), b.const("axes", np.array([2]))], "squeeze")],
                  "rows", perm=[0, 2, 1])
    q = b.quantize(rows, 2.0 ** -3)
    mm = b.node("MatMul", [b.dq(q), b.const("head_w", rng.normal(0, 0.3, (k, N)).astype(np.float32))], "head")
    logits = b.node("Add", [mm, b.const("head_b", rng.normal(0, 0.1, N).astype(np.float32))], "logits")
    b.float_output(b.node("Softmax", [logits], "probs", axis=-1))
    return b


def test_a_cpu_subgraphs_float_weights_go_to_onnx_runtime_outside_the_protobuf(monkeypatch):
    opened = []
    real = executors.open_session

    def spy(model, **kwargs):
        opened.append((model, dict(kwargs.get("external") or {})))
        return real(model, **kwargs)

    monkeypatch.setattr(executors, "open_session", spy)
    model = _head().model()
    compiled = npuflow.compile(model, DPU)
    cpu = [sg for sg in compiled.manifest["subgraphs"] if sg["engine"] == "onnx"]
    assert any("head" in sg["nodes"] for sg in cpu), [sg["nodes"] for sg in cpu]
    assert sum(sg.on_accelerator for sg in compiled.subgraphs) >= 1
    session = npuflow.Session(compiled)
    head_model, external = next((m, e) for m, e in opened if any(n.name == "head" for n in m.graph.node))
    assert set(external) == {"head_w", "head_b"}  # 4100 float32 biases: 16 KiB, over EXTERNAL_BYTES too
    assert external["head_w"].shape == (K, N) and external["head_w"].dtype == np.float32
    stubs = {t.name: t for t in head_model.graph.initializer if t.data_location == TensorProto.EXTERNAL}
    assert set(stubs) == set(external) and all(not t.raw_data for t in stubs.values())
    assert head_model.ByteSize() < fused_graph.EXTERNAL_BYTES * 2  # nodes and small constants only

    # the outputs are those of ONNX Runtime on the quantized model (power-of-two scales: exact), and
    # those of the CPU subgraph's session on its inline weights (the form before this change)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    reference = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    head = next(k for k, sg in enumerate(compiled.manifest["subgraphs"]) if "head" in sg.get("nodes", []))
    sg = compiled.manifest["subgraphs"][head]
    inline = ort.InferenceSession(bytes(compiled.blob(sg["onnx"])), opts, providers=["CPUExecutionProvider"])
    tensors = compiled.manifest["tensors"]
    rng = np.random.default_rng(0)
    for seed in range(6):
        feeds = {"x": _x([1, K, 1, 6], seed, 2.0 + seed)}
        assert np.array_equal(session.run(feeds)["probs"], reference.run(["probs"], feeds)[0]), seed
        codes = [rng.integers(-128, 128, tensors[t]["shape"]).astype(tensors[t]["dtype"]) for t in sg["inputs"]]
        ours = session.run_subgraph(head, codes)
        assert all(np.array_equal(a, b) for a, b in zip(ours, inline.run(sg["outputs"], dict(zip(sg["inputs"], codes)))))
