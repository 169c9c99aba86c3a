"""Round 11 of new-user flows: a dynamic-batch net that flattens with ``x.view(x.size(0), -1)``
(``Shape -> Gather -> Concat -> Reshape``), quantized without ``--input-shape`` and compiled at batch
1 or 2, compiled, but every ``Session`` failed with ONNX Runtime's "At least one output should be
requested": the ``Reshape`` is lowered with its static shape, and the ``Shape -> Gather -> Concat``
before it was left as a CPU subgraph with no outputs.  Compile now drops subgraphs nothing reads."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow

from tests.unit.test_newuser11_frozen_by_quantize import T, _calib, _dynamic_batch_net


@pytest.mark.parametrize("batch", [1, 2])
def test_quantized_without_input_shape_it_compiles_and_runs(tmp_path, batch):
    q = npuflow.quantize(_dynamic_batch_net(), _calib(), T, warn=False)
    q.save(str(tmp_path))
    compiled = npuflow.compile(str(tmp_path / "quantized_model.onnx"), T, input_shapes={"x": [batch, 3, 8, 8]})
    assert all(sg.outputs for sg in compiled.subgraphs)
    x = np.random.default_rng(5).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    assert np.asarray(npuflow.Session(compiled).run({"x": x})["y"]).shape == (batch, 256)
