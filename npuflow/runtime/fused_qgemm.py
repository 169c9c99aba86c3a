"""Fully connected layers on ONNX Runtime's integer kernels inside a fused run (``fused_qlinear``'s
forms, applied to ``x (..., K) @ w (K, N)``): ``com.microsoft.QGemm`` of the rows where one
multiplier serves every output and this process' kernel computes ``numerics``' codes, else
``QLinearConv`` channels-last of the rows."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from .. import ort_kernels, ort_verdicts
from ..ort_kernels import MS_DOMAIN, probe_session, weight_arrays
from . import fused_qlinear
from .fused_graph import Graph, rows_channels_last


#: Weights from which a power-of-two fully connected layer runs on ``QLinearConv`` even between
#: float32 tensors (:func:`matmul`): 1 byte a weight where the float form holds 4, and ONNX
#: Runtime's load of a float convolution makes several more copies (its blocked layout).
LARGE_WEIGHTS = 1 << 16


def matmul(g: Graph, op: dict, blobs: dict) -> bool:
    """Write fully connected layer ``op`` (``x (..., K) @ w (K, N) + bias``) on an integer kernel
    when its arithmetic is that kernel's, as ``fused_qlinear.conv`` writes a convolution; say whether it did.

    A layer with one multiplier for all its outputs (a power-of-two one's single shift) runs as
    ``com.microsoft.QGemm`` of the rows as a (rows, K) matrix where :func:`qgemm_exact` finds that
    kernel computing ``numerics``' codes in this process: no layout nodes around it.  Else, and
    for a multiplier per output (``QGemm`` then wants a zero point per column, whose MLAS path
    costs more than the two ``Transpose`` nodes it saves), ``com.microsoft.QLinearConv``
    channels-last of the rows viewed as (1, rows, 1, K) (``fused_graph.rows_channels_last``: no
    layout nodes either).  A power-of-two one with :data:`LARGE_WEIGHTS` weights or more takes such a
    form even where its input and output are float32 (EfficientNet-Lite0's 1280x1000 classifier:
    1.2 MiB of weights instead of 4.9, and no float copies of them at load)."""
    a = op["attrs"]
    t = op["inputs"][0]
    w = fused_qlinear.int8_weights(blobs["w"])
    if w is None or a.get("group", 1) != 1:
        return False
    k, n = w.shape
    op = {**op, "attrs": {**a, "in_dtype": a.get("in_dtype", g.tensors[t]["dtype"])}}
    shift_bytes = w.size >= LARGE_WEIGHTS
    shape, out_shape = list(g.tensors[t]["shape"]), list(a["out_shape"])
    rows = int(np.prod(shape[:-1]))
    ep = a["epilogue"]  # a multiplier per output gets no QGemm form: not built (rec's head: 1.5 MiB a copy)
    if qgemm_exact() and (ep["mode"] != "scale" or np.ptp(ep["multiplier"]) == 0):
        form = fused_qlinear._kernel_form(g, op, t, np.ascontiguousarray(w.T), blobs["b"], shift_bytes=shift_bytes,
                            weight_form=_gemm_weight_form)
        if form is not None and np.ptp(form["mult"]) == 0:  # not np.unique: it imports numpy.ma

            def to_rows(v: str) -> str:
                return v if shape == [rows, k] else g.node("Reshape", [v, g.const([rows, k], np.int64)])

            def back(y: str) -> str:
                return y if out_shape == [rows, n] else g.node("Reshape", [y, g.const(out_shape, np.int64)])

            fused_qlinear._emit(g, op, t, form, "QGemm", to_rows, back, domain=MS_DOMAIN, transB=1)
            return True
    to_rows, back = rows_channels_last(g, shape, n, out_shape)
    return fused_qlinear._qlinear_conv(g, op, t, np.ascontiguousarray(w.T).reshape(n, k, 1, 1), blobs["b"],
                                       to_rows, back, shift_bytes=shift_bytes, kernel_shape=[1, 1],
                                       domain=MS_DOMAIN, channels_last=1)


def _gemm_weight_form(w: np.ndarray, group: int) -> str | None:
    """The weight form of one ``QGemm`` with int8 weight codes ``w`` (N, K; ``group`` is 1): the
    process' ``ort_kernels.weight_form``, int8 after all where no pair along K can saturate
    (``ort_kernels.matmul_int8_exact``: ``QGemm`` and ``MatMulInteger`` run one MLAS GEMM)."""
    form = ort_kernels.weight_form()
    return "s8" if form == "u8" and ort_kernels.matmul_int8_exact(w.T) else form


@ort_verdicts.persistent
def qgemm_exact() -> bool:
    """Whether this process' ``com.microsoft.QGemm`` (uint8 rows, int8 weights in
    ``ort_kernels.weight_form``, one multiplier and weight zero point, int32 bias per column,
    input and output scales 1) gives ``numerics``' codes: one row and several, odd and even K, on
    codes 0/255 and weights -128/127 with a float-scale multiplier, and on spread codes with the
    nudged power-of-two multiplier of ``fused_qlinear._shift_form`` (shifts 1 to 14).  Where it does not,
    fully connected layers keep ``QLinearConv``."""
    form = ort_kernels.weight_form()
    if form is None:
        return False
    rng = np.random.default_rng(0)
    cout = 14
    try:
        for rows, k, shift in ((1, 33, 1), (1, 256, 5), (5, 64, 11), (1, 1152, 14)):
            x = rng.choice(np.array([0, 255], np.uint8), (rows, k))
            w = rng.choice(np.array([-128, 127], np.int16), (cout, k))
            bias = rng.integers(-(1 << 20), 1 << 20, cout)
            acc = (x.astype(np.int64) - 3) @ w.T.astype(np.int64) + bias
            mult = np.float32(120) / np.float32(np.abs(acc).max())
            want = np.clip(nm.requantize_float(acc, mult, nm.RoundMode.HALF_EVEN) + 128, 0, 255)
            if not np.array_equal(_qgemm(x, 3, w, form, mult, 128, bias), want):
                return False
            x = rng.integers(0, 256, (rows, k)).astype(np.uint8)
            size = int(np.clip(2.0 ** shift * 120 / (75 * np.sqrt(k)), 1, 127))
            w = (rng.integers(-1000, 1001, (cout, k)) * size // 1000).astype(np.int16)
            bias = (128 << shift) + rng.integers(-8, 9, cout)
            acc = (x.astype(np.int64) - 128) @ w.T.astype(np.int64) + bias
            want = np.clip(nm.shift_round(acc, shift, "half_up"), 0, 255)
            mult = nm.shift_as_float32_multiplier(np.array([shift]), "half_up")[0]
            if not np.array_equal(_qgemm(x, 128, w, form, mult, 0, bias), want):
                return False
    except ort_kernels._ORT_REFUSALS:  # a kernel this ONNX Runtime lacks
        return False
    return True


def _qgemm(x: np.ndarray, x_zp: int, w: np.ndarray, form: str, mult: np.ndarray, y_zp: int,
           bias: np.ndarray) -> np.ndarray:
    """ONNX Runtime's ``QGemm`` (``transB``, input and output scales 1, one multiplier ``mult``)
    on rows ``x``."""
    (wq, _), (zq, _) = weight_arrays(w, form)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(1), "one"), (np.uint8(x_zp), "xz"), (wq, "w"), (zq[0], "wz"),
        (np.float32(mult), "ws"), (np.asarray(bias, np.int32), "b"), (np.uint8(y_zp), "yz"))]
    node = helper.make_node("QGemm", ["x", "one", "xz", "w", "ws", "wz", "b", "one", "yz"], ["y"],
                            domain=MS_DOMAIN, transB=1)
    return probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)], inits).run(
        None, {"x": x})[0]
