"""``npuflow.compile(q.model, T, input_shapes={"x": [4, ...]})`` on the in-memory quantized model
(new-user round 8, open item 1): ``q.model`` is the quantized graph frozen at the shape it was
quantized at (batch 1, shape arithmetic folded to constants), so another batch was
``NPF_MODEL_INVALID`` ("Inferred shape and existing shape differ in dimension 0: (4) vs (1)"),
blaming the model.  A fixed dimension resized to a size the model's shapes do not fit is now
``NPF_MODEL_FIXED_INPUT_SHAPE``, naming the input, its fixed and the asked shape, and pointing to ``npuflow.compile(q, ...)`` and the saved
``quantized_model.onnx``, which keep the source's dynamic batch; those run batch 4 equal to four
batch-1 runs bit for bit (YOLOv8n, dynamic batch, height and width, at 64x64).  A model whose input is fixed
in the source gets the same code from compile and quantize."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from tests.fixture_models import mnist_cnn, yolov8n

rng = np.random.default_rng(0)
SIZE = [1, 3, 64, 64]
BATCH4 = [4, 3, 64, 64]


@pytest.fixture(scope="module")
def yolo_samples() -> list[np.ndarray]:
    return [rng.random(SIZE, dtype=np.float32) for _ in range(4)]


@pytest.mark.parametrize("target", ["cpu-int8", "DPUCZDX8G_ISA1_B4096"])
def test_in_memory_model_refuses_another_batch_and_the_quantized_model_runs_it(tmp_path, yolo_samples, target):
    q = npuflow.quantize(yolov8n(), yolo_samples, target, {"min_output_cosine": 0.0}, warn=False)
    with pytest.raises(NpuflowError) as exc:
        npuflow.compile(q.model, target, input_shapes={"images": BATCH4})
    err = exc.value
    assert err.code == "NPF_MODEL_FIXED_INPUT_SHAPE", err
    assert "'images'" in err.message and "1x3x64x64" in err.message and "4x3x64x64" in err.message
    assert "#0" in err.message and "npuflow.compile(q, target, input_shapes=...)" in err.hint

    x4 = np.concatenate(yolo_samples)
    at4 = npuflow.Session(npuflow.compile(q, target, input_shapes={"images": BATCH4}).save(tmp_path / "b4.npuf"))
    at1 = npuflow.Session(npuflow.compile(q, target).save(tmp_path / "b1.npuf"))
    got = at4.run({"images": x4})["output0"]
    singles = np.concatenate([at1.run({"images": x})["output0"] for x in yolo_samples])
    assert got.shape[0] == 4 and np.array_equal(got, singles)
    q.save(tmp_path / "q")  # the saved file keeps the batch dynamic, as compile(q, ...) reads it
    saved = npuflow.Session(npuflow.compile(tmp_path / "q" / "quantized_model.onnx", target,
                                            input_shapes={"images": BATCH4}).save(tmp_path / "s4.npuf"))
    assert np.array_equal(saved.run({"images": x4})["output0"], got)


def test_fixed_source_batch_is_a_coded_error_in_compile_and_quantize():
    samples = [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(4)]
    q = npuflow.quantize(mnist_cnn(), samples, "cpu-int8", warn=False)
    for call in (lambda: npuflow.compile(q.model, "cpu-int8", input_shapes={"input": [4, 1, 28, 28]}),
                 lambda: npuflow.compile(q, "cpu-int8", input_shapes={"input": [4, 1, 28, 28]}),
                 lambda: npuflow.quantize(mnist_cnn(), samples, "cpu-int8", input_shapes={"input": [4, 1, 28, 28]})):
        with pytest.raises(NpuflowError) as exc:
            call()
        assert exc.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE", exc.value
        assert "'input' is fixed at 1x1x28x28" in exc.value.message and "4x1x28x28" in exc.value.message
    # the fixed size itself, and a shape that changes nothing, are fine
    npuflow.compile(q.model, "cpu-int8", input_shapes={"input": [1, 1, 28, 28]})
