"""What this process' ONNX Runtime integer kernels compute, probed once, and models put in the
form in which they compute what ``numerics`` defines.

ONNX Runtime runs a quantized model's convolutions and matmuls on MLAS' 8-bit kernels.  Whether
those give ``numerics``' codes is a property of the CPU: on x86-64 without VNNI (AVX2 machines,
e.g. AMD EPYC before Zen 4) its uint8 x int8 kernels add pairs of products in saturating 16-bit
lanes, while its uint8 x uint8 kernels widen to 16 bits first and stay exact.  :func:`weight_form`
runs ``QLinearConv`` on codes at the extremes in both forms and compares with ``numerics``;
:func:`exact` adds ``QLinearAdd``.  The runtime's fused runs write their integer kernels in the
form found (``runtime/fused_qlinear.py``), and every ONNX Runtime session npuflow opens on a
quantized model gets its int8 weights as uint8 where that is the exact form
(:func:`exact_weights`, applied by ``ort_session.open_session``), so calibration searches, quality
reports and CPU subgraphs see the model's arithmetic rather than the saturation.

The saturation is a property of each pair of weights MLAS adds in one lane: uint8 codes times two
int8 weights of one sign leave int16 only where their magnitudes sum above 128.  Weights are
known when a graph is written, so :func:`conv_weight_form` gives a ``QLinearConv`` whose pairs
(:func:`mlas_pairs`: channels-last taps ``2j``, ``2j + 1``; none in the depthwise kernel) all
stay within that bound its int8 weights and the faster kernel, once :func:`pairing_confirmed`
has found those lanes on this process' kernels; elsewhere the uint8 form stays.  ``ConvInteger``
gains nothing from it: its int8-weight kernel is exact but about four times slower than the
uint8 one on such a CPU; a pointwise convolution reaches the fast kernel as ``MatMulInteger`` of
its channels-last rows and int8 weights, whose lanes are adjacent input channels
(:func:`matmul_pairing_confirmed`).

The probes' verdicts, and those of the checks of one operation's kernel with its scales, are kept on
disk by ``ort_verdicts`` (a process that finds them opens no probe session).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from . import numerics as nm
from .graph import GraphView, attr
from .operators import DQ_PROPAGATING_OPS, QDQ_WEIGHT_READERS, QOPERATOR_WEIGHT_INPUTS
from .ort_verdicts import persistent

MS_DOMAIN = "com.microsoft"

log = logging.getLogger(__name__)

def probe_session(nodes: list, inputs: list, inits: list, out_type: int = TensorProto.UINT8) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "probe", inputs, [helper.make_tensor_value_info("y", out_type, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(MS_DOMAIN, 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def kernels(model: onnx.ModelProto, level: str, disabled_optimizers: Sequence[str] = (),
            external: Mapping[str, np.ndarray] | None = None) -> dict[tuple[str, str], int]:
    """How many nodes of each ``(domain, op_type)`` ONNX Runtime's CPU provider runs for ``model`` once its
    graph optimisations at ``level`` are done (:func:`optimized_graph`): which kernels compute it, e.g.
    whether a quantize group became a ``QLinear*`` kernel."""
    counts: dict[tuple[str, str], int] = {}
    for n in optimized_graph(model, level, disabled_optimizers, external).node:
        counts[(n.domain, n.op_type)] = counts.get((n.domain, n.op_type), 0) + 1
    return counts


def optimized_graph(model: onnx.ModelProto, level: str, disabled_optimizers: Sequence[str] = (),
                    external: Mapping[str, np.ndarray] | None = None, libraries: Sequence[str] = ()) -> onnx.GraphProto:
    """The graph ONNX Runtime's CPU provider runs for ``model`` once its graph optimisations at ``level``
    are done (npuflow's session options, less ``disabled_optimizers``; ``external``: the arrays of
    initialisers ``model`` declares external, as ``ort_session.open_session`` takes them), read from
    the optimised model ONNX Runtime writes; ``libraries``: custom operator libraries to register, as
    the session of ``model`` does."""
    from .ort_session import disabled, options

    opts = options(level=level, threads=1)
    for library in libraries:
        opts.register_custom_ops_library(library)
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (external or {}).values()]  # alive until loaded
    if values:
        opts.add_external_initializers(list(external), values)
    with tempfile.TemporaryDirectory() as d:
        opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                             disabled_optimizers=disabled(model, disabled_optimizers))
        return onnx.load(opts.optimized_model_filepath).graph


def _accumulators(x: np.ndarray, x_zp: int, w: np.ndarray, group: int) -> np.ndarray:
    """The exact int64 accumulators of a same-padded convolution of uint8 ``x`` (minus ``x_zp``)."""
    cout, per, k = w.shape[0], w.shape[1], w.shape[2]
    h, wd = x.shape[2:]
    xp = np.pad(x.astype(np.int64) - x_zp, [(0, 0), (0, 0), (k // 2, k // 2), (k // 2, k // 2)])
    acc = np.zeros((1, cout, h, wd), np.int64)
    for c in range(cout):
        g0 = (c // (cout // group)) * per
        for i in range(k):
            for j in range(k):
                acc[0, c] += np.einsum("chw,c->hw", xp[0, g0:g0 + per, i:i + h, j:j + wd], w[c, :, i, j].astype(np.int64))
    return acc


def _qlinear_conv(x: np.ndarray, x_zp: int, w: np.ndarray, form: str, mult: np.ndarray, y_zp: int, bias: np.ndarray,
                  group: int) -> np.ndarray:
    """ONNX Runtime's ``QLinearConv`` (same padding, input and output scales 1) on ``x``."""
    k = w.shape[2]
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(1), "one"), (np.uint8(x_zp), "xz"), *weight_arrays(w, form), (mult.astype(np.float32), "ws"),
        (np.uint8(y_zp), "yz"), (bias.astype(np.int32), "b"))]
    node = helper.make_node("QLinearConv", ["x", "one", "xz", "w", "ws", "wz", "one", "yz", "b"], ["y"],
                            pads=[k // 2] * 4, group=group, kernel_shape=[k, k])
    return probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)], inits).run(
        None, {"x": x})[0]


