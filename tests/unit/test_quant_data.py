"""Calibration sources: iterables, .npy folders (one per input), raw tofile folders; per-sample checks."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.errors import NpuflowError
from npuflow.quant.data import CalibrationSource, InputSpec

ONE = [InputSpec("x", np.dtype(np.float32), (1, 3, None))]
TWO = [InputSpec("a", np.dtype(np.float32), (2,)), InputSpec("b", np.dtype(np.float32), (3,))]


def test_iterables_of_arrays_dicts_and_tuples():
    arrays = [np.zeros((1, 3, w), np.float32) for w in (4, 7)]  # the dynamic last dim may vary
    assert [s["x"].shape for s in CalibrationSource(arrays, ONE)] == [(1, 3, 4), (1, 3, 7)]
    gen = ({"x": a} for a in arrays)
    assert len(list(CalibrationSource(gen, ONE))) == 2
    pairs = [(np.ones(2), np.ones(3))]  # float64 is converted to the model's float32
    got = list(CalibrationSource(pairs, TWO))
    assert got[0]["a"].dtype == np.float32 and set(got[0]) == {"a", "b"}
    assert len(CalibrationSource(arrays, ONE, limit=1)) == 1


def test_folder_per_input_and_raw_files(tmp_path):
    for name, n in (("a", 2), ("b", 3)):
        (tmp_path / name).mkdir()
        for i in range(4):
            np.save(tmp_path / name / f"{i}.npy", np.full(n, i, np.float32))
    src = CalibrationSource(tmp_path, TWO)
    assert len(src) == 4 and [float(s["b"][0]) for s in src] == [0, 1, 2, 3]
    raw = tmp_path / "raw"
    raw.mkdir()
    np.arange(6, dtype=np.float32).tofile(raw / "s0.bin")
    src = CalibrationSource(raw, [InputSpec("x", np.dtype(np.float32), (1, 2, 3))], shapes={"x": [1, 2, 3]})
    assert next(iter(src))["x"][0, 1, 2] == 5
    bad = CalibrationSource(raw, [InputSpec("x", np.dtype(np.float32), (1, 2, 4))], shapes={"x": [1, 2, 4]})
    with pytest.raises(NpuflowError) as exc:
        list(bad)
    assert exc.value.code == "NPF_QUANT_CALIB_SOURCE"


@pytest.mark.parametrize("data, code", [
    ([], "NPF_QUANT_CALIB_EMPTY"),
    ([np.zeros((1, 4, 5), np.float32)], "NPF_QUANT_CALIB_MISMATCH"),
    ([np.zeros((1, 3), np.float32)], "NPF_QUANT_CALIB_MISMATCH"),
    ([{"y": np.zeros((1, 3, 5), np.float32)}], "NPF_QUANT_CALIB_MISMATCH"),
    ([np.full((1, 3, 5), np.inf, np.float32)], "NPF_QUANT_CALIB_NONFINITE"),
    (42, "NPF_QUANT_CALIB_SOURCE"),
    ("/no/such/folder", "NPF_QUANT_CALIB_SOURCE"),
])
def test_bad_samples_are_coded(data, code):
    with pytest.raises(NpuflowError) as exc:
        list(CalibrationSource(data, ONE))
    assert exc.value.code == code
