"""Issue 19, peak memory: a lookup table whose entries are float32 codes is held in the narrowest
integer type that holds them and cast to float32 after the copy, where the table has at least as many
entries as the tensor it makes has elements (``fused_graph.lookup``): ONNX Runtime then keeps one byte
an entry instead of four for the session's life (PP-OCR cls on B4096: 18 accumulator tables, 1.15 MB
as float32), and the per-frame cast stays smaller than the table.  The codes do not change."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.ort_session import open_session
from npuflow.runtime import fused_run
from npuflow.runtime.fused_graph import Graph, input_name, lookup
from tests import fixture_models
from tests.compile_check import random_sample_npuf


def _lookup_model(shape: list[int], table: np.ndarray, zp: int) -> tuple[onnx.ModelProto, dict, str]:
    """A graph of one ``lookup`` of an int32 index of ``shape`` into ``table`` (centred on ``zp``)."""
    g = Graph({"t": {"shape": shape, "dtype": "int8"}, "i": {"shape": shape, "dtype": "int32"}})
    y = lookup(g, g._input("i"), table, zp, out="t")
    model, arrays = g.model([helper.make_tensor_value_info(y, TensorProto.FLOAT, shape)])
    node = next(n for n in model.graph.node if n.op_type == "GatherElements")
    inline = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name not in arrays}
    return model, arrays, {**inline, **arrays}[node.input[0]].dtype


@pytest.mark.parametrize(("shape", "low", "high", "dtype"), [
    ([1, 2, 4, 4], -6, 127, np.int8),        # 32 elements, 5,000 entries: int8 entries
    ([1, 2, 4, 4], 3, 250, np.uint8),       # centred on 3: 0..247
    ([1, 2, 4, 4], -300, 300, np.int16),
    ([1, 2, 4, 4], -40000, 40000, np.float32),  # no 16-bit type holds them
    ([1, 8, 32, 32], -6, 127, np.float32),   # 8,192 elements, more than the table: no cast pass
])
def test_lookup_entries_narrow_only_where_the_table_outnumbers_the_tensor(shape, low, high, dtype):
    rng = np.random.default_rng(0)
    entries = 5000
    table = rng.integers(low, high + 1, entries)
    table[:2] = low, high
    zp = 3
    model, arrays, held = _lookup_model(shape, table, zp)
    assert held == np.dtype(dtype)
    index = rng.integers(0, entries, shape).astype(np.int32)
    got = open_session(model, external=arrays).run(None, {input_name(0): index})[0]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (table - zp)[index].astype(np.float32))


def _fused_tables(path, monkeypatch) -> tuple[npuflow.Session, list[tuple[np.dtype, int]]]:
    """A Session on ``path`` and the (dtype, entries) of every table its fused runs hand to ONNX Runtime."""
    tables: list[tuple[np.dtype, int]] = []
    real = fused_run.open_session

    def capture(model, **kw):
        external = kw.get("external") or {}
        inline = {t.name: t for t in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "GatherElements" and (n.input[0] in external or n.input[0] in inline):
                data = external.get(n.input[0])
                data = numpy_helper.to_array(inline[n.input[0]]) if data is None else data
                tables.append((data.dtype, data.size))
        return real(model, **kw)

    monkeypatch.setattr(fused_run, "open_session", capture)
    session = npuflow.Session(path)
    monkeypatch.undo()
    return session, tables


@pytest.mark.parametrize(("name", "shape"), [("cls", [1, 3, 48, 192]), ("rec", [1, 3, 48, 320])])
def test_real_models_hold_narrow_tables_and_compute_the_same_codes(name, shape, tmp_path, monkeypatch):
    model = {"cls": fixture_models.ppocr_cls, "rec": fixture_models.ppocr_rec}[name]()
    path, samples = random_sample_npuf(model, "DPUCZDX8G_ISA1_B4096", "x", shape, 3, tmp_path / f"{name}.npuf")
    session, tables = _fused_tables(path, monkeypatch)
    narrow = sum(n for dt, n in tables if dt == np.int8)
    if name == "cls":  # its accumulator tables outnumber their tensors: most of its table entries
        assert narrow >= 100_000, tables
        assert narrow > sum(n for dt, n in tables if dt == np.float32), tables
    with session, npuflow.Session(path, fuse=False) as op_by_op:
        rng = np.random.default_rng(1)
        for x in [*samples, {"x": rng.normal(0, 2, shape).astype(np.float32)}]:
            got, expected = session.run(x), op_by_op.run(x)
            assert all(np.array_equal(got[k], v) for k, v in expected.items())
