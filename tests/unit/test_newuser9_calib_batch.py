"""``npuflow quantize --input-shape x 4x3x48x192`` with batch-1 calibration samples (new-user round 9,
round 8's open item 1): was ``NPF_QUANT_CALIB_MISMATCH`` "shape 1x3x48x192, the model wants
4x3x48x192", although rknn-toolkit2 and the Vitis AI quantizer take single images for a batched
deployment and the batch does not change a tensor's range.  Samples that differ from
``--input-shape`` only in a batch the source leaves dynamic now calibrate the graph with the
batch dynamic (what ``calib_dynamic_dims: true`` did by hand); the model is saved at the asked
batch and its ``.npuf`` runs batch 4 equal to four batch-1 runs.  Another width (a spatial
dimension: another input distribution) is still refused."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from tests.fixture_models import ppocr_cls

rng = np.random.default_rng(0)
ONE = (1, 3, 48, 192)
FOUR = [4, 3, 48, 192]
TARGET = "cpu-int8"


@pytest.fixture(scope="module")
def samples() -> list[np.ndarray]:
    return [rng.random(ONE, dtype=np.float32) for _ in range(4)]


def test_batch_one_samples_quantize_a_batch_four_model(tmp_path, samples):
    q = npuflow.quantize(ppocr_cls(), samples, TARGET, input_shapes={"x": FOUR}, warn=False)
    by_hand = npuflow.quantize(ppocr_cls(), samples, TARGET, {"calib_dynamic_dims": True},
                               input_shapes={"x": FOUR}, warn=False)
    saved = q.save(tmp_path / "q")["quantized_model"]
    assert saved.read_bytes() == by_hand.save(tmp_path / "h")["quantized_model"].read_bytes()
    at4 = npuflow.Session(npuflow.compile(saved, TARGET).save(tmp_path / "b4.npuf"))
    at1 = npuflow.Session(npuflow.compile(q, TARGET, input_shapes={"x": list(ONE)}).save(tmp_path / "b1.npuf"))
    got = at4.run({"x": np.concatenate(samples)})
    name = next(iter(got))
    singles = np.concatenate([at1.run({"x": x})[name] for x in samples])
    assert got[name].shape[0] == 4 and np.array_equal(got[name], singles)


def test_another_width_is_still_refused(samples):
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(ppocr_cls(), samples, TARGET, input_shapes={"x": [4, 3, 48, 160]}, warn=False)
    assert exc.value.code == "NPF_QUANT_CALIB_MISMATCH" and "4x3x48x160" in exc.value.message
