"""A model that lists its weights as graph inputs (new-user round 9): IR version 3 files do, and
torch's ``keep_initializers_as_inputs=True`` still does.  EfficientNet-Lite0 exported so (BatchNorm
kept: ``do_constant_folding=False``) was a ``KeyError: '_bn0.weight'`` traceback from quantize:
folding BatchNormalization into the Conv removed the initializer and left its input entry, which
then looked like a real input.  The loader now drops the graph inputs that name an initializer
(every stage treats them as constants), so the model quantizes and compiles to the same ``.npuf``
outputs as the same export without the listed weights."""

from __future__ import annotations

import numpy as np
import onnx
import torch

import npuflow
from tests.fixture_models import efficientnet_lite0_torch

TARGET = "DPUCZDX8G_ISA1_B4096"


def _export(path, listed: bool) -> str:
    torch.onnx.export(efficientnet_lite0_torch(), torch.zeros(1, 3, 224, 224), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=13, do_constant_folding=False,
                      keep_initializers_as_inputs=listed, dynamo=False)
    return str(path)


def test_weights_listed_as_inputs_quantize_like_the_plain_model(tmp_path):
    rng = np.random.default_rng(0)
    samples = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(2)]
    listed = _export(tmp_path / "listed.onnx", True)
    assert len(onnx.load(listed).graph.input) > 100
    got = npuflow.quantize(listed, samples, TARGET, warn=False)
    plain = npuflow.quantize(_export(tmp_path / "plain.onnx", False), samples, TARGET, warn=False)
    assert [i.name for i in got.model.graph.input] == ["input"]
    outs = []
    for q, name in ((got, "listed"), (plain, "plain")):
        session = npuflow.Session(npuflow.compile(q, TARGET).save(tmp_path / f"{name}.npuf"))
        outs.append(session.run({"input": samples[0]})["logits"])
    assert np.array_equal(outs[0], outs[1])
