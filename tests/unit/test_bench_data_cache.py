"""The benchmarks' data cache (``benchmarks.datasets._cached``): several benchmark processes started at
once build the same cached set side by side; each must end with the arrays and the file, not with a
FileNotFoundError because another process renamed a shared temporary file first (three EfficientNet
runs started together lost two of them that way, session 29)."""

from __future__ import annotations

import numpy as np

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
