"""Memory of a loaded Session's fused runs (issue 19, "peak memory <= ORT's"): ONNX Runtime gets
the weights outside the model protobuf, a fused run keeps no graph once its session is open, and
loading a large classifier stays far below what float64 and protobuf copies of its weights cost."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

import npuflow
from benchmarks import runtime_memory as B
from npuflow.runtime import fused, fused_graph, fused_run
from tests.qdq_builder import Builder
from tests.unit.test_compiler_kernels import DPU, _x


def _classifier(k: int, n: int) -> Builder:
    """A power-of-two fully connected layer ``(1, k) @ (k, n)``, as EfficientNet-Lite0's last."""
    rng = np.random.default_rng(5)
    b = Builder("half_up")
    x = b.input("x", [1, k], 2.0 ** -5)
    w = b.weight("w", rng.normal(0, 0.3, (n, k)).astype(np.float32), 2.0 ** -7)
    bias = b.bias("b", rng.normal(0, 0.5, n), np.float32(2.0 ** -12))
    b.output(b.quantize(b.node("Gemm", [b.dq(x), w, bias], "fc", transB=1), 2.0 ** -2), "out")
    return b


def _conv_net() -> Builder:
    """Two 3x3 convolutions (64 -> 64 channels: 36,864 weights each) with a residual add."""
    rng = np.random.default_rng(7)
    b = Builder("half_up")
    x = b.input("x", [1, 64, 12, 12], 2.0 ** -4)
    w1 = b.weight("w1", rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32), 2.0 ** -8)
    c = b.quantize(b.node("Conv", [b.dq(x), w1], "c1", pads=[1, 1, 1, 1]), 2.0 ** -3)
    w2 = b.weight("w2", rng.normal(0, 0.1, (64, 64, 3, 3)).astype(np.float32), 2.0 ** -8)
    d = b.quantize(b.node("Conv", [b.dq(c), w2], "c2", pads=[1, 1, 1, 1]), 2.0 ** -3)
    b.output(b.quantize(b.node("Add", [b.dq(c), b.dq(d)], "add"), 2.0 ** -2), "out")
    return b


def test_fused_runs_give_onnx_runtime_their_weights_outside_the_protobuf(monkeypatch, tmp_path):
    opened = []
    real = fused_run.open_session

    def spy(model, **kwargs):
        opened.append((model, dict(kwargs.get("external") or {})))
        return real(model, **kwargs)

    monkeypatch.setattr(fused_run, "open_session", spy)
    feeds = {"x": _x([1, 64, 12, 12], 3, 4.0)}
    session = npuflow.Session(npuflow.compile(_conv_net().model(), DPU))
    runs = [it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
            if isinstance(it, fused.FusedRun)]
    assert runs and len(opened) == len(runs)
    for model, external in opened:
        inits = list(model.graph.initializer)
        inline = [t for t in inits if t.data_location != TensorProto.EXTERNAL]
        stubs = [t for t in inits if t.data_location == TensorProto.EXTERNAL]
        assert all(len(t.raw_data) < fused_graph.EXTERNAL_BYTES for t in inline)
        assert {t.name for t in stubs} == set(external) and all(not t.raw_data for t in stubs)
        assert all(list(t.dims) == list(external[t.name].shape) for t in stubs)
        assert sum(a.nbytes for a in external.values()) >= 2 * 64 * 64 * 9  # both convolutions' weights
        assert model.ByteSize() < 16 << 10  # nodes and small constants only
    # a loaded run holds its session, not its graph (whose constants ONNX Runtime holds already)
    for run in runs:
        assert not any(isinstance(v, fused_graph.Graph) for v in vars(run).values()), vars(run)
    # dump mode writes the graph again: every integer tensor, equal to the kernels'
    session.run(feeds, dump_dir=tmp_path / "fused")
    npuflow.Session(npuflow.compile(_conv_net().model(), DPU), fuse=False).run(feeds, dump_dir=tmp_path / "kernels")
    names = sorted(p.name for p in (tmp_path / "kernels").glob("*.npy"))
    assert len(names) >= 3 and names == sorted(p.name for p in (tmp_path / "fused").glob("*.npy"))
    for name in names:
        assert np.array_equal(np.load(tmp_path / "fused" / name), np.load(tmp_path / "kernels" / name)), name


def test_loading_a_large_classifier_peaks_far_below_copies_of_its_weights(tmp_path):
    # 1280 x 1000 int8 weights (1.2 MiB; 4.9 MiB as float32, 9.8 as float64).  Measured in a fresh
    # process over a baseline one (benchmarks/runtime_memory.memory_columns, VmHWM): 60 MiB when the
    # weights were bounded in float64 and handed to ONNX Runtime as a float convolution inside the
    # protobuf, 23 MiB on QLinearConv with external initialisers, of which about 12 are ONNX
    # Runtime's one-time start-up and the kernel probe of ort_kernels.weight_form
    path, input_path = tmp_path / "fc.npuf", tmp_path / "input.npz"
    npuflow.compile(_classifier(1280, 1000).model(), DPU).save(path)
    np.savez(input_path, x=_x([1, 1280], 45, scale=8.0))
    m = B.memory_columns({"npuflow": ("npuflow", path)}, input_path, frames=2, rounds=1)
    assert m["npuflow"]["peak"] < 35, m
