"""The benchmarks' data cache (``benchmarks.datasets._cached``): several benchmark processes started at
once build the same cached set side by side; each must end with the arrays and the file, not with a
FileNotFoundError because another process renamed a shared temporary file first (three EfficientNet
runs started together lost two of them that way, session 29)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import datasets


def test_a_second_writer_finishing_mid_save_does_not_break_the_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(datasets, "DATA_DIR", tmp_path)
    real_savez = np.savez
    calls = []

    def savez_then_another_writer(file, **arrays):
        # between this writer's save and its rename, a second one builds and stores the same set
        real_savez(file, **arrays)
        if not calls:
            calls.append(1)
            assert datasets._cached("set", lambda: {"x": np.arange(3)})["x"].tolist() == [0, 1, 2]

    monkeypatch.setattr(np, "savez", savez_then_another_writer)
    first = datasets._cached("set", lambda: {"x": np.arange(3)})
    assert calls == [1]
    assert first["x"].tolist() == [0, 1, 2]
    monkeypatch.setattr(np, "savez", real_savez)
    assert datasets._cached("set", lambda: {"x": np.zeros(1)})["x"].tolist() == [0, 1, 2]  # read from the file
    assert [p.name for p in tmp_path.iterdir()] == [f"set_{datasets.CACHE_VERSION}.npz"]


def test_a_calibration_crop_seed_draws_and_caches_its_own_crop_set(tmp_path, monkeypatch) -> None:
    # issue 18: GPTQ has no seed, its spread shows only across calibration crop sets (session 33)
    monkeypatch.setattr(datasets, "DATA_DIR", tmp_path)
    default, _ = datasets.efficientnet("calib", 2)
    same, _ = datasets.efficientnet("calib", 2, crop_seed=101)
    other, _ = datasets.efficientnet("calib", 2, crop_seed=103)
    assert np.array_equal(default[0]["input"], same[0]["input"])  # 101 is the calibration split's own seed
    assert not np.array_equal(default[0]["input"], other[0]["input"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"effnet_calib_2{tail}_{datasets.CACHE_VERSION}.npz" for tail in ("", "_seed101", "_seed103"))


def test_bench_accuracy_refuses_a_calibration_seed_without_efficientnet(capsys) -> None:
    from benchmarks import bench_accuracy

    with pytest.raises(SystemExit) as exc:
        bench_accuracy.main(["--models", "ppocr", "--calib-seed", "103"])
    assert exc.value.code == 2
    assert "--models must include effnet" in capsys.readouterr().err
