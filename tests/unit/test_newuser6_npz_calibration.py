"""A calibration folder of ``.npz`` archives, one per sample with every input by name (newuser
round 6: a token model's int64 ``input_ids`` + ``attention_mask``).  ``npuflow run -i`` and
``compare --data`` read ``.npz``; ``quantize --calib`` refused the folder ("save one sample per
.npy file").  Now each archive is a sample; names and dtypes are checked as for other sources."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.errors import NpuflowError
from npuflow.quant.data import CalibrationSource, InputSpec

SPEC = [InputSpec("input_ids", np.dtype(np.int64), (1, None)), InputSpec("attention_mask", np.dtype(np.int64), (1, None))]


def test_npz_per_sample_folder_reads_every_input(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        np.savez(tmp_path / f"{i:03d}.npz", input_ids=rng.integers(0, 100, (1, 8)), attention_mask=np.ones((1, 8), np.int64))
    samples = list(CalibrationSource(tmp_path, SPEC))
    assert len(samples) == 3 and set(samples[0]) == {"input_ids", "attention_mask"}
    assert samples[0]["input_ids"].dtype == np.int64 and samples[0]["input_ids"].shape == (1, 8)


def test_npz_missing_an_input_is_a_coded_error_naming_the_file(tmp_path):
    np.savez(tmp_path / "000.npz", input_ids=np.zeros((1, 8), np.int64))
    with pytest.raises(NpuflowError) as err:
        list(CalibrationSource(tmp_path, SPEC))
    assert err.value.code == "NPF_QUANT_CALIB_MISMATCH" and "000.npz" in str(err.value)
    assert "attention_mask" in str(err.value)
