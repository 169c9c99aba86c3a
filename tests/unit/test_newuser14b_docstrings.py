"""``help()`` of the functions a script calls first says what each argument is (new-user round
14b): ``help(npuflow.check)`` said only "Place every node of model on target", ``help(npuflow.quantize)``
named neither ``model`` nor ``target`` nor ``input_shapes`` (nor a DataLoader or an ONNX Runtime
reader as calibration data), ``help(npuflow.compile)`` not ``placement``, ``build_config`` or
``preprocessing``, ``help(Session)`` not ``path`` or ``blas_threads``, ``help(Session.run)`` not what
``inputs`` is."""

from __future__ import annotations

import inspect

import pytest

import npuflow


@pytest.mark.parametrize("fn", [npuflow.load, npuflow.load_target, npuflow.check, npuflow.quantize,
                                npuflow.compile, npuflow.build, npuflow.Session.__init__, npuflow.Session.run], ids=lambda f: f.__qualname__)
def test_every_argument_is_described(fn):
    doc = inspect.getdoc(fn)
    missing = [p for p in inspect.signature(fn).parameters
               if p != "self" and f"``{p}``" not in doc and f"``{p}=" not in doc]
    assert not missing, f"{fn.__qualname__}'s docstring does not describe {missing}"


def test_quantize_names_the_calibration_sources_a_script_brings():
    doc = inspect.getdoc(npuflow.quantize)
    assert "DataLoader" in doc and "CalibrationDataReader" in doc
