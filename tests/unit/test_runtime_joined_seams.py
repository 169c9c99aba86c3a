"""A CPU part's int8 quantize step read by a fused run as uint8 bytes is one uint8 quantize step in the joined
graph (``runtime/joined_seams.py``, issue 19): the EfficientFormer-style net of ``bench_layernorm.py`` on
bernoulli2 is one ONNX Runtime call whose graph held 8 chains of ``QuantizeLinear`` (int8) then the fused
run's ``Cast(float) -> Add(128) -> Cast(uint8)``; written as ``QuantizeLinear`` of zero point + 128 the call
runs 21 nodes fewer, with the same outputs as the kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import npuflow
from benchmarks import bench_layernorm
from npuflow.runtime import joined


@pytest.fixture(scope="module")
def effformer(tmp_path_factory):
    path = tmp_path_factory.mktemp("effformer") / "effformer.onnx"
    bench_layernorm.export(bench_layernorm.build("effformer", "x"), str(path), 17)
    rng = np.random.default_rng(0)

    def image() -> dict:
        coarse = np.kron(rng.standard_normal((1, 3, 8, 8)), np.ones((1, 1, 4, 4)))
        return {"x": (coarse + 0.2 * rng.standard_normal((1, 3, 32, 32))).astype(np.float32)}

    calibration = [image() for _ in range(16)]
    compiled = npuflow.compile(npuflow.quantize(str(path), calibration, target="bernoulli2").model, "bernoulli2")
    return compiled, [image() for _ in range(6)]


def _byte_chains(model: onnx.ModelProto) -> int:
    """``QuantizeLinear -> Cast(float) -> Add -> Cast(uint8)`` chains in ``model``."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)

    def after(n: onnx.NodeProto, op: str, to: int | None = None) -> list[onnx.NodeProto]:
        return [r for r in readers.get(n.output[0], []) if r.op_type == op
                and (to is None or onnx.helper.get_attribute_value(r.attribute[0]) == to)]

    return sum(1 for q in model.graph.node if q.op_type == "QuantizeLinear"
               for c in after(q, "Cast", onnx.TensorProto.FLOAT) for a in after(c, "Add")
               for _ in after(a, "Cast", onnx.TensorProto.UINT8))


def test_effformer_seams_are_one_quantize_step_equal_to_the_kernels(effformer, monkeypatch):
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")  # the verdicts found here, not stored before
    compiled, frames = effformer
    opened = []
    real = joined.open_session
    monkeypatch.setattr(joined, "open_session", lambda model, **kw: opened.append(model) or real(model, **kw))
    session, ref = npuflow.Session(compiled, threads=1), npuflow.Session(compiled, fuse=False)
    (step,) = session._live()[0].steps
    assert isinstance(step.executor, joined.Joined) and len(step.indices) == len(compiled.subgraphs) > 10
    (model,) = opened
    assert _byte_chains(model) == 0  # 8 before
    for x in frames:
        a, b = session.run(x), ref.run(x)
        assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in b)
