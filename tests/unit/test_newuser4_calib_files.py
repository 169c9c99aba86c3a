"""Images and ``.npz`` archives in a ``quantize --calib`` folder are refused by what they are
(newuser round 4).  Before, they were read as raw ``numpy.tofile`` bytes: "raw file without a
shape: set calib_shapes" (advice that leads to the next case), and with ``calib_shapes`` set and a
matching byte count an image's compressed bytes became a calibration sample without a word."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.errors import NpuflowError
from npuflow.quant.data import CalibrationSource, InputSpec

SPEC = [InputSpec("x", np.dtype(np.uint8), (1, 1, 8, 8))]


@pytest.mark.parametrize("name, words", [("000.png", "an image"), ("000.JPG", "an image"),
                                         ("000.npz", "a .npz archive")])
def test_image_or_npz_in_calibration_folder_is_refused_by_kind(tmp_path, name, words):
    (tmp_path / name).write_bytes(bytes(range(64)))  # 64 bytes: exactly the raw size calib_shapes asks
    with pytest.raises(NpuflowError) as err:
        list(CalibrationSource(tmp_path, SPEC, shapes={"x": [1, 1, 8, 8]}, dtype="uint8"))
    assert err.value.code == "NPF_QUANT_CALIB_SOURCE" and words in str(err.value) and name in str(err.value)


def test_raw_and_npy_files_still_read(tmp_path):
    np.arange(64, dtype=np.uint8).tofile(tmp_path / "000.bin")
    np.save(tmp_path / "001.npy", np.ones((1, 1, 8, 8), np.uint8))
    samples = list(CalibrationSource(tmp_path, SPEC, shapes={"x": [1, 1, 8, 8]}, dtype="uint8"))
    assert [int(s["x"].sum()) for s in samples] == [int(np.arange(64).sum()), 64]
