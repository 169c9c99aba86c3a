"""MTCNN (facenet-pytorch, every activation a PReLU) on bernoulli2: the PReLUs run on the BPU.

Before PReLU was lowered, onet compiled to 12 subgraphs (6 BPU, 6 CPU: each PReLU and the pool
after it ran in float between two BPU convolutions), rnet to 10, pnet to 8; now onet and rnet to 4
(2 BPU, 2 CPU: the Transpose before the flatten, which bernoulli2 lacks, and the Softmax), pnet
to 2 (its Softmax on the CPU).  Each PReLU is a ``lut_channel`` op whose
tables ONNX Runtime computed, so every accelerator op equals ONNX Runtime on the quantized model
and so do the outputs.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from tests.compile_check import compare_layerwise_with_ort
from tests.unit.quant_nets import run, samples

#: stage -> (input side, subgraphs, of them on the BPU)
STAGES = {"onet": (48, 4, 2), "pnet": (48, 2, 1), "rnet": (24, 4, 2)}


@pytest.mark.models
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_mtcnn_prelu_on_the_bpu_equals_ort(models, stage):
    side, n_subgraphs, n_bpu = STAGES[stage]
    shape = [1, 3, side, side]
    q = npuflow.quantize(str(models.mtcnn(stage)), samples(shape, n=8), target="bernoulli2")
    compiled = npuflow.compile(q.model, "bernoulli2")
    subgraphs = compiled.manifest["subgraphs"]
    bpu = [sg for sg in subgraphs if sg["device"] == "BPU"]
    assert (len(subgraphs), len(bpu)) == (n_subgraphs, n_bpu), [sg["device"] for sg in subgraphs]
    prelus = [o for sg in bpu for o in sg["ops"] if o["kind"] == "prelu"]
    assert len(prelus) == sum(n.op_type == "PRelu" for n in q.model.graph.node)
    x = samples(shape, n=1, seed=7)[0]
    diffs = compare_layerwise_with_ort(q.model, {"input": x}, "bernoulli2")
    assert all(diffs[o["outputs"][0]] == 0 for o in prelus), diffs
    assert max(diffs.values()) <= 1, diffs
    got = npuflow.Session(compiled).run({"input": x})
    ref = dict(zip([o.name for o in q.model.graph.output], run(q.model, {"input": x})))
    for name, want in ref.items():
        assert np.abs(got[name] - want).max() <= 2 * np.abs(want).max() / 127, name
