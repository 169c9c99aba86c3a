"""Lookup tables inside a fused run (:mod:`.fused`): an 8-bit tensor's elementwise function as
one copy of table entries -- the lowered ``lut`` and per-channel ``lut_channel`` ops, and any op
whose codes depend on one 8-bit tensor's code alone (SiLU's ``Mul`` of a sigmoid table and its
input), composed into one table by the op's own kernel, so the entries are the kernels' codes."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from .. import ort_kernels, ort_verdicts
from ..graph import attr
from ..ort_kernels import MS_DOMAIN
from . import fused_qlinear
from .fused_conv import integer_offset
from .fused_graph import INDEX_TYPE, Graph, NotFusable, code_range, gather, lookup
from .kernels import KERNELS


def bytes_only(g: Graph, tensor: str) -> bool:
    """Whether ``tensor`` is held only as 8-bit codes (an integer kernel wrote it)."""
    return tensor in g.bytes and tensor not in g.names


def _lookup(g: Graph, src: str, out: str, table: np.ndarray, qmin: int) -> None:
    """``out = table[src - qmin]`` (the kernels' ``_lut``), a copy of table entries.

    Written as ``fused_graph.gather`` (a copy loop on non-negative indices, hence the shift to
    them first, which also takes ``src``'s offset).  The entries are stored centred on ``out``'s
    zero point, as its readers want them (``Graph``).
    """
    if byte_table(g, src, out, table, qmin):
        byte_form(g, src, out, table)
        return
    table_node(g, *g.base(src), g.tensors[src]["dtype"], out, table, qmin)


def byte_table(g: Graph, src: str, out: str, table: np.ndarray, qmin: int) -> bool:
    """Whether ``table`` of ``src``'s codes can be indexed by ``src``'s bytes as they are: 8-bit
    codes from an integer kernel, held minus ``qmin``, one entry per code, 8-bit entries."""
    return (bytes_only(g, src) and g.byte_offsets.get(src, 0) == qmin and table.size == 256
            and np.dtype(g.tensors[out]["dtype"]).itemsize == 1)


def byte_form(g: Graph, src: str, out: str, table: np.ndarray) -> None:
    """``out = table[src]`` on ``src``'s bytes (:func:`byte_table`): ONNX Runtime's own kernel
    where it computes the table (a change of scale, ``fused_qlinear.rescale``; hard-swish,
    :func:`float_form`), else a copy of the entries (:func:`byte_lookup`)."""
    if not (fused_qlinear.rescale(g, src, out, table) or float_form(g, src, out, table)):
        byte_lookup(g, g.bytes[src], out, table)


def byte_lookup(g: Graph, codes: str, out: str, table: np.ndarray) -> None:
    """``out = table[codes]`` for the bytes ``codes`` (see :func:`byte_table`): the entries go on
    as bytes (minus the output type's lowest code) to the next integer kernel or data movement."""
    k = nm.qrange(8, np.dtype(g.tensors[out]["dtype"]).kind == "i")[0]
    last = channels_last(g, codes) and len(g.tensors[out]["shape"]) == 4
    if last:  # cancels the Transpose ONNX Runtime puts after its channels-last kernel
        codes = g.node("Transpose", [codes], perm=[0, 2, 3, 1])
    row = gather(g, g.node("Cast", [codes], to=INDEX_TYPE), g.const(np.asarray(table, np.int64) - k, np.uint8))
    g.put_bytes(out, g.node("Transpose", [row], perm=[0, 3, 1, 2]) if last else row, k)


def float_form(g: Graph, src: str, out: str, table: np.ndarray) -> bool:
    """Write the byte table ``out = table[src]`` (:func:`byte_table`, uint8 to uint8) as ONNX
    Runtime's float activation on the dequantized codes, as its plain QDQ run of the model
    (``DequantizeLinear``, the activation, ``QuantizeLinear``), where that form, run at load,
    gives every code its entry; say whether it did.  The activations (:func:`_forms`): hard-swish,
    and a leaky ReLU with a floor (``LeakyRelu -> Max``, openWakeWord's, whose slope and floor are
    read off the table: the table is all the ``.npuf`` keeps), as ONNX Runtime's own table kernel
    ``com.microsoft.QLinearLeakyRelu`` (a 256-entry table it builds from its float function, one
    byte loop) and a uint8 ``Clip`` at the floor's code (``Q(max(v, m)) = max(Q(v), Q(m))``).

    Why: a table is a ``Cast`` to int32 and a ``GatherElements`` copy (PP-OCR cls's hard-swish on
    a [1, 16, 24, 96] tensor: 40 us), the float form 29 us; openWakeWord's 14 leaky tables were a
    third of its frame, and their float form (``DequantizeLinear -> LeakyRelu -> Max ->
    QuantizeLinear``) saved only 2-3 % of it.  Exact only where ONNX Runtime's
    vectorised loops and their scalar tails both give every code the table's entry, which
    :func:`_float_form_matches` proves; a table it refuses (another function, a tie a kernel
    rounds otherwise: the table's half-up against ``QuantizeLinear``'s half-to-even) stays a table,
    and so does one a max pooling reads: written channels-last
    (:func:`byte_lookup`) its bytes are pooled by ONNX Runtime's ``NhwcMaxPool``, after the float
    form by its NCHW uint8 ``MaxPool`` between layout transposes (PP-OCR cls: more than the
    table saves)."""
    params = [g.tensors[t].get("quant") or {} for t in (src, out)]
    dtypes = [np.dtype(g.tensors[t]["dtype"]) for t in (src, out)]
    if any(op["op"] == "maxpool" for op in g.readers.get(out, [])) or dtypes[0] != dtypes[1] \
            or any("scale" not in q or np.ndim(q["scale"]) or np.ndim(q.get("zero_point", 0)) for q in params):
        return False
    k = nm.qrange(8, dtypes[0].kind == "i")[0]  # int8 codes as bytes moved by 128 (bernoulli2): byte_table
    (sx, zx), (sy, zy) = ((float(np.float32(q["scale"])), int(q.get("zero_point", 0)) - k) for q in params)
    entries = np.asarray(table, np.int64).reshape(-1) - k
    if not (0 <= zx <= 255 and 0 <= zy <= 255 and entries.size == 256):
        return False
    form = next((f for f in _forms(sx, zx, sy, zy, entries)
                 if _float_form_matches(sx, zx, sy, zy, entries.tobytes(), f)), None)
    if form is None:
        return False
    if form[0] != "HardSwish":
        y = g.node("QLinearLeakyRelu", [g.bytes[src], g.scalar(sx), g.scalar(zx, np.uint8), g.scalar(sy),
                                        g.scalar(zy, np.uint8)], domain=MS_DOMAIN, alpha=form[1])
        g.put_bytes(out, y if form[2] is None else g.node("Clip", [y, g.scalar(form[2], np.uint8)]), k)
        return True
    dq = g.node("DequantizeLinear", [g.bytes[src], g.scalar(sx), g.scalar(zx, np.uint8)])
    g.put_bytes(out, g.node("QuantizeLinear", [g.node("HardSwish", [dq]), g.scalar(sy), g.scalar(zy, np.uint8)]), k)
    return True


def _forms(sx: float, zx: int, sy: float, zy: int, entries: np.ndarray) -> list[tuple]:
    """The float forms worth a probe for the uint8 table ``entries``: ``("HardSwish",)`` where
    :func:`_near` passes, ``("QLinearLeakyRelu", alpha, floor)`` where :func:`_leaky_fit` finds one."""
    leaky = _leaky_fit(sx, zx, sy, zy, entries)
    return [f for f in (("HardSwish",) if _near(sx, zx, sy, zy, entries) else None, leaky) if f is not None]


def _form_nodes(form: tuple) -> list:
    """:func:`float_form`'s nodes of ``form`` (:func:`_forms`) in a probe from uint8 ``x`` to
    uint8 ``y`` (a leaky form's floor code is the initializer ``m``)."""
    if form[0] == "HardSwish":
        return [helper.make_node("DequantizeLinear", ["x", "sx", "zx"], ["dq"]),
                helper.make_node("HardSwish", ["dq"], ["h"]), helper.make_node("QuantizeLinear", ["h", "sy", "zy"], ["y"])]
    leaky = helper.make_node("QLinearLeakyRelu", ["x", "sx", "zx", "sy", "zy"], ["l" if form[2] is not None else "y"],
                             domain=MS_DOMAIN, alpha=form[1])
    return [leaky] if form[2] is None else [leaky, helper.make_node("Clip", ["l", "m"], ["y"])]


def _near(sx: float, zx: int, sy: float, zy: int, entries: np.ndarray) -> bool:
    """Whether the hard-swish in numpy's float32 is within one code of ``entries`` on every code: a
    cheap screen before :func:`_float_form_matches` opens a session (a table of another function
    is far off somewhere)."""
    x = (np.arange(256, dtype=np.float32) - np.float32(zx)) * np.float32(sx)
    y = x * np.clip(x * np.float32(1 / 6) + np.float32(0.5), np.float32(0), np.float32(1))
    codes = np.clip(nm.round_values(y / np.float32(sy), nm.RoundMode.HALF_EVEN) + zy, 0, 255)
    return entries.size == 256 and int(np.abs(codes - entries).max()) <= 1


def _leaky_fit(sx: float, zx: int, sy: float, zy: int, entries: np.ndarray) -> tuple | None:
    """``("QLinearLeakyRelu", alpha, floor)`` whose ``max(Q(LeakyRelu(x, alpha)), floor)`` gives
    ``entries`` in numpy's float32 with half-to-even rounding (ONNX Runtime's, building the
    kernel's table), or ``None``; ``floor`` ``None`` where the leaky ReLU alone gives them.

    The floor is the lowest entry (``Q(max(v, m)) = max(Q(v), Q(m))``, whatever floor ``m`` the
    model's ``Max`` had).  Each negative input whose
    entry is above the floor bounds the slope to an interval (its entry, plus or minus half a
    code), each at the floor bounds it from below; the slope is the middle of their intersection,
    so no entry sits on a rounding tie (where the table's half-up and ``QuantizeLinear``'s
    half-to-even differ).  A positive input's entry must be its own value: the screen checks
    that, and :func:`_float_form_matches` proves the form in ONNX Runtime."""
    x = (np.arange(256) - zx) * sx
    t = entries - zy
    floor = int(t.min())
    neg = x < 0
    lo = [((v + 0.5) if v > floor else (floor + 0.5)) * sy / xv for xv, v in zip(x[neg], t[neg])]
    hi = [(v - 0.5) * sy / xv for xv, v in zip(x[neg], t[neg]) if v > floor]
    low, high = max(lo, default=-1.0), min(hi, default=None)
    if high is None:  # every negative input on the floor: a ReLU, or a floor above -alpha's reach
        high = max(low, 0.0) + 1.0
    if not low < high or low <= 1.0 <= high:  # a slope of 1 is a change of scale: fused_qlinear.rescale's
        return None
    alpha = float(np.float32((low + high) / 2))
    xf = (np.arange(256, dtype=np.float32) - np.float32(zx)) * np.float32(sx)
    y = np.where(xf < 0, xf * np.float32(alpha), xf)
    codes = np.clip(nm.round_values(y / np.float32(sy), nm.RoundMode.HALF_EVEN) + zy, 0, 255)
    if np.array_equal(codes, entries):
        return "QLinearLeakyRelu", alpha, None
    return ("QLinearLeakyRelu", alpha, floor + zy) if np.array_equal(np.maximum(codes, floor + zy), entries) else None


@ort_verdicts.persistent_check
def _float_form_matches(sx: float, zx: int, sy: float, zy: int, table: bytes, form: tuple = ("HardSwish",)) -> bool:
    """Whether :func:`float_form`'s nodes of ``form`` with these scales and zero points give every
    uint8 code its entry of the int64 codes ``table``, in ONNX Runtime's vector loops and their
    scalar tails: one run of 16,384 codes holding every code at every position modulo 64, and runs of
    every length 1..65 that together hold every code (a tensor, or a thread's block of it, ends in
    a tail of any length up to the vector width)."""
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(sx), "sx"), (np.uint8(zx), "zx"), (np.float32(sy), "sy"), (np.uint8(zy), "zy"))]
    if form[0] != "HardSwish" and form[2] is not None:
        inits.append(numpy_helper.from_array(np.uint8(form[2]), "m"))
    try:
        session = ort_kernels.probe_session(
            _form_nodes(form), [helper.make_tensor_value_info("x", TensorProto.UINT8, ["n"])], inits)
    except ort_kernels._ORT_REFUSALS:  # an ONNX Runtime built without its contrib ops (no QLinearLeakyRelu): a table
        return False
    entries = np.frombuffer(table, np.int64)
    i = np.arange(256 * 64)
    runs = [(i % 256 + i // 256) % 256]
    runs += [(np.arange(n) + start) % 256 for n in range(1, 66) for start in range(0, 256, n)]
    return all(np.array_equal(session.run(None, {"x": r.astype(np.uint8)})[0], entries[r]) for r in runs)


def channels_last(g: Graph, codes: str) -> bool:
    """Whether ONNX Runtime's layout pass holds bytes ``codes`` channels-last: the output of a
    ``QLinearConv`` (which it runs channels-last), of an elementwise integer kernel (a SiLU's
    ``QLinearMul``, which it moves the layout through), or of a ``Transpose`` back to
    channels-first (a table written channels-last, :func:`byte_lookup`), whose transposes
    cancel; through max pools and clamps.

    ONNX Runtime moves the layout ``Transpose`` after such a tensor through elementwise ops and
    pools, but not through a table's ``GatherElements`` and ``Reshape``: a table written
    channels-last between two transposes of its own (a table is elementwise, so the layout does
    not change its codes) lets them cancel against ONNX Runtime's, instead of two layout passes
    per table (PP-OCR cls on cpu-int8: 56 transposes, 4 this way; YOLOv8n on cpu-int8: the
    neck's two upsampling tables after SiLU products, 6 transposes)."""
    node = source_writer(g, codes)
    if node is not None and node.op_type in ("QLinearConv", "QLinearMul", "QLinearAdd", "QLinearSigmoid",
                                             "QLinearLeakyRelu"):
        return True
    return node is not None and node.op_type == "Transpose" and attr(node, "perm") == [0, 3, 1, 2]


def source_writer(g: Graph, codes: str):
    """The node of ``g`` that computes ``codes``, looking through the ``Clip``s and ``MaxPool``s
    after it (they keep its layout); ``None`` for a graph input or constant."""
    node = _writer(g, codes)
    while node is not None and node.op_type in ("Clip", "MaxPool"):
        node = _writer(g, node.input[0])
    return node


def _writer(g: Graph, name: str):
    """The node of ``g`` that writes ``name`` (the latest; ``None`` for a graph input or constant)."""
    return next((n for n in reversed(g.nodes) if name in n.output), None)


def table_node(g: Graph, x: str, off: int, dtype: str, out: str, table: np.ndarray, qmin: int) -> None:
    """:func:`_lookup` of the codes held in ``x`` minus ``off`` (codes of type ``dtype``).

    Where the held values ``lo - off .. hi - off`` lie within ``-n..n-1`` (``n`` entries, one per
    code), they index the table as they are: ``GatherElements`` counts a negative index from the
    end, so the entries are rotated by ``qmin - off`` instead of a ``Sub`` pass over the tensor
    before its cast to indices (a requantised tensor is held on its zero point, the table starts
    at the lowest code)."""
    lo, hi = code_range(dtype)
    n = np.asarray(table).size
    if n == hi - lo + 1 and lo == qmin and -n <= lo - off and hi - off <= n - 1:
        _put_lookup(g, g.node("Cast", [x], to=INDEX_TYPE), out, np.roll(np.asarray(table).reshape(-1), qmin - off))
        return
    _put_lookup(g, _table_index(g, x, off, dtype, n, qmin), out, table)


def _table_index(g: Graph, x: str, off: int, dtype: str, entries: int, qmin: int) -> str:
    """The index ``code - qmin`` into a table of ``entries`` per row, of the codes held in ``x``
    minus ``off``; NotFusable unless a row covers every code of ``dtype`` from ``qmin`` on."""
    lo, hi = code_range(dtype)
    if entries != hi - lo + 1 or lo != qmin:
        raise NotFusable("table does not cover the input codes")
    return g.node("Cast", [g.node("Sub", [x, g.const(lo - off)]) if lo != off else x], to=INDEX_TYPE)


def _put_lookup(g: Graph, index: str, out: str, table: np.ndarray) -> None:
    """``out = table[index]``, its entries centred on ``out``'s zero point where that is one value
    (what its readers subtract anyway), else on 0; where every reader takes the codes to
    ``ConvInteger`` (``fused_conv.integer_offset``), the entries are the uint8 bytes it reads
    (codes minus the type's lowest code), instead of float32 codes and a cast to uint8."""
    held = integer_offset(g, out)
    if held is None and not g.readers.get(out) and np.dtype(g.tensors[out]["dtype"]) == np.uint8:
        held = 0  # read by no op of this run: its codes leave it as looked up (``fused_run``)
    if held is not None:
        g.put_bytes(out, lookup(g, index, table, held, np.uint8), held)
        return
    zp = (g.tensors[out].get("quant") or {}).get("zero_point", 0)
    zp = int(zp) if np.ndim(zp) == 0 else 0
    g.put(out, lookup(g, index, table, zp, out=out), zp)


def lut(g: Graph, op: dict, blobs: dict) -> None:
    if bytes_only(g, op["inputs"][0]) and fused_qlinear.sigmoid(g, op, blobs["table"]):
        return
    if not as_table(g, op, blobs):
        _lookup(g, op["inputs"][0], op["outputs"][0], blobs["table"], op["attrs"]["qmin"])


def lut_channel(g: Graph, op: dict, blobs: dict) -> None:
    """``kernels.prepare_lut_channel``: the index ``x - qmin`` plus the row offset of the element
    of ``attrs["shape"]`` it sits at, into the rows laid end to end (:func:`_put_lookup`)."""
    src, a = op["inputs"][0], op["attrs"]
    table = np.asarray(blobs["table"])
    idx = _table_index(g, *g.base(src), g.tensors[src]["dtype"], table.shape[1], a["qmin"])
    rows = (np.arange(table.shape[0], dtype=np.int32) * table.shape[1]).reshape(a["shape"])
    _put_lookup(g, g.node("Add", [idx, g.const(rows, np.int32)]), op["outputs"][0], table.reshape(-1))


def _codewise(op: dict, tensors: dict, blobs: dict) -> bool:
    """Whether ``op``'s kernel computes each output code from the input codes at the same position
    alone, with one set of parameters: a lookup table, or an eltwise op on tensors of the output's
    shape (no broadcasting; a constant operand holds one value) whose scales, zero points, shifts
    and chain constants are scalars.  Its kernel run on 1-D arrays of codes then gives its table."""
    shape = list(tensors[op["outputs"][0]]["shape"])
    if any(list(tensors[t]["shape"]) != shape for t in op["inputs"]):
        return False
    if op["op"] == "lut":
        return True
    if op["op"] != "eltwise" or any(np.size(v) != 1 for v in blobs.values()):
        return False
    a = op["attrs"]
    ep, spec = a.get("epilogue") or {}, a.get("qlinear", {})
    values = [ep.get(k) for k in ("shift", "multiplier", "zp", "scale", "acc_scale")]
    values += [*a.get("dequant", []), *(a.get("scale_mult") or []), *spec.get("scales", []), *spec.get("zps", [])]
    values += [r["c"] for st in ep.get("chain", []) for r in st["in"] if r and "c" in r]
    return all(np.ndim(v) == 0 for v in values if v is not None)


def as_table(g: Graph, op: dict, blobs: dict) -> bool:
    """Write ``op`` as ONE lookup table of an 8-bit tensor when each of its inputs is that tensor
    or a table of it in this graph (``Graph.tables``), and say whether it did.

    SiLU and hard-swish reach the runtime as a table (sigmoid, hard-sigmoid) and an eltwise
    ``Mul`` of the table's input and output: as one table of the input they cost one copy loop
    instead of the dequantize-multiply-quantize passes, and a table of a table is one table.
    The composed table is the op's own kernel (``kernels.KERNELS``) run on the input codes that
    every source code gives, so it holds exactly the codes the op-by-op run computes."""
    if not _codewise(op, g.tensors, blobs):
        return False
    sources = {g.tables.get(t, (t, None))[0] for t in op["inputs"]}
    if len(sources) != 1:
        return False
    src = sources.pop()
    out = op["outputs"][0]
    if isinstance(src, tuple):  # tables of a convolution's accumulator index (``fused_conv._acc_table``)
        values = [g.tables[t][1] for t in op["inputs"]]
        table = np.asarray(KERNELS[op["op"]](op["attrs"], blobs)(values)[0]).reshape(-1)
        if table.size != values[0].size or table.dtype != np.dtype(g.tensors[out]["dtype"]):
            return False
        _put_lookup(g, src[1], out, table)
        g.tables[out] = (src, table)
        return True
    dt = np.dtype(g.tensors[src]["dtype"])
    if dt.kind not in "iu" or dt.itemsize != 1:
        return False
    lo, hi = nm.qrange(8, dt.kind == "i")
    codes = np.arange(lo, hi + 1).astype(dt)
    values = [codes if g.tables.get(t, (t, None))[1] is None else g.tables[t][1] for t in op["inputs"]]
    table = np.asarray(KERNELS[op["op"]](op["attrs"], blobs)(values)[0])
    if table.size != codes.size or table.dtype != np.dtype(g.tensors[out]["dtype"]):
        return False
    table = table.reshape(-1)  # a one-value constant broadcasts as (1, 1, 1, 1)
    _lookup(g, src, out, table, lo)
    g.tables[out] = (src, table)
    return True
