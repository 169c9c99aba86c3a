"""Round 13 of new-user flows, open item 4: ``npuflow compare FLOAT.onnx MODEL.npuf`` on a ``.npuf``
compiled for two shape sets (``--input-shape`` given twice) compared only at the first set: a
sample at the second set's shape was refused with ``NPF_QUANT_CALIB_MISMATCH`` "the model wants
1x3x12x10", while ``npuflow run`` picks the fitting program.  Each sample now runs on the program
``Session.select`` picks for it, and one that fits none is refused with run's own code.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.analyze.compare import compare
from npuflow.errors import NpuflowError
from npuflow.runtime import Session

from .test_newuser13_compare_batch import _dynamic_net

TARGET = "DPUCZDX8G_ISA1_B4096"
SHAPES = [{"x": [1, 3, 12, 10]}, {"x": [1, 3, 16, 12]}]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The float model and a .npuf of it compiled at two shape sets."""
    d = tmp_path_factory.mktemp("variants")
    model = _dynamic_net()
    rng = np.random.default_rng(1)
    calib = [{"x": rng.random((1, 3, 12, 10), dtype=np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(model, calib, TARGET, warn=False)
    npuflow.compile(quantized, TARGET, input_shapes=SHAPES).save(d / "m.npuf")
    onnx.save(model, d / "float.onnx")
    return d / "float.onnx", d / "m.npuf"


def _final(result) -> float:
    rows = [row for row in result.layers if row.tensor == "y"]
    assert rows, [row.tensor for row in result.layers]
    return rows[0].cosine


@pytest.mark.parametrize("shape", [(1, 3, 12, 10), (1, 3, 16, 12)])
def test_compare_runs_a_sample_at_each_compiled_shape_set(files, shape):
    float_path, npuf = files
    rng = np.random.default_rng(2)
    result = compare(float_path, npuf, [{"x": rng.random(shape, dtype=np.float32)} for _ in range(2)])
    assert result.samples == 2
    assert _final(result) > 0.99
    assert any(row.single_cosine is not None and row.single_cosine > 0.99 for row in result.layers)


def test_compare_picks_the_program_per_sample(files):
    """Samples of both shapes in one call, and one between them that run pads to the larger set."""
    float_path, npuf = files
    rng = np.random.default_rng(3)
    shapes = [(1, 3, 16, 12), (1, 3, 12, 10), (1, 3, 14, 11)]
    sess = Session(npuflow.CompiledModel.load(npuf))
    assert [sess.select({"x": s}) for s in shapes] == [1, 0, 1]
    result = compare(float_path, npuf, [{"x": rng.random(s, dtype=np.float32)} for s in shapes])
    assert result.samples == 3
    assert _final(result) > 0.99


def test_compare_refuses_a_sample_no_shape_set_fits_as_run_does(files):
    float_path, npuf = files
    sample = {"x": np.random.default_rng(4).random((1, 3, 20, 12), dtype=np.float32)}
    with pytest.raises(NpuflowError) as by_run:
        Session(npuflow.CompiledModel.load(npuf)).run(sample)
    with pytest.raises(NpuflowError) as by_compare:
        compare(float_path, npuf, [sample])
    assert by_compare.value.code == by_run.value.code == "NPF_RUNTIME_SHAPE_TOO_LARGE"
