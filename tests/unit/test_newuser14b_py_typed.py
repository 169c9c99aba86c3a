"""npuflow's type hints reach a script writer's type checker (new-user round 14b): without the
PEP 561 ``py.typed`` marker in the installed package, mypy reports ``module is installed, but
missing library stubs or py.typed marker`` and treats ``npuflow.quantize`` and friends as
``Any``, so an IDE checks none of the arguments its hints describe."""

from __future__ import annotations

import tomllib
from pathlib import Path

import npuflow

ROOT = Path(npuflow.__file__).parent


def test_the_package_carries_the_py_typed_marker():
    assert (ROOT / "py.typed").is_file()
    data = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["npuflow"]
    assert "py.typed" in data  # else a wheel leaves it out
