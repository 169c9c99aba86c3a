"""A .npuf that a build writes must load and run: the tiny build project's degenerate scales gave a
power-of-two left shift beyond the manifest's range (the file was refused as corrupt by info/run);
the compiler clamps left shifts at 32, where any non-zero accumulator already saturates."""

from __future__ import annotations

import numpy as np

import npuflow
from npuflow.cli.app import main
from tests.unit.test_build_config import _calib, _conv_model, _edit, _write


def test_the_built_npuf_loads_and_runs(tmp_path):
    _conv_model(tmp_path / "m.onnx")
    _calib(tmp_path / "calib")
    assert main(["build", str(_write(tmp_path, _edit()))]) == 0
    (npuf,) = tmp_path.rglob("*.npuf")
    assert main(["info", str(npuf)]) == 0
    session = npuflow.Session(npuf)
    inp = session.get_inputs()[0]
    out = session.run({inp.name: np.zeros(inp.shape, inp.dtype)})
    assert all(np.isfinite(v.astype(np.float64)).all() for v in out.values())
