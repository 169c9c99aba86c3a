"""scikit-learn's KNeighborsClassifier through skl2onnx computes its distances in a ``Scan``
(new-user round 15): quantize refuses it with ``NPF_QUANT_CONTROL_FLOW_ONLY``, whose hint told
the user to freeze the input an If's condition reads or to export "without the If/Loop"; a Scan
over the data has no such input.  The hint now says what applies to a Scan."""

from __future__ import annotations

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.neighbors import KNeighborsClassifier

import npuflow
from npuflow.errors import NpuflowError


def test_a_scan_only_model_gets_a_hint_for_a_scan():
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    knn = KNeighborsClassifier(3).fit(x, y)
    model = to_onnx(knn, x[:1], options={id(knn): {"zipmap": False}}, target_opset=17)
    assert "Scan" in {n.op_type for n in model.graph.node}
    with pytest.raises(NpuflowError) as caught:
        npuflow.quantize(model, [x[i:i + 1] for i in range(0, 150, 19)], "cpu-int8", warn=False)
    assert caught.value.code == "NPF_QUANT_CONTROL_FLOW_ONLY"
    text = caught.value.render()
    assert "Scan" in text and "nothing to freeze" in text and "run the float model as it is" in text
