"""``npuflow compare`` given a float model that is not the quantized model's (new-user round 9):
layers are matched by tensor name, so the wrong float model was reported as the samples not fitting
it (``NPF_QUANT_CALIB_MISMATCH`` "calibration sample 0 ...") or, for a QDQ model, as ONNX Runtime's
"Got invalid dimensions ... Please fix either the inputs/outputs or the model".  Now the inputs are
compared first: other names, or another element count where both are static, is
``NPF_COMPARE_INPUTS_DIFFER`` naming both models' inputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.analyze.compare import compare
from npuflow.errors import NpuflowError
from tests.fixture_models import mnist_cnn, ppocr_cls

TARGET = "cpu-int8"


@pytest.fixture(scope="module")
def cls_quantized(tmp_path_factory):
    rng = np.random.default_rng(0)
    samples = [rng.random((1, 3, 48, 192), dtype=np.float32) for _ in range(2)]
    q = npuflow.quantize(ppocr_cls(), samples, TARGET, input_shapes={"x": [1, 3, 48, 192]}, warn=False)
    out = tmp_path_factory.mktemp("cls")
    qdq = q.save(out / "q")["quantized_model"]
    npuf = npuflow.compile(q, TARGET).save(out / "cls.npuf")
    return samples, qdq, npuf


def test_a_float_model_at_another_shape_or_another_model_is_named(cls_quantized):
    samples, qdq, npuf = cls_quantized
    narrow = onnx.load(ppocr_cls())
    for k, d in enumerate([1, 3, 48, 160]):
        narrow.graph.input[0].type.tensor_type.shape.dim[k].dim_value = d
    for float_model, quantized, want in ((narrow, qdq, "x 1x3x48x160"), (narrow, npuf, "x 1x3x48x160"),
                                         (str(mnist_cnn()), npuf, "input 1x1x28x28")):
        with pytest.raises(NpuflowError) as exc:
            compare(float_model, quantized, samples)
        assert exc.value.code == "NPF_COMPARE_INPUTS_DIFFER", exc.value
        assert want in exc.value.message and "x 1x3x48x192" in exc.value.message


def test_the_right_float_model_still_compares(cls_quantized):
    samples, qdq, npuf = cls_quantized
    for quantized in (qdq, npuf):
        result = compare(str(ppocr_cls()), quantized, samples)
        assert result.layers and all(np.isfinite(r.cosine) for r in result.layers)
