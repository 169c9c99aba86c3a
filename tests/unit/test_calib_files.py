"""Calibration data in one file: a ``.npy`` of stacked samples, a ``.npz`` with every input stacked
by name, or rknn-toolkit2's ``dataset.txt`` (one sample a line, its ``.npy`` files in input
order).  Before, ``npuflow quantize --calib calib.npy`` was ``NPF_QUANT_CALIB_SOURCE ... not a
folder`` (lead's GELU try-out, 2026-12-05)."""

from __future__ import annotations

import numpy as np
import pytest

from npuflow.errors import NpuflowError
from npuflow.quant.data import CalibrationSource, InputSpec

IMG = [InputSpec("x", np.dtype(np.float32), (1, 3, 4, 4))]
TOKENS = [InputSpec("ids", np.dtype(np.int64), (1, None)), InputSpec("mask", np.dtype(np.int64), (1, None))]


def test_npy_stacked_along_the_batch_axis_or_a_new_axis(tmp_path):
    a = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "batch.npy", a)
    np.save(tmp_path / "new_axis.npy", a[:, None])
    for name in ("batch.npy", "new_axis.npy"):
        samples = list(CalibrationSource(tmp_path / name, IMG))
        assert len(samples) == 5 and samples[3]["x"].shape == (1, 3, 4, 4)
        np.testing.assert_array_equal(samples[3]["x"][0], a[3])


def test_npz_with_every_input_stacked(tmp_path):
    ids = np.arange(24, dtype=np.int64).reshape(3, 1, 8)
    np.savez(tmp_path / "calib.npz", ids=ids, mask=np.ones((3, 1, 8), np.int64))
    samples = list(CalibrationSource(tmp_path / "calib.npz", TOKENS))
    assert len(samples) == 3 and samples[2]["ids"].tolist() == ids[2].tolist()


def test_dataset_txt_lists_npy_files_in_input_order(tmp_path):
    (tmp_path / "d").mkdir()
    for i in range(2):
        np.save(tmp_path / "d" / f"ids{i}.npy", np.full((1, 8), i, np.int64))
        np.save(tmp_path / "d" / f"mask{i}.npy", np.ones((1, 8), np.int64))
    (tmp_path / "dataset.txt").write_text("# ids mask\nd/ids0.npy d/mask0.npy\n\nd/ids1.npy d/mask1.npy\n")
    samples = list(CalibrationSource(tmp_path / "dataset.txt", TOKENS))
    assert [int(s["ids"][0, 0]) for s in samples] == [0, 1] and samples[1]["mask"].shape == (1, 8)


@pytest.mark.parametrize("write, words", [
    (lambda d: np.save(d / "c.npy", np.zeros((3, 4, 4), np.float32)), ["rank 3", "rank 4"]),
    (lambda d: np.savez(d / "c.npz", ids=np.zeros((3, 1, 8), np.int64)), ["mask"]),
    (lambda d: np.savez(d / "c.npz", ids=np.zeros((3, 1, 8), np.int64), mask=np.zeros((2, 1, 8), np.int64)),
     ["different numbers of samples"]),
    (lambda d: (d / "c.txt").write_text("a.jpg b.jpg\n"), ["a.jpg", ".npy files only"]),
    (lambda d: (d / "c.txt").write_text("a.npy\n"), ["1 file(s)", "2 input(s)"]),
    (lambda d: (d / "c.csv").write_text("1,2\n"), ["does not read as calibration data"]),
])
def test_bad_files_are_coded_errors_naming_the_problem(tmp_path, write, words):
    write(tmp_path)
    path = next(p for p in tmp_path.iterdir() if p.name.startswith("c."))
    spec = IMG if path.suffix == ".npy" else TOKENS
    with pytest.raises(NpuflowError) as err:
        list(CalibrationSource(path, spec))
    assert err.value.code == "NPF_QUANT_CALIB_SOURCE"
    assert all(w in str(err.value) for w in words), str(err.value)


def test_compare_data_reads_files_as_quantize_does(tmp_path):
    """``npuflow compare --data FILE.npy`` read one file as one sample of its own shape, so five
    stacked samples for a batch-1 model were a batch-5 sample and refused; now the same reader as
    ``--calib`` (one source of truth), and a one-sample file is a stack of one."""
    import onnx
    from onnx import TensorProto, helper

    from npuflow.analyze.compare import open_samples

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], "relu")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "five.npy", a)
    np.save(tmp_path / "one.npy", a[:1])
    np.savez(tmp_path / "one.npz", x=a[:1])
    assert len(list(open_samples(str(tmp_path / "five.npy"), model))) == 5
    assert len(list(open_samples(str(tmp_path / "five.npy"), model, samples=2))) == 2
    assert len(list(open_samples(str(tmp_path / "one.npy"), model))) == 1
    assert len(list(open_samples(str(tmp_path / "one.npz"), model))) == 1
    onnx.checker.check_model(model)