def _conv_exact(rng: np.random.Generator, form: str, cin: int, group: int, k: int) -> bool:
    """``QLinearConv`` on codes 0/255 and weights -128/127 (the products a 16-bit lane saturates
    on) against the exact accumulator and ``numerics.requantize_float``."""
    cout, x_zp, y_zp = cin if group > 1 else 16, 3, 128
    x = rng.choice(np.array([0, 255], np.uint8), size=(1, cin, 5, 5))
    w = rng.choice(np.array([-128, 127], np.int8), size=(cout, cin // group, k, k))
    bias = rng.integers(-(1 << 20), 1 << 20, cout).astype(np.int32)
    acc = _accumulators(x, x_zp, w, group) + bias.reshape(1, -1, 1, 1)
    mult = (np.float32(120) / np.float32(np.abs(acc).max())).astype(np.float32) * np.linspace(0.5, 1, cout, dtype=np.float32)
    want = np.clip(nm.requantize_float(acc, mult.reshape(1, -1, 1, 1), nm.RoundMode.HALF_EVEN) + y_zp, 0, 255)
    return np.array_equal(_qlinear_conv(x, x_zp, w, form, mult, y_zp, bias, group), want)


def _shift_conv_exact(rng: np.random.Generator, form: str, cin: int, group: int, k: int,
                      mode: str = "half_up") -> bool:
    """``QLinearConv`` with :func:`numerics.shift_as_float32_multiplier` multipliers against
    ``numerics.shift_round``: shifts 1..14 per channel, weights sized so the codes spread over
    0..255 (every small shift meets ties)."""
    shifts = np.array([1, 2, 3, 5, 8, 11, 14] * 2, np.int64)
    cout, x_zp = (cin if group > 1 else len(shifts)), 128
    shifts = np.resize(shifts, cout)
    taps = cin // group * k * k
    x = rng.integers(0, 256, size=(1, cin, 6, 6)).astype(np.uint8)
    size = np.clip(np.exp2(shifts) * 120 / (75 * np.sqrt(taps)), 1, 127).astype(np.int64)
    w = (rng.integers(-1000, 1001, size=(cout, cin // group, k, k)) * size.reshape(-1, 1, 1, 1) // 1000).astype(np.int8)
    bias = (128 << shifts) + rng.integers(-8, 9, cout)
    acc = _accumulators(x, x_zp, w, group) + bias.reshape(1, -1, 1, 1)
    want = np.clip(nm.shift_round(acc, shifts.reshape(1, -1, 1, 1), mode), 0, 255)
    got = _qlinear_conv(x, x_zp, w, form, nm.shift_as_float32_multiplier(shifts, mode), 0, bias, group)
    return np.array_equal(got, want)


def _add_exact(rng: np.random.Generator) -> bool:
    a, b = (rng.integers(0, 256, (1, 8, 16, 16)).astype(np.uint8) for _ in range(2))
    sa, sb, sc = np.float32(0.0371), np.float32(0.0123), np.float32(0.0417)
    want = np.clip(nm.qlinear_add(a, sa, 131, b, sb, 77, sc, 119), 0, 255)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (sa, "sa"), (np.uint8(131), "za"), (sb, "sb"), (np.uint8(77), "zb"), (sc, "sc"), (np.uint8(119), "zc"))]
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"], domain=MS_DOMAIN)
    ins = [helper.make_tensor_value_info(n, TensorProto.UINT8, a.shape) for n in ("a", "b")]
    got = probe_session([node], ins, inits).run(None, {"a": a, "b": b})[0]
    return np.array_equal(got, want)


def weight_arrays(w: np.ndarray, form: str) -> list[tuple[np.ndarray, str]]:
    """Int8 weight codes and their zero points as ``form`` has them: int8 with zero point 0, or
    uint8 ``w + 128`` with zero point 128."""
    cout = w.shape[0]
    if form == "s8":
        return [(w.astype(np.int8), "w"), (np.zeros(cout, np.int8), "wz")]
    return [((w.astype(np.int16) + 128).astype(np.uint8), "w"), (np.full(cout, 128, np.uint8), "wz")]


_ORT_REFUSALS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.NotImplemented,
                 ort.capi.onnxruntime_pybind11_state.InvalidGraph)


@persistent
def weight_form() -> str | None:
    """How this process' ``QLinearConv`` computes ``numerics``' codes: ``"s8"`` (int8 weights,
    MLAS' uint8 x int8 kernels: exact where the CPU has VNNI), ``"u8"`` (the same weights as uint8
    ``w + 128`` with zero point 128: MLAS' uint8 x uint8 kernels widen to 16 bits before they
    multiply, exact on x86-64 without VNNI too, about half as fast as ``"s8"``), or ``None`` (the
    float forms serve).  Dense 1x1 and 3x3 and depthwise 3x3 convolutions, with float-scale and
    power-of-two requantisations, on codes at the extremes."""
    shapes = ((64, 1, 1), (16, 1, 3), (16, 16, 3))
    for form in ("s8", "u8"):
        rng = np.random.default_rng(0)
        try:
            if all(_conv_exact(rng, form, *shape) and _shift_conv_exact(rng, form, *shape) for shape in shapes):
                return form
        except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks
            continue
    return None


def depthwise(w: np.ndarray, group: int) -> bool:
    """Whether a convolution with weights ``w`` (output channels, input channels of a group,
    kernel rows, kernel columns) in ``group`` groups is depthwise: one output channel a group, one
    input channel each, which MLAS runs on its depthwise kernel."""
    return group > 1 and w.shape[0] == group and w.shape[1] == 1


def mlas_pairs(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The two weights of every pair of products that MLAS' uint8 x int8 kernels add in one 16-bit
    lane of ``QLinearConv`` with weights ``w`` in ``group`` groups (:func:`depthwise`'s layout):
    per output channel its taps in channels-last order (kernel row, kernel column, input channel
    of the group, as its NHWC im2col lays them out), products ``2j`` and ``2j + 1``
    (``vpmaddubsw``), an odd count padded with a zero weight.  Dense and grouped convolutions
    alike, and a fully connected layer as a 1x1 convolution.  A :func:`depthwise` convolution has
    none: MLAS' depthwise kernel widens each product before it adds.  :func:`pairing_confirmed`
    checks both on this process' kernels; shapes of (output channels, pairs), int16 (codes)."""
    taps = np.asarray(w).astype(np.int16).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    if depthwise(w, group):
        taps = taps[:, :0]
    if taps.shape[1] % 2:
        taps = np.concatenate([taps, np.zeros((taps.shape[0], 1), np.int16)], axis=1)
    return taps[:, 0::2], taps[:, 1::2]


#: The largest sum of two same-sign weight magnitudes whose products with uint8 codes stay in a
#: saturating int16 lane: 255 * 128 = 32,640 <= 32,767 (and -32,640 >= -32,768); 255 * 129 is not.
#: Opposite signs never leave it (255 * 128 at most).
PAIR_BOUND = 128


def saturation_free(w: np.ndarray, group: int) -> bool:
    """Whether no pair of :func:`mlas_pairs` of int8 weight codes ``w`` can saturate on uint8
    codes in 0..255: no two same-sign weights added in one lane whose magnitudes sum above
    :data:`PAIR_BOUND`.  A property of the weights alone, known when the graph is written; checked
    a block of output channels at a time, so that a large layer's check holds a few copies of a
    block rather than of its weights (a session's peak memory)."""
    if depthwise(w, group):
        return True
    for start in range(0, w.shape[0], _CHECK_ROWS):
        a, b = mlas_pairs(w[start:start + _CHECK_ROWS], 1)
        if np.any((np.sign(a) == np.sign(b)) & (np.abs(a) + np.abs(b) > PAIR_BOUND)):
            return False
    return True


#: Output channels per block of :func:`saturation_free`.
_CHECK_ROWS = 64


def conv_weight_form(w: np.ndarray, group: int) -> str | None:
    """The weight form of one ``QLinearConv`` with int8 weight codes ``w`` in ``group`` groups:
    :func:`weight_form`, except that where that is ``"u8"`` (MLAS' uint8 x int8 kernels saturate)
    a convolution whose weights are :func:`saturation_free` runs on int8 weights after all, on
    the faster kernel whose 16-bit lanes it cannot overflow, once :func:`pairing_confirmed` finds
    the lanes where :func:`mlas_pairs` puts them.  One decision a convolution, made when its
    graph is written and kept as the type of its weights there."""
    form = weight_form()
    if form == "u8" and saturation_free(w, group) and pairing_confirmed():
        return "s8"
    return form


def _pair_weights(rng: np.random.Generator, cout: int, taps: int) -> np.ndarray:
    """Weight rows (channels-last taps) whose pairs of :func:`mlas_pairs` are each 127 and 1, in
    either order and of one sign: every pair sits at :data:`PAIR_BOUND`, and wherever two pairs
    meet as (1, 127), (127, 1) a kernel pairing other taps adds 254 * 255 in one lane."""
    half = -(-taps // 2)
    order = rng.integers(0, 2, (cout, half))
    sign = rng.choice(np.array([-1, 1]), (cout, half))
    big, small = 127, PAIR_BOUND - 127
    pairs = np.stack([np.where(order, big, small), np.where(order, small, big)], axis=-1) * sign[..., None]
    return pairs.reshape(cout, -1)[:, :taps]


def _pairing_holds(rng: np.random.Generator, cin: int, group: int, k: int) -> bool:
    """``QLinearConv`` with int8 weights on codes 255 and on codes 0/255: exact where every pair
    of :func:`mlas_pairs` sums to :data:`PAIR_BOUND`, and saturated where the first pair sums to
    one more -- the lanes are those pairs, and they saturate as the model says."""
    cout, per = (cin if group > 1 else 8), cin // group
    w = _pair_weights(rng, cout, per * k * k).reshape(cout, k, k, per).transpose(0, 3, 1, 2)
    bias = np.zeros(cout, np.int32)
    for x in (np.full((1, cin, 5, 5), 255, np.uint8), rng.choice(np.array([0, 255], np.uint8), size=(1, cin, 5, 5))):
        acc = _accumulators(x, 0, w, group)
        mult = np.full(cout, np.float32(100) / np.float32(np.abs(acc).max()), np.float32)
        want = np.clip(nm.requantize_float(acc, mult.reshape(1, -1, 1, 1), nm.RoundMode.HALF_EVEN) + 128, 0, 255)
        if not np.array_equal(_qlinear_conv(x, 0, w, "s8", mult, 128, bias, group), want):
            return False
    over = np.zeros(w.shape, np.int64)  # the first pair: taps (0, 0) of channels 0 and 1
    over[:, 0, 0, 0], over[:, 1, 0, 0] = 127, 2
    x = np.full((1, cin, 5, 5), 255, np.uint8)
    mult = np.full(cout, 1 / 160, np.float32)  # 255 * 129 -> 206, the lane's 32,767 -> 205
    exact = np.clip(nm.requantize_float(_accumulators(x, 0, over, group), mult[0], nm.RoundMode.HALF_EVEN), 0, 255)
    return not saturation_free(over, group) and not np.array_equal(
        _qlinear_conv(x, 0, over, "s8", mult, 0, bias, group), exact)


@persistent
def pairing_confirmed() -> bool:
    """Whether this process' ``QLinearConv`` on int8 weights adds products in the 16-bit lanes
    :func:`mlas_pairs` names: dense 1x1 with an odd channel count, dense 3x3 with 3 and 16
    channels and a grouped 3x3 (:func:`_pairing_holds`), and depthwise 3x3, 5x5 and 7x7 exact on
    weights -128/127 and codes 0/255 (no lanes).  Where it does not (another CPU, another MLAS),
    :func:`conv_weight_form` keeps the uint8 form for every convolution."""
    rng = np.random.default_rng(0)
    try:
        return all(_pairing_holds(rng, *shape) for shape in ((33, 1, 1), (3, 1, 3), (16, 1, 3), (8, 2, 3))) \
            and all(_conv_exact(rng, "s8", cin, cin, k) for cin, k in ((16, 3), (33, 3), (24, 5), (8, 7)))
    except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks
        return False


def _matmul_pairing_holds(rng: np.random.Generator, k: int, rows: int) -> bool:
    """``MatMulInteger`` of uint8 rows ``A`` (``rows`` x ``k``) and int8 weights ``B`` (``k`` x 8):
    exact on codes 255 and 0/255 (zero point 3) where every pair ``2j``, ``2j + 1`` along ``k``
    sums to :data:`PAIR_BOUND`, and saturated where the first pair sums to one more."""
    b = np.ascontiguousarray(_pair_weights(rng, 8, k).T)
    over = np.zeros_like(b)
    over[0], over[1] = 127, 2
    cases = ((np.full((rows, k), 255, np.uint8), 0, b), (rng.choice(np.array([0, 255], np.uint8), (rows, k)), 3, b),
             (np.full((rows, k), 255, np.uint8), 0, over))
    for i, (a, zp, w) in enumerate(cases):
        inits = [numpy_helper.from_array(w.astype(np.int8), "b"), numpy_helper.from_array(np.uint8(zp), "az"),
                 numpy_helper.from_array(np.int8(0), "bz")]
        node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
        got = probe_session([node], [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)], inits,
                            TensorProto.INT32).run(None, {"a": a})[0]
        want = (a.astype(np.int64) - zp) @ w.astype(np.int64)
        if np.array_equal(got, want) != (i < 2):  # the first two exact, the over-bound pair not
            return False
    return True


@persistent
def matmul_pairing_confirmed() -> bool:
    """Whether this process' ``MatMulInteger`` with uint8 activations as ``A`` and int8 weights as
    ``B`` adds products ``2j``, ``2j + 1`` along ``K`` in one saturating 16-bit lane and no others
    (:func:`_matmul_pairing_holds`, odd and even ``K``, one row and several): then weights whose
    pairs along ``K`` are :func:`saturation_free` (a 1x1 convolution's input channels in order are
    its :func:`mlas_pairs`) give the exact accumulator on MLAS' fast uint8 x int8 kernel.  Where
    it does not (VNNI adds four products in int32 and never saturates; another MLAS may pair
    otherwise), such convolutions keep ``ConvInteger`` on uint8 weights."""
    rng = np.random.default_rng(0)
    try:
        return all(_matmul_pairing_holds(rng, k, rows) for k, rows in ((33, 1), (64, 5), (200, 7)))
    except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks
        return False


def matmul_int8_exact(b: np.ndarray) -> bool:
    """Whether ``MatMulInteger`` of uint8 activations and int8 weight codes ``b`` (K x N, zero
    point 0) gives the exact accumulator on this process' kernels: always where ``QLinearConv``'s
    int8 form is (:func:`weight_form` ``"s8"``), else where no pair along ``K`` can saturate
    (:func:`saturation_free` of the columns as 1x1 convolution weights) and
    :func:`matmul_pairing_confirmed` finds the lanes there."""
    form = weight_form()
    return form == "s8" or (form == "u8" and saturation_free(np.asarray(b).T[:, :, None, None], 1)
                            and matmul_pairing_confirmed())


@persistent
def convinteger_exact() -> bool:
    """Whether this process' ``ConvInteger`` on uint8 codes and uint8 weights gives the exact
    accumulator: a padded, strided 3x3 and a 1x1 convolution of codes 0/255 and weights 0/255 (the
    products a saturating 16-bit lane would clip, as MLAS' uint8 x int8 kernels do without VNNI)
    against the int64 sums, with the input zero point 3 (the padding) and the weights' 128."""
    rng = np.random.default_rng(0)
    for cin, k, stride in ((16, 3, 2), (64, 1, 1)):
        x = rng.choice(np.array([0, 255], np.uint8), size=(1, cin, 7, 7))
        w = rng.choice(np.array([0, 255], np.uint8), size=(16, cin, k, k))
        inits = [numpy_helper.from_array(v, n) for v, n in ((w, "w"), (np.uint8(3), "xz"), (np.uint8(128), "wz"))]
        node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], pads=[k // 2] * 4, strides=[stride] * 2)
        try:
            got = probe_session([node], [helper.make_tensor_value_info("x", TensorProto.UINT8, x.shape)], inits,
                                TensorProto.INT32).run(None, {"x": x})[0]
        except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks: the float Conv serves
            return False
        # same padding: the strided convolution is the unstrided one's every stride-th position
        want = _accumulators(x, 3, w.astype(np.int64) - 128, 1)[:, :, ::stride, ::stride]
        if not np.array_equal(got, want):
            return False
    return True


@persistent
def matmulinteger_u8_exact() -> bool:
    """Whether this process' ``MatMulInteger`` of uint8 rows and uint8 weights (zero point 128, the
    ``ConvInteger`` weight form of :func:`convinteger_exact`) gives the exact accumulator: codes
    0/255 (zero point 3) and weights 0/255, the products a saturating 16-bit lane would clip, one
    row and several, odd and even ``K``, against the int64 sums.  Fully connected layers of several
    rows then take their accumulator from it without a layout move (``fused_conv._rows_accumulator``)."""
    rng = np.random.default_rng(0)
    for rows, k in ((1, 33), (16, 64), (7, 200)):
        a = rng.choice(np.array([0, 255], np.uint8), size=(1, rows, k))
        b = rng.choice(np.array([0, 255], np.uint8), size=(k, 24))
        inits = [numpy_helper.from_array(v, n) for v, n in ((b, "b"), (np.uint8(3), "az"), (np.uint8(128), "bz"))]
        node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
        try:
            got = probe_session([node], [helper.make_tensor_value_info("a", TensorProto.UINT8, a.shape)], inits,
                                TensorProto.INT32).run(None, {"a": a})[0]
        except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks: the convolution form serves
            return False
        if not np.array_equal(got, (a.astype(np.int64) - 3) @ (b.astype(np.int64) - 128)):
            return False
    return True


@persistent
def exact() -> bool:
    """Whether this process' ONNX Runtime integer kernels compute ``numerics``' codes (see the
    module docstring): ``QLinearConv`` in some :func:`weight_form`, and ``QLinearAdd``."""
    try:
        return weight_form() is not None and _add_exact(np.random.default_rng(0))
    except _ORT_REFUSALS:  # a kernel this ONNX Runtime lacks: the float forms serve
        return False


def _saturating(model: onnx.ModelProto, external: Mapping[str, np.ndarray] | None
                ) -> tuple[list[tuple[int, int, int]], Callable[[str], np.ndarray]]:
    """The (node index, weight input, zero point input) of every int8 weight of ``model`` that
    this CPU's MLAS computes with saturating 16-bit lanes (see :func:`exact_weights`), and how to
    read an initialiser's codes; none where the CPU's int8 kernels are exact (VNNI)."""
    inits = {t.name: t for t in model.graph.initializer}
    todo = []  # (node index, weight input, zero point input)
    for k, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        w, z = (0, 2) if node.op_type == "DequantizeLinear" else QOPERATOR_WEIGHT_INPUTS.get(node.op_type, (None, None))
        if node.op_type in QOPERATOR_WEIGHT_INPUTS and not _uint8_activations(node, inits):
            continue  # int8 x int8 has its own kernels; int8 x uint8 has none
        if w is not None and len(node.input) > w and node.input[w] in inits \
                and inits[node.input[w]].data_type == TensorProto.INT8 \
                and (len(node.input) <= z or not node.input[z] or node.input[z] in inits):
            todo.append((k, w, z))

    def codes(name: str) -> np.ndarray:
        return np.asarray(external[name]) if external is not None and name in external else \
            numpy_helper.to_array(inits[name])

    if not todo or weight_form() != "u8":
        return [], codes
    # the graph's readers only where the CPU saturates: a tuple per node input, whose pages
    # CPython's allocator keeps after they are freed
    readers = _readers(model.graph)
    nodes = model.graph.node
    # an int8 constant of another op keeps its type, which decides how ONNX Runtime fuses that op
    todo = [(k, w, z) for k, w, z in todo
            if nodes[k].op_type != "DequantizeLinear" or _weight_dequantize(nodes[k], readers)]
    if not todo:
        return [], codes
    view = GraphView(model)
    dequantized_uint8 = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
                         and len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.UINT8}
    return [(k, w, z) for k, w, z in todo
            if not _int8_conv_weight(model.graph.node[k], view, dequantized_uint8, codes)], codes


def saturating_weights(model: onnx.ModelProto) -> list[str]:
    """The int8 weights of ``model`` whose products plain ONNX Runtime adds in saturating 16-bit
    lanes on this CPU (no VNNI), so that its run of ``model`` is not what the model defines:
    what ``npuflow quantize`` warns about for a model meant for plain ONNX Runtime."""
    todo, codes = _saturating(model, None)
    names = {model.graph.node[k].input[w] for k, w, _z in todo}
    # no two weights of one lane can pass PAIR_BOUND together (7-bit weights): exact in any pairing
    return sorted(n for n in names if 2 * int(np.max(np.abs(codes(n).astype(np.int16)), initial=0)) > PAIR_BOUND)


def exact_weights(model: onnx.ModelProto, external: Mapping[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """``model`` with its int8 weight initializers as uint8 ``w + 128`` (zero points + 128) where
    this CPU's exact form is uint8 weights (:func:`weight_form` ``"u8"``): the same real values,
    which ONNX Runtime then runs on its exact uint8 x uint8 kernels.  Weights are the int8
    initializers whose ``DequantizeLinear`` only convolutions and matmuls read, as their weight,
    directly or through a transpose or reshape (:func:`_weight_dequantize`), or the weight input
    of a QOperator op on uint8 activations (ONNX Runtime has no int8 x uint8 kernel).  A
    convolution's weights that :func:`conv_weight_form` keeps int8 (:func:`_int8_conv_weight`)
    stay.  Elsewhere (VNNI, or no int8 weights) ``model`` itself.  ``external``: the arrays of
    initialisers whose data ``model`` declares external (``ort_session.open_session``)."""
    todo, codes = _saturating(model, external)
    if not todo:
        return model
    inits = {t.name: t for t in model.graph.initializer}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    made: dict[str, str] = {}
    for k, w, z in todo:
        node = out.graph.node[k]
        wname = node.input[w]
        if wname not in made:
            made[wname] = _add_uint8(out, codes(wname), f"{wname}__u8")
        zname = node.input[z] if len(node.input) > z and node.input[z] else None
        key = f"{zname}__zp" if zname else f"{wname}__zp0"
        if key not in made:
            zp = codes(zname) if zname else np.zeros(_zero_point_shape(node, inits), np.int8)
            made[key] = _add_uint8(out, zp, f"{key}__u8")
        while len(node.input) <= z:
            node.input.append("")
        node.input[w], node.input[z] = made[wname], made[key]
    return out


def _int8_conv_weight(node: onnx.NodeProto, view: GraphView, dequantized_uint8: set[str],
                      codes: Callable[[str], np.ndarray]) -> bool:
    """Whether ``node`` (a ``DequantizeLinear`` of weights, or a QOperator op on uint8 codes)
    gives int8 weights with zero point 0 to ``QLinearConv`` on uint8 codes only -- the QOperator
    op itself, or ``Conv`` nodes that read the dequantized weights directly and dequantized uint8
    codes (``dequantized_uint8``), which ONNX Runtime fuses into it -- and :func:`conv_weight_form`
    keeps them int8 for each such convolution; or a ``MatMulInteger`` on uint8 codes whose int8
    weights :func:`matmul_int8_exact` finds exact.  ``codes``: an initialiser's array."""
    if node.op_type == "DequantizeLinear":
        w, z = 0, 2
        convs = view.consumer_nodes(node.output[0])
        if not convs or any(n.op_type != "Conv" or list(n.input).index(node.output[0]) != 1
                            or n.input[0] not in dequantized_uint8 for n in convs):
            return False
    elif node.op_type == "QLinearConv":
        w, z, convs = 3, 5, [node]
    elif node.op_type == "MatMulInteger":
        b = codes(node.input[1])
        return (len(node.input) <= 3 or not node.input[3] or not np.any(codes(node.input[3]))) \
            and b.ndim == 2 and matmul_int8_exact(b)
    else:
        return False
    if len(node.input) > z and node.input[z] and np.any(codes(node.input[z]) != 0):
        return False
    weights = codes(node.input[w])
    return weights.ndim == 4 and all(conv_weight_form(weights, attr(n, "group", 1)) == "s8" for n in convs)


def _readers(graph: onnx.GraphProto) -> dict[str, list[tuple[str, int, list[str]]]]:
    """Tensor name -> (op type, input index, outputs) of every node of ``graph`` that reads it; a
    graph output counts as a reader of its own (``("", -1, [])``)."""
    out: dict[str, list[tuple[str, int, list[str]]]] = {o.name: [("", -1, [])] for o in graph.output}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name:
                out.setdefault(name, []).append((node.op_type, k, list(node.output)))
    return out


def _weight_dequantize(node: onnx.NodeProto, readers: dict) -> bool:
    """Whether ``DequantizeLinear`` ``node`` dequantizes weights: only convolutions and matmuls
    read its output as their weight input, directly or through ops that move values.

    An int8 constant that another op reads keeps its type: uint8 codes with zero point 128 are the
    same real values, but they change which kernel ONNX Runtime fuses the reader into.  YOLOv8n's
    anchors (int8) added to uint8 box offsets stay a float ``Add`` between ``DequantizeLinear``
    and ``QuantizeLinear`` (what the compiler computes for a group that is not all uint8); as
    uint8 they made ONNX Runtime fuse a ``QLinearAdd``, whose float32 arithmetic rounds a sum
    that lies 5e-7 above a tie down (60 instead of 61), one output step on the boxes."""
    return _only_weight_reads(node.output[0], readers, depth=4)


def _only_weight_reads(tensor: str, readers: dict, depth: int) -> bool:
    """Whether ``tensor`` has readers and every one takes it as a weight, looking through up to
    ``depth`` ops that move values."""
    reads = readers.get(tensor, [])
    for op, k, outs in reads:
        if op in DQ_PROPAGATING_OPS:
            if k != 0 or depth == 0 or not all(_only_weight_reads(o, readers, depth - 1) for o in outs):
                return False
        elif QDQ_WEIGHT_READERS.get(op) != k:
            return False
    return bool(reads)


def _uint8_activations(node: onnx.NodeProto, inits: dict) -> bool:
    """Whether a QOperator op's activation (its zero point, input 2 of each) is uint8."""
    zp = inits.get(node.input[2]) if len(node.input) > 2 else None
    return zp is not None and zp.data_type == TensorProto.UINT8


def _zero_point_shape(node: onnx.NodeProto, inits: dict) -> tuple:
    """A missing zero point's shape: the scale's (per tensor or per channel)."""
    scale = inits.get(node.input[1])
    return tuple(scale.dims) if scale is not None else ()


def _add_uint8(model: onnx.ModelProto, codes: np.ndarray, name: str) -> str:
    model.graph.initializer.append(numpy_helper.from_array((codes.astype(np.int16) + 128).astype(np.uint8), name))
    return name
