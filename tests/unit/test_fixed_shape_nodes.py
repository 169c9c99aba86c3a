"""A fixed input dimension asked at another size names the node that holds the size (batch-8 benchmark).

EfficientNet-Lite0 exported at batch 1 (a ``Reshape`` to ``[1, -1]`` before the classifier) asked at
batch 8 was ``NPF_MODEL_SHAPE_PROBE_FAILED``: onnx's shape inference cannot follow its static-padding
arithmetic to the clash, so the checker passed and the probe's run failed at the Gemm, reading as a
bad probe value.  It is now ``NPF_MODEL_FIXED_INPUT_SHAPE``, as the MNIST CNN's was, and both name the
``Reshape``.  A model quantized at batch 8 from such an export (its ``Reshape`` to ``[8, -1]``) asked
at batch 1 by ``npuflow.compile(q, ...)`` was refused with a hint that told the user to do just that;
the error now names the ``Reshape`` and the hint says to quantize an export at the size wanted.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
from npuflow.errors import NpuflowError
from tests.fixture_models import efficientnet_lite0, mnist_cnn

rng = np.random.default_rng(0)


def test_efficientnet_at_batch_8_names_the_reshape_that_fixes_batch_1():
    samples = [rng.random((8, 3, 224, 224), dtype=np.float32) for _ in range(2)]
    with pytest.raises(NpuflowError) as exc:
        npuflow.quantize(efficientnet_lite0(), samples, "cpu-int8", input_shapes={"input": [8, 3, 224, 224]},
                         warn=False)
    err = exc.value
    assert err.code == "NPF_MODEL_FIXED_INPUT_SHAPE", err
    assert "'input' is fixed at 1x3x224x224" in err.message and "8x3x224x224" in err.message
    assert "node '/Reshape' reshapes to the constant shape [1, -1], which keeps dimension #0 at 1" in err.message


def test_mnist_at_batch_8_names_the_reshape_too():
    with pytest.raises(NpuflowError) as exc:
        npuflow.model.load(mnist_cnn(), {"input": [8, 1, 28, 28]})
    assert exc.value.code == "NPF_MODEL_FIXED_INPUT_SHAPE", exc.value
    assert "node '/Reshape' reshapes to the constant shape [1, -1]" in exc.value.message


def _mnist_at_batch(batch: int) -> onnx.ModelProto:
    """The MNIST CNN as exported at ``batch``: input and the classifier's ``Reshape`` target at ``batch``."""
    model = onnx.load(str(mnist_cnn()))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = batch
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    const = next(n for n in model.graph.node if n.output[0] == reshape.input[1])
    assert numpy_helper.to_array(const.attribute[0].t).tolist() == [1, -1]
    const.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([batch, -1], np.int64)))
    del model.graph.value_info[:]
    return model


def test_compile_of_a_model_quantized_at_batch_8_at_batch_1_names_the_reshape_and_says_what_to_do():
    q = npuflow.quantize(_mnist_at_batch(8), [rng.random((8, 1, 28, 28), dtype=np.float32) for _ in range(2)],
                         "cpu-int8", warn=False)
    for model in (q, q.model):
        with pytest.raises(NpuflowError) as exc:
            npuflow.compile(model, "cpu-int8", input_shapes={"input": [1, 1, 28, 28]})
        err = exc.value
        assert err.code == "NPF_MODEL_FIXED_INPUT_SHAPE", err
        assert "'input' is fixed at 8x1x28x28" in err.message and "1x1x28x28" in err.message
        assert "node '/Reshape' reshapes to the constant shape [8, -1], which keeps dimension #0 at 8" in err.message
        assert "export the model at the size wanted" in err.hint and "quantize that export" in err.hint
        assert "keep the dimensions the source left dynamic, not the ones it fixes" in err.hint
    # the batch it was quantized at compiles and runs
    npuflow.compile(q, "cpu-int8", input_shapes={"input": [8, 1, 28, 28]})
