"""Magika on B4096 (a transformer-style byte classifier: one-hot, Dense, GELU and LayerNorm islands on the
CPU between the DPU's programs, 21 subgraphs) ran as 4 ONNX Runtime calls a frame: where a fused run's
output ``Cast`` to int8 read codes its table's ``Gather`` had made in int8, the joined graph's
``CastElimination`` dropped that ``Cast`` (apart it makes the run's graph output and stays), so the stretch
was refused.  Such a cast gives back the values it reads (``runtime/joined.same_type_casts``): one call a
frame, 1.05x, the op-by-op Session's outputs bit for bit (``benchmarks/results/runtime_vit_s35.md``)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.runtime import joined

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixture_models  # noqa: E402
from test_layernorm_variance import _bytes  # noqa: E402  (Magika's input: a file's bytes, then padding)

B4096 = "DPUCZDX8G_ISA1_B4096"
SHAPES = {"bytes": [1, 2048]}


@pytest.fixture(scope="module")
def magika_npuf(tmp_path_factory) -> Path:
    q = npuflow.quantize(str(fixture_models.magika()), [_bytes(k) for k in range(4)], B4096, input_shapes=SHAPES)
    path = tmp_path_factory.mktemp("magika") / "m.npuf"
    npuflow.compile(q.model, B4096, input_shapes=SHAPES).save(path)
    return path


def _fresh_session(npuf: Path, monkeypatch) -> npuflow.Session:
    """A Session of ``npuf`` that checks its joins now (no verdict stored by an earlier run)."""
    monkeypatch.setenv("NPUFLOW_ENABLE_CACHE", "0")
    session = npuflow.Session(npuf, threads=1)
    monkeypatch.undo()
    return session


def _equal_to_op_by_op(session: npuflow.Session, npuf: Path) -> None:
    reference = npuflow.Session(npuf, fuse=False)
    for k in (300, 7, 51):
        x = {"bytes": _bytes(k)}
        got, want = session.run(x), reference.run(x)
        for name, value in want.items():
            assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name


def test_the_whole_frame_is_one_onnx_runtime_call(magika_npuf, monkeypatch) -> None:
    session = _fresh_session(magika_npuf, monkeypatch)
    (program,) = session._live()
    assert [len(step.indices) for step in program.steps] == [21], [step.indices for step in program.steps]
    _equal_to_op_by_op(session, magika_npuf)


def _table_then_cast(to: int) -> onnx.GraphProto:
    """A fused run's output as it writes it: int8 codes from a table's ``Gather``, then a ``Cast``."""
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
             helper.make_node("Gather", ["table", "i"], ["codes"]),
             helper.make_node("Cast", ["codes"], ["y"], to=to)]
    table = numpy_helper.from_array(np.arange(-128, 128, dtype=np.int8)[::-1].copy(), "table")
    return helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, [4])],
                             [helper.make_tensor_value_info("y", to, [4])], [table])


def test_a_cast_to_its_inputs_type_gives_back_its_values_and_does_not_count() -> None:
    assert joined.same_type_casts(_table_then_cast(TensorProto.INT8)) == Counter({("", "Cast"): 1})
    # a cast that changes the type (uint8 -> int32 index, int8 -> float) is a kernel that counts
    assert joined.same_type_casts(_table_then_cast(TensorProto.FLOAT)) == Counter()


def _file_bytes(path: Path) -> np.ndarray:
    """A real file's first 2048 bytes as Magika's input, padded with its token 256."""
    data = np.frombuffer(path.read_bytes()[:2048], np.uint8).astype(np.int32)
    return np.pad(data, (0, 2048 - data.size), constant_values=256)[None]


def _one_hot_products(model: onnx.ModelProto) -> list[str]:
    """The ``Gemm``/``MatMul`` nodes whose rows come from an ``Equal`` (a one-hot) within four steps."""
    made = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        tensor = node.input[0] if node.op_type in ("Gemm", "MatMul", "QLinearConv") else None
        for _ in range(4):
            producer = made.get(tensor)
            if producer is None:
                break
            if producer.op_type == "Equal":
                found.append(node.name)
            tensor = producer.input[0]
    return found


@pytest.fixture(scope="module")
def magika_cpu_int8_npuf(tmp_path_factory) -> Path:
    q = npuflow.quantize(str(fixture_models.magika()), [_bytes(k) for k in range(4)], "cpu-int8", input_shapes=SHAPES)
    path = tmp_path_factory.mktemp("magika_cpu") / "m.npuf"
    npuflow.compile(q.model, "cpu-int8", input_shapes=SHAPES).save(path)
    return path


@pytest.mark.parametrize("npuf", ["magika_npuf", "magika_cpu_int8_npuf"])
def test_the_one_hot_dense_is_a_row_lookup_with_the_op_by_op_outputs_on_real_files(npuf, request, monkeypatch) -> None:
    """The joined graph reads Magika's first Dense as ``Gather`` of 258 rows (``onehot_gather``): no float
    ``Gemm`` of the 2048 x 257 one-hot codes (nor their ``Cast``) on B4096, no ``QLinearConv`` of them on
    cpu-int8, and the outputs of the op-by-op Session bit for bit on real files (the magika wheel's own
    sources and model config) and on bytes outside 0-256."""
    magika_npuf = request.getfixturevalue(npuf)
    opened = []
    real_open = joined.open_session
    monkeypatch.setattr(joined, "open_session", lambda model, **kw: opened.append(model) or real_open(model, **kw))
    session = _fresh_session(magika_npuf, monkeypatch)
    (model,) = opened
    assert _one_hot_products(model) == []
    assert sum(n.op_type == "Gather" and n.name.endswith("row_lookup2") for n in model.graph.node) == 1
    reference = npuflow.Session(magika_npuf, fuse=False)
    root = fixture_models.magika().parents[2]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".json", ".onnx"))[:6]
    inputs = [_file_bytes(p) for p in files] + [np.array([[-1, 257, 1 << 30, -(1 << 31), 256, 0] * 341 + [5, 9]],
                                                         np.int32)]
    assert len(inputs) == 7
    for x in inputs:
        got, want = session.run({"bytes": x}), reference.run({"bytes": x})
        for name, value in want.items():
            assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
