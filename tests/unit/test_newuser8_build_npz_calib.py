"""``npuflow build`` with a ``cal_data_dir`` of ``.npz`` samples, the folders ``npuflow quantize``
reads (new-user round 8): build read each ``.npz`` as raw ``numpy.tofile`` bytes and refused it
with NPF_BUILD_CALIB_FILE_SIZE ("has 3328 bytes; ... needs 3072 (float32)"), a message about the
wrong format.  Now an ``.npz`` gives the array named as the input (or its only array), the same
sample as the ``.npy`` of it; one without that array is NPF_BUILD_CALIB_NPY naming its arrays."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.build.calibration import CalibrationSet
from npuflow.errors import NpuflowError
from npuflow.passes.preprocess import InputPreprocess

PRE = InputPreprocess("x", (1, 3, 4, 4), "featuremap", "NCHW", "featuremap", "NCHW")
rng = np.random.default_rng(0)


def _samples(folder, save):
    folder.mkdir()
    arrays = [rng.normal(0, 1, (1, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    for i, a in enumerate(arrays):
        save(folder, i, a)
    return arrays


@pytest.mark.parametrize("kind", ["named", "only_array", "npy"])
def test_npz_and_npy_samples_read_alike(tmp_path, kind):
    save = {"named": lambda f, i, a: np.savez(f / f"s{i}.npz", x=a, other=a * 0),
            "only_array": lambda f, i, a: np.savez(f / f"s{i}.npz", a),
            "npy": lambda f, i, a: np.save(f / f"s{i}.npy", a)}[kind]
    arrays = _samples(tmp_path / "cal", save)
    got = list(CalibrationSet([(PRE, tmp_path / "cal")], images=False))
    assert len(got) == 3
    for feed, a in zip(got, arrays):
        assert np.array_equal(feed["x"], a)


def test_npz_without_the_input_is_a_coded_error(tmp_path):
    _samples(tmp_path / "cal", lambda f, i, a: np.savez(f / f"s{i}.npz", y=a, z=a))
    with pytest.raises(NpuflowError) as exc:
        CalibrationSet([(PRE, tmp_path / "cal")], images=False)
    assert exc.value.code == "NPF_BUILD_CALIB_NPY"
    assert "none named 'x'" in str(exc.value)


def test_bool_input_samples_are_read(tmp_path):
    """A bool input (an attention mask) beside others, all in one ``.npz`` per sample: build refused
    the bool array ("holds a bool array of shape 1x7; input 'mask' needs shape 1x7")."""
    pre = InputPreprocess("mask", (1, 7), "featuremap", "NCHW", "featuremap", "NCHW")
    (tmp_path / "cal").mkdir()
    for i in range(3):
        np.savez(tmp_path / "cal" / f"s{i}.npz", mask=rng.random((1, 7)) > 0.3, ids=np.arange(7))
    got = list(CalibrationSet([(pre, tmp_path / "cal")], images=False, dtypes={"mask": np.dtype(bool)}))
    assert len(got) == 3 and all(g["mask"].dtype == bool and g["mask"].shape == (1, 7) for g in got)
