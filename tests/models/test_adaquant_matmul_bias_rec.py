"""AdaQuant's learned bias of a ``MatMul`` whose bias is the int32 ``Add`` after it is written into
that ``Add``'s codes, and the error AdaQuant reported for the layer is the written model's (issue 18).

Before, the layer's problem had no bias (the ``Add`` is another node): the target left the float
bias out, AdaQuant learned an offset that ``write_bias`` had nowhere to put, and the error that chose
the kept result counted an offset the written model did not add.

The layer is PP-OCRv4 rec's attention linear ``p2o.MatMul.18`` with its bias ``Add``, cut out of the
optimised float model and fed its real inputs on rendered text lines
(:mod:`tests.models.test_learn_threshold_rec_linear`'s fixture).
"""

from __future__ import annotations

import numpy as np
import onnx

import npuflow
from npuflow import numerics
from npuflow.graph import GraphView
from npuflow.numerics import RoundMode
from npuflow.passes.linear_bias import linear_bias
from npuflow.quant.algorithms import fast_finetune as ff
from npuflow.quant.pipeline import config_of
from npuflow.targets import load_target
from tests.models.layer_error import record_layer_results, written_error
from tests.models.test_learn_threshold_rec_linear import DPU, LAYER, _scales, rec_linear  # noqa: F401

CONFIG = {"fast_finetune": {"method": "adaquant", "iters": 100}, "include_bias_corr": False}


def _with_add_output(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` that also outputs the float ``Add`` (the layer's output before its
    QuantizeLinear), and that tensor's name."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    (mm,) = [n for n in out.graph.node if n.op_type == "MatMul"]
    name = linear_bias(mm, view).output
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return out, name


def test_adaquant_bias_of_matmul_lands_in_its_add(rec_linear, monkeypatch, tmp_path):  # noqa: F811
    sub, feeds, float_bias = rec_linear
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    learned: list[np.ndarray] = []
    real_adaquant = ff.adaquant

    def adaquant(*args, **kwargs):
        codes, bias = real_adaquant(*args, **kwargs)
        learned.append(np.asarray(bias, np.float32).reshape(-1))
        return codes, bias

    monkeypatch.setattr(ff, "adaquant", adaquant)
    results = record_layer_results(monkeypatch)
    q = npuflow.quantize(sub, feeds, DPU, CONFIG, warn=False)
    s_in, s_w, s_b, codes, _ = _scales(q.model)
    (bias,), (result,) = learned, results
    assert result.name == LAYER and result.error_after < result.error_before

    rule = RoundMode(config_of(CONFIG).resolve(load_target(DPU), "bias").round_mode)  # the target's bias rule
    assert s_b == s_in * s_w
    want = numerics.quantize(bias, np.float32(s_b), 0, bits=32, round_mode=rule)
    np.testing.assert_array_equal(codes, want)  # before: the float bias's codes, the learned bias dropped
    exported = numerics.quantize(float_bias, np.float32(s_b), 0, bits=32, round_mode=rule)
    assert np.abs(codes.astype(np.int64) - exported).max() > 0  # AdaQuant did move the bias

    quantized, name = _with_add_output(q.model)
    written = written_error(quantized, name, sub, feeds)
    assert np.isclose(written, result.error_after, rtol=1e-3), (written, result.error_after, result.error_before)
