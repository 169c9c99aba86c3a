"""``npuflow run -i`` reads ``.npz`` files (newuser round 4): a bare ``FILE.npz`` gives every input
its array of the same name (a model with several inputs in one file, as ``npuflow compare --data``
reads them), ``NAME=FILE.npz`` that input its array or the file's only one.  Before, the ``NpzFile``
object itself was fed and refused as "input 'x' has dtype NpzFile"."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.cli.run_cmd import _read_inputs
from npuflow.errors import NpuflowError


def test_bare_npz_feeds_every_input_by_name(tmp_path):
    x, lo = np.ones((1, 4, 16), np.float32), np.array(-1.0, np.float32)
    np.savez(tmp_path / "s.npz", x=x, lo=lo)
    feeds = _read_inputs([str(tmp_path / "s.npz")], ["x", "lo"])
    assert set(feeds) == {"x", "lo"} and all(isinstance(v, np.ndarray) for v in feeds.values())
    assert np.array_equal(feeds["x"], x) and feeds["lo"].dtype == np.float32


def test_named_npz_takes_its_array_or_its_only_one(tmp_path):
    np.savez(tmp_path / "one.npz", anything=np.zeros((2, 3), np.float32))
    np.savez(tmp_path / "two.npz", x=np.ones(3, np.float32), y=np.zeros(3, np.float32))
    assert _read_inputs([f"x={tmp_path / 'one.npz'}"], ["x"])["x"].shape == (2, 3)
    assert np.array_equal(_read_inputs([f"y={tmp_path / 'two.npz'}"], ["x", "y"])["y"], np.zeros(3, np.float32))
    with pytest.raises(NpuflowError) as err:
        _read_inputs([f"z={tmp_path / 'two.npz'}"], ["z"])
    assert err.value.code == "NPF_RUNTIME_BAD_INPUT_FILE" and "x, y" in str(err.value)


def test_npy_inputs_unchanged(tmp_path):
    np.save(tmp_path / "x.npy", np.ones(3, np.float32))
    assert _read_inputs([str(tmp_path / "x.npy")], ["x"])["x"].shape == (3,)
    with pytest.raises(NpuflowError) as err:
        _read_inputs([str(tmp_path / "x.npy")], ["x", "y"])
    assert err.value.code == "NPF_RUNTIME_BAD_INPUT_FILE"
