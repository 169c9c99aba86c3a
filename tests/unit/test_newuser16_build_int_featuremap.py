"""``npuflow build`` with an integer featuremap saved by ``numpy.tofile`` (new-user round 16: a
diffusion U-Net's int64 timestep ``t``, hb_mapper's raw-file convention).  The raw file of 8 bytes
was refused as "input 't' of shape 1 needs 4 (float32)": raw featuremaps were float32 only,
although the model takes int64 and the build feeds that input in the model's dtype.  The whole build from raw
files: ``test_build_calibration.test_a_scalar_integer_input_builds_with_per_input_folders``."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.build.calibration import CalibrationSet
from npuflow.errors import NpuflowError
from npuflow.passes.preprocess import InputPreprocess


def test_raw_int64_featuremap_files_are_read_in_the_model_dtype(tmp_path):
    pre = InputPreprocess("t", (1,), "featuremap", "NCHW", "featuremap", "NCHW")
    for i, step in enumerate((0, 750, 2**40)):
        np.array([step], np.int64).tofile(tmp_path / f"s{i}.bin")
    calib = CalibrationSet([(pre, tmp_path)], images=False, dtypes={"t": np.dtype(np.int64)})
    got = [s["t"] for s in calib]
    assert [a.dtype for a in got] == [np.int64] * 3 and [int(a[0]) for a in got] == [0, 750, 2**40]


def test_a_raw_file_of_neither_size_names_the_model_dtype_too(tmp_path):
    pre = InputPreprocess("t", (1,), "featuremap", "NCHW", "featuremap", "NCHW")
    (tmp_path / "s0.bin").write_bytes(b"\0" * 6)
    with pytest.raises(NpuflowError) as exc:
        CalibrationSet([(pre, tmp_path)], images=False, dtypes={"t": np.dtype(np.int64)})
    assert exc.value.code == "NPF_BUILD_CALIB_FILE_SIZE" and "8 (int64, the model's own dtype)" in exc.value.message
