"""The graph a fused run is written into, and the exact rounding steps its op writers share.

``runtime/fused.py`` writes an integer program's ops as ONE ONNX Runtime graph; this module holds
that graph under construction (which ONNX tensor holds which manifest tensor's codes, and how:
float32 codes centred on an offset, or raw 8-bit codes for ONNX Runtime's integer kernels) and
the small steps every op writer needs (code ranges, saturation, the tie rule as ONNX ops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..ort_kernels import MS_DOMAIN
from .epilogues import out_type

F32_BOUND = nm.FLOAT_EXACT_BOUND[np.dtype(np.float32)]

#: Constants of at least this many bytes are held as arrays (``Graph.arrays``) and handed to ONNX
#: Runtime as external initialisers: the graph protobuf, its serialized bytes and ONNX Runtime's
#: parse of them then hold no weights (measured: a 4.9 MiB float convolution weight cost 33 MiB of
#: peak memory inline, 24 MiB external).  Smaller ones stay in the protobuf, where ONNX Runtime's
#: shape inference reads them (a ``Reshape``'s shape, a ``Clip``'s bounds).
EXTERNAL_BYTES = 4096

#: A fused run whose integer tensors take at most this many bytes as float32 (:meth:`Graph.float_bytes`)
#: opens with ONNX Runtime's memory pattern, as its default sessions do: from the second run on its
#: nodes allocate nothing, where without the pattern (``FusedRun._session``, for peak memory) each
#: node takes its output from the arena on every run, a few per cent of a small model's frame.  The
#: pattern's block, the run's activations once more, stays this small.
SMALL_RUN_BYTES = 1 << 20

#: The location an external initialiser's protobuf names; ONNX Runtime replaces it with the array
#: given in the session options before it reads any data (``ort_session.open_session``).
EXTERNAL_LOCATION = "npuflow-fused-constant"


class NotFusable(Exception):
    """The op cannot be written as exact float operations; the message says why."""


@dataclass
class Graph:
    """A graph under construction; ``names`` maps manifest tensors to their float32 code tensors.

    A code tensor may be held **centred**: ``names[t]`` then holds ``q - offsets[t]`` (a
    requantisation leaves its zero point out, and the convolution, eltwise op, pad or table that
    reads the tensor wants ``q - zp`` anyway), so the zero point costs a pass only where a reader
    needs other codes (``centered``, one ``Add`` per tensor and offset).

    An 8-bit tensor written by one of ONNX Runtime's integer kernels (``fused_qlinear``) is held
    as **bytes**: a uint8 tensor (``bytes``) of its codes minus ``byte_offsets[t]`` (0 for a
    uint8 tensor; an int8 tensor's codes are moved into 0..255, e.g. by 128), and gets a float32
    view only when a float reader asks (``base``).
    """

    tensors: dict
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    names: dict = field(default_factory=dict)
    inputs: list = field(default_factory=list)
    count: int = 0
    #: tensor -> (8-bit source tensor of this graph, its codes for every source code in order):
    #: the tensors that are elementwise functions of one tensor (``_as_table``)
    tables: dict = field(default_factory=dict)
    #: tensor -> (its uint8 source tensor, its codes for every source code): tables written as one
    #: of ONNX Runtime's integer kernels (``QLinearSigmoid``), which ``tables`` leaves out so that no
    #: lookup replaces the kernel and its channels-last layout; a product of such a table and its
    #: source meets only these 256 pairs of codes (``fused_qlinear.mul``)
    kernel_tables: dict = field(default_factory=dict)
    offsets: dict = field(default_factory=dict)  # tensor -> k: names[tensor] holds its codes minus k
    shifted: dict = field(default_factory=dict)  # (tensor, k) -> codes minus k, made once
    pads: dict = field(default_factory=dict)  # output of a constant Pad -> (its input, widths, pad code)
    bytes: dict = field(default_factory=dict)  # 8-bit tensor -> the uint8 ONNX tensor of its codes minus k
    byte_offsets: dict = field(default_factory=dict)  # tensor -> k of ``bytes`` (absent: 0)
    readers: dict = field(default_factory=dict)  # tensor -> the program's ops that read it
    #: initialiser name -> array, for the constants of ``EXTERNAL_BYTES`` and more: ``inits`` holds
    #: a protobuf naming it as external data, without the bytes (``external_stub``)
    arrays: dict = field(default_factory=dict)
    #: output of a ``Reshape`` that puts a channels-last kernel's result back -> (the kernel's
    #: output, its shape): the next such kernel reads that directly (:func:`rows_channels_last`)
    views: dict = field(default_factory=dict)
    #: (dtype, shape, digest) -> the name of an external constant already holding those bytes:
    #: equal constants (PP-OCR cls's hard-swish tables of equal scales: 27 % of its fused run's
    #: constant bytes) are one initialiser, so ONNX Runtime copies and keeps them once
    shared: dict = field(default_factory=dict)
    #: 8-bit NCHW tensor -> the layer channel its bytes hold at each stored channel, where a fix
    #: layer left them in its kernel's order for readers that absorb it (``fused_permute``)
    perm: dict = field(default_factory=dict)

    def fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def const(self, value, dtype=np.float32) -> str:
        array = np.ascontiguousarray(np.asarray(value, dtype))
        if array.nbytes >= EXTERNAL_BYTES:
            key = (array.dtype.str, array.shape, hashlib.sha256(array.data).digest())
            name = self.shared.get(key)
            if name is not None and np.array_equal(self.arrays[name], array):
                return name
            name = self.shared[key] = self.fresh()
            self.arrays[name] = array
            self.inits.append(external_stub(name, array))
        else:
            name = self.fresh()
            self.inits.append(numpy_helper.from_array(array, name))
        return name

    def scalar(self, value, dtype=np.float32) -> str:
        """A 0-d constant (``const`` stores at least one dimension; some kernels want scalars)."""
        name = self.fresh()
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype).reshape(()), name))
        return name

    def node(self, op: str, ins: list[str], **attrs) -> str:
        out = self.fresh()
        self.nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def base(self, tensor: str) -> tuple[str, int]:
        """The float32 tensor held for ``tensor`` and its offset (it holds ``q - offset``); a
        tensor from outside becomes a graph input, offset 0."""
        if tensor not in self.names:
            held = self.bytes.get(tensor)
            if held is None:
                held = self._input(tensor)
                if np.dtype(self.tensors[tensor]["dtype"]) == np.uint8:  # integer kernels read it as it is
                    self.bytes[tensor] = held
            self.put(tensor, self.node("Cast", [held], to=TensorProto.FLOAT), self.byte_offsets.get(tensor, 0))
        return self.names[tensor], self.offsets.get(tensor, 0)

    def _input(self, tensor: str) -> str:
        """The graph input that brings ``tensor`` in (its own integer type)."""
        self.inputs.append(tensor)
        return input_name(len(self.inputs) - 1)

    def as_bytes(self, tensor: str, k: int = 0) -> str:
        """``tensor``'s codes minus ``k`` as uint8 (what ONNX Runtime's uint8 kernels read): held
        already, the graph input itself (a uint8 tensor, ``k`` 0), or cast from the float32 codes."""
        if tensor in self.bytes and self.byte_offsets.get(tensor, 0) == k:
            return self.bytes[tensor]
        key = (tensor, k, "bytes")
        if key not in self.shifted:
            if tensor not in self.names and tensor not in self.bytes \
                    and np.dtype(self.tensors[tensor]["dtype"]) == np.uint8 and k == 0:
                self.bytes[tensor] = self._input(tensor)
                return self.bytes[tensor]
            self.shifted[key] = self.node("Cast", [self.centered(tensor, k)], to=TensorProto.UINT8)
        return self.shifted[key]

    def put_bytes(self, tensor: str, name: str, k: int = 0) -> None:
        """``name`` holds 8-bit ``tensor``'s codes minus ``k`` as uint8."""
        self.bytes[tensor] = name
        self.byte_offsets[tensor] = int(k)

    def centered(self, tensor: str, k: int = 0) -> str:
        """``tensor``'s codes minus ``k`` as float32 (exact: integers far below 2^24)."""
        x, off = self.base(tensor)
        if off == k:
            return x
        if (tensor, k) not in self.shifted:
            self.shifted[(tensor, k)] = self.node("Add", [x, self.const(off - k)])
        return self.shifted[(tensor, k)]

    def read(self, tensor: str) -> str:
        """The float32 code tensor of ``tensor`` (its codes themselves)."""
        return self.centered(tensor, 0)

    def put(self, tensor: str, name: str, offset: int = 0) -> None:
        """``name`` holds ``tensor``'s codes minus ``offset``."""
        self.names[tensor] = name
        self.offsets[tensor] = int(offset)

    def float_bytes(self, tensors: list[str]) -> int:
        """The bytes of ``tensors`` as float32 values: a bound on what this graph holds for them
        (codes held as bytes take a quarter)."""
        return 4 * sum(int(np.prod(self.tensors[t]["shape"], dtype=np.int64)) for t in tensors)

    def mark(self) -> tuple:
        return (len(self.nodes), len(self.inits), len(self.inputs), self.count,
                *(dict(d) for d in (self.names, self.tables, self.offsets, self.shifted, self.pads, self.bytes,
                                    self.byte_offsets, self.arrays, self.shared, self.views, self.perm)))

    def clear(self) -> None:
        """Drop what only writing the graph needed: its nodes, initialisers, tables and arrays.

        Called once :meth:`model` has put them into a protobuf and its external arrays: until the
        graph is dropped by its builder, they would stay resident through ONNX Runtime's creation
        of the session, the load's high-water mark (docs/runtime-measurements.md, "Peak memory")."""
        self.nodes, self.inits, self.arrays, self.shared = [], [], {}, {}
        self.tables, self.kernel_tables, self.shifted, self.pads, self.views = {}, {}, {}, {}, {}

    def rollback(self, mark: tuple) -> None:
        (n, i, k, self.count, self.names, self.tables, self.offsets, self.shifted, self.pads, self.bytes,
         self.byte_offsets, self.arrays, self.shared, self.views, self.perm) = mark
        del self.nodes[n:], self.inits[i:], self.inputs[k:]

    def model(self, outputs: list[onnx.ValueInfoProto], extra_nodes: list = (), extra_inits: list = ()
              ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The ONNX model of this graph's nodes that ``outputs`` depend on and the arrays of its
        external initialisers (the argument ``external`` of ``ort_session.open_session``).
        ``extra_nodes`` and ``extra_inits`` come after the graph's own: the steps that turn held
        tensors into outputs."""
        nodes, inits = live(list(self.nodes) + list(extra_nodes), list(self.inits) + list(extra_inits),
                            [o.name for o in outputs])
        graph = helper.make_graph(
            nodes, "fused_run",
            [helper.make_tensor_value_info(input_name(k), elem_type(self.tensors[t]["dtype"]), self.tensors[t]["shape"])
             for k, t in enumerate(self.inputs)], outputs, inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS])
        model.ir_version = 8
        return model, {t.name: self.arrays[t.name] for t in inits if t.name in self.arrays}


#: The opsets of a fused run's model (:meth:`Graph.model`).
OPSETS = (("", 18), (MS_DOMAIN, 1))


def external_stub(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initialiser protobuf of ``array``'s name, type and shape whose data is external
    (:data:`EXTERNAL_LOCATION`): ONNX Runtime takes the data from the session options."""
    t = onnx.TensorProto(name=name, data_type=elem_type(array.dtype), dims=array.shape,
                         data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", EXTERNAL_LOCATION), ("offset", "0"), ("length", str(array.nbytes))):
        t.external_data.add(key=key, value=value)
    return t


def live(nodes: list, inits: list, outputs: list[str]) -> tuple[list, list]:
    """The nodes and initialisers ``outputs`` depend on: a table composed into a later one
    (``fused_tables.as_table``) is computed only where something else still reads it (dump mode)."""
    need, keep = set(outputs), []
    for n in reversed(nodes):
        if need.intersection(n.output):
            keep.append(n)
            need.update(i for i in n.input if i)
    return keep[::-1], [t for t in inits if t.name in need]


def elem_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def input_name(k: int) -> str:
    return f"in{k}"


def code_range(dtype: str) -> tuple[int, int]:
    dt = np.dtype(dtype)
    if dt.kind not in "iu" or dt.itemsize > 2:
        raise NotFusable(f"{dt} codes")
    return nm.qrange(dt.itemsize * 8, dt.kind == "i")


def const_codes(codes: np.ndarray, batch: int) -> np.ndarray:
    """A constant part's codes (a concatenation's, ``kernels.prepare_concat``) as int64, its first
    axis broadcast to ``batch`` as that kernel broadcasts it over the frame's batch."""
    codes = np.asarray(codes, np.int64)
    return np.broadcast_to(codes, (batch, *codes.shape[1:]))


def code_reach(dtype: str, zp) -> int:
    """Largest ``|q - zp|`` of a tensor's codes."""
    lo, hi = code_range(dtype)
    z = np.abs(np.asarray(zp, np.int64))
    return int(np.max(np.maximum(np.abs(lo - z), np.abs(hi - z))))


def code_span(g: Graph, tensor: str, dtype: str, zp: int) -> tuple[int, int]:
    """``(zp - lowest, highest - zp)``: how far ``tensor``'s codes reach below and above its (scalar)
    zero point ``zp``: the range of ``dtype``, or of the codes of its table where this graph
    computes it as a function of another 8-bit tensor (``Graph.tables``, ``Graph.kernel_tables``:
    the table holds its codes for every source code, so no code lies outside it).

    Why: a convolution's accumulators lie within ``bias - below * sum(w+) - above * sum|w-| ..
    bias + above * sum(w+) + below * sum|w-|`` (``fused_fixed.FixedPoint.of_layer``); after a
    hard-swish (codes -10..127 on PP-OCRv4 rec's bernoulli2 layers, zero point 0) that is about half
    the range ``code_reach`` gives on both sides, and a fixed-point multiplier is then proved over
    half as many steps (fewer channels need fix channels, ``fused_fixconv``)."""
    lo, hi = code_range(dtype)
    for known in (g.tables.get(tensor), g.kernel_tables.get(tensor)):
        if known is not None and np.size(known[1]):
            lo, hi = max(lo, int(np.min(known[1]))), min(hi, int(np.max(known[1])))
    return max(int(zp) - lo, 0), max(hi - int(zp), 0)


def signed_sums(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum of the positive weights, sum of |negative weights|)`` per output channel (the first
    axis), in float64 as :func:`abs_sums`."""
    flat = np.asarray(w).reshape(w.shape[0], -1).astype(np.float64)
    return np.maximum(flat, 0).sum(axis=1), np.maximum(-flat, 0).sum(axis=1)


def channel(value, n: int) -> np.ndarray:
    """A scalar or per-channel attribute as one value per output channel."""
    a = np.asarray(value)
    return np.full(n, a) if a.ndim == 0 else a.reshape(-1)


def abs_sums(w: np.ndarray) -> np.ndarray:
    """``sum |w|`` per output channel (the first axis), summed in float64: exact for the float32
    weights here (integers times a power of two), where a float32 sum of a long row would round."""
    return np.abs(w).reshape(w.shape[0], -1).sum(axis=1, dtype=np.float64)


def clamp_bounds(ep: dict) -> tuple[int, int]:
    """The saturation range of an int epilogue, with its fused Relu/Clip clamps (as ``make_epilogue``)."""
    lo, hi = nm.qrange(*out_type(ep))
    for a, b in ep.get("clamps", []):
        lo, hi = min(max(lo, a), hi), max(min(hi, b), lo)
    return lo, hi


def round_and_clip(g: Graph, v: str, ep: dict, lo: int, hi: int, *, double: bool) -> tuple[str, int]:
    """Tie rule (``numerics.rounding_as_onnx``) and saturation of ``v``, back to float32; centred:
    ``(codes minus the zero point, zero point)``, the saturation range moved by it."""
    recipe = nm.rounding_as_onnx(ep["round"])
    if recipe is None:
        raise NotFusable(f"tie rule {ep['round']}")
    offset, op = recipe
    dt = np.float64 if double else np.float32
    if offset:
        v = g.node("Add", [v, g.const(offset, dt)])
    v, zp = centred_clip(g, g.node(op, [v]), ep["zp"], lo, hi, dt)
    return (g.node("Cast", [v], to=TensorProto.FLOAT) if double else v), zp


def centred_clip(g: Graph, v: str, zp, lo: int, hi: int, dt) -> tuple[str, int]:
    """Saturation of rounded values ``v`` (codes minus ``zp``) into ``lo..hi``: ``(tensor, offset)``.
    A per-channel zero point is added (the offsets are scalars)."""
    if np.ndim(zp):
        v = g.node("Add", [v, g.const(zp, dt)])
        zp = 0
    zp = int(zp)
    return g.node("Clip", [v, g.const(lo - zp, dt), g.const(hi - zp, dt)]), zp


def round_float(g: Graph, v: str, ep: dict, lo: int, hi: int, *, doubled: bool = False) -> tuple[str, int]:
    """``numerics.round_values`` of float32 ``v`` with ``ep``'s tie rule, saturated into
    ``lo..hi``: centred ``(tensor, zero point)``.  ``half_up`` and ``half_down`` are
    ``numerics.rounding_by_doubling``, all in float32 (the addition of ``rounding_as_onnx``'s
    half needed float64: two casts and three passes over eight-byte values); ``doubled``: ``v``
    holds twice the value already (:func:`round_scaled` folded the doubling into a constant)."""
    halves = nm.rounding_by_doubling(ep["round"])
    if halves is None:  # half_even: Round itself; std_round: NotFusable
        return round_and_clip(g, v, ep, lo, hi, double=False)
    inner, outer = halves
    if not doubled:
        v = g.node("Mul", [v, g.const(np.float32(2))])
    v = g.node(outer, [g.node("Mul", [g.node(inner, [v]), g.const(np.float32(0.5))])])
    return centred_clip(g, v, ep["zp"], lo, hi, np.float32)


def round_scaled(g: Graph, x: str, op: str, c, ep: dict, lo: int, hi: int) -> tuple[str, int]:
    """:func:`round_float` of float32 ``op(x, c)``, ``op`` ``Mul`` or ``Div`` by float32 constant ``c``.

    The doubling goes into the constant (``2c``, ``c/2``) where that is exact and stays normal:
    rounding a real number to float32 commutes with doubling it, so ``float32(x * 2c)`` is
    ``2 * float32(x * c)`` (and ``float32(x / (c/2))`` is ``2 * float32(x / c)``) except where the
    result overflows, which saturates either way, or is subnormal, where the two differ in the
    last bit of a number that rounds to zero either way, sign included."""
    c = np.asarray(c, np.float32)
    if nm.rounding_by_doubling(ep["round"]) is not None:
        with np.errstate(over="ignore"):  # an infinite 2c keeps the Mul by 2
            c2 = c * np.float32(2) if op == "Mul" else c / np.float32(2)
        tiny = np.finfo(np.float32).tiny
        if np.all(np.isfinite(c2)) and np.all((c == 0) | ((np.abs(c) >= tiny) & (np.abs(c2) >= tiny))):
            return round_float(g, g.node(op, [x, g.const(c2)]), ep, lo, hi, doubled=True)
    return round_float(g, g.node(op, [x, g.const(c)]), ep, lo, hi)


def dequantized(g: Graph, x: str, scale: np.ndarray, *, signed_zero: bool) -> str:
    """``x * scale`` of the float32 codes ``x`` (minus their zero point): ``numerics.dequantize``.

    ``signed_zero``: ``x`` may hold ``-0.0`` (a rounding step's ``Ceil(-0.5)`` or ``Round(-0.3)``) and
    the product leaves the run, where ``-0.0 * scale`` is ``-0.0`` but the kernels'
    ``float32(q - zp) * scale`` is ``+0.0`` (an EfficientFormer-style net and MTCNN RNet on B4096:
    outputs equal to ``Session(fuse=False)`` by ``==`` differed in the sign of their zeros).  The
    product is then ``+0.0 - x * (-scale)``: the same value for every other code (negating the scale
    and the difference are exact) and ``+0.0`` for either zero; one pass more, over the output only.
    Not ``y + 0``, which ONNX Runtime's ``NoopElimination`` removes (``0 + y`` too, where ``y`` is not a
    graph output), and not through int32 (``Cast``, ``Cast``, ``Mul``: two passes more, and a cast of a
    cast)."""
    scale = np.asarray(scale, np.float32)
    if not signed_zero:
        return g.node("Mul", [x, g.const(scale)])
    return g.node("Sub", [g.scalar(0.0), g.node("Mul", [x, g.const(-scale)])])


def quantize_value(g: Graph, v: str, scale, ep: dict, lo: int, hi: int) -> tuple[str, int]:
    """``numerics.quantize`` of float32 ``v``: the float32 division by ``scale``, then
    :func:`round_float`."""
    return round_scaled(g, v, "Div", np.float32(scale), ep, lo, hi)


#: The ONNX type of a table's index (``lookup``): the int32 a ``Clip`` of ``ConvInteger``'s accumulator
#: is already, and half the bytes of the int64 that ``ArrayFeatureExtractor`` wanted.
INDEX_TYPE = TensorProto.INT32


def gather(g: Graph, index: str, entries: str) -> str:
    """``entries[index]`` in ``index``'s shape (``entries``: a 1-D constant of ``n`` values;
    ``index``: an :data:`INDEX_TYPE` tensor in ``-n..n-1``, a negative index counting from the end).

    Written as ``GatherElements`` on the flattened index: ONNX Runtime runs it as a copy loop on
    int32 indices (a 240x12x80 index into 22,334 entries: 0.47 ms, against 0.79 ms for the int64
    cast and ``ai.onnx.ml.ArrayFeatureExtractor`` this replaces, and 2.7 ms for ``Gather``, which
    spends an index division per element), for entries of any type, bytes included."""
    row = g.node("GatherElements", [entries, g.node("Reshape", [index, g.const([-1], np.int64)])], axis=0)
    return g.node("Reshape", [row, g.node("Shape", [index])])


#: The integer types a table's entries are stored in, narrowest first (:func:`lookup`).
NARROW_ENTRIES = (np.int8, np.uint8, np.int16, np.uint16)


def lookup(g: Graph, index: str, table: np.ndarray, zp: int, dtype=np.float32, out: str | None = None) -> str:
    """``table[index]`` centred on ``zp`` (:func:`gather`): float32 codes, or with ``dtype``
    uint8 the bytes an integer kernel reads (``zp`` then the lowest code).

    ``out``: the manifest tensor the lookup makes.  Where its table has at least as many entries as
    it has elements, float32 codes are looked up in the narrowest integer type of
    :data:`NARROW_ENTRIES` that holds every entry and cast to float32 after the copy: the entries
    are integers, so the cast is exact, and ONNX Runtime holds one or two bytes an entry instead
    of four for the session's life (PP-OCR cls on a DPU: accumulator tables of up to 38,515
    entries for tensors of 18,432).  The cast is one more pass over the looked-up tensor every
    frame, so a table smaller than its tensor (PP-OCRv4 rec's 11,169 entries for 230,400
    elements) keeps float32 entries."""
    entries = np.asarray(table, np.int64).reshape(-1) - zp
    if np.dtype(dtype) == np.float32 and out is not None and entries.size \
            and entries.size >= int(np.prod(g.tensors[out]["shape"])):
        narrow = next((t for t in NARROW_ENTRIES
                       if np.iinfo(t).min <= entries.min() and entries.max() <= np.iinfo(t).max), None)
        if narrow is not None:
            return g.node("Cast", [gather(g, index, g.const(entries, narrow))], to=TensorProto.FLOAT)
    return gather(g, index, g.const(entries, dtype))


def rows_as_conv(g: Graph, shape: list[int], n: int, out_shape: list[int]
                 ) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """A fully connected layer ``x (..., K) @ w (K, N)`` as a 1x1 convolution: ``(to_rows,
    back)``, which view ``x`` of ``shape`` as ``(1, K, rows, 1)`` and put the ``(1, N, rows, 1)``
    result back in ``out_shape``.

    A single row (a classifier at batch 1) is the same bytes in either orientation, so it is one
    ``Reshape`` each way: no ``Transpose`` node, whose fixed cost per run is most of such a
    layer's outside its kernel."""
    k, rows = shape[-1], int(np.prod(shape[:-1]))

    def to_rows(v: str) -> str:
        if rows > 1:
            v = g.node("Transpose", [g.node("Reshape", [v, g.const([rows, k], np.int64)])], perm=[1, 0])
        return g.node("Reshape", [v, g.const([1, k, rows, 1], np.int64)])

    def back(y: str) -> str:
        if rows > 1:
            y = g.node("Transpose", [g.node("Reshape", [y, g.const([n, rows], np.int64)])], perm=[1, 0])
        return g.node("Reshape", [y, g.const(out_shape, np.int64)])

    return to_rows, back


def rows_channels_last(g: Graph, shape: list[int], n: int, out_shape: list[int]
                       ) -> tuple[Callable[[str], str], Callable[[str], str]]:
    """A fully connected layer ``x (..., K) @ w (K, N)`` as a channels-last 1x1 convolution
    (``com.microsoft.QLinearConv``, ``channels_last=1``): ``(to_rows, back)``, which view ``x`` of
    ``shape`` as ``(1, rows, 1, K)`` and the ``(1, rows, 1, N)`` result as ``out_shape``.

    Row-major rows of ``K`` values are already that layout, so each way is one ``Reshape`` for any
    number of rows, and none between two such layers (``Graph.views``).  The channels-first form
    (:func:`rows_as_conv`) gets ONNX Runtime's layout pass, which runs its ``QLinearConv``
    channels-last anyway and puts a ``Transpose`` on either side of each such layer: the same
    kernel, and per frame the fixed cost of those nodes."""
    rows = int(np.prod(shape[:-1]))
    view = [1, rows, 1, shape[-1]]

    def to_rows(v: str) -> str:
        held = g.views.get(v)
        if held is not None and held[1] == view:
            return held[0]
        return g.node("Reshape", [v, g.const(view, np.int64)])

    def back(y: str) -> str:
        out = g.node("Reshape", [y, g.const(out_shape, np.int64)])
        g.views[out] = (y, [1, rows, 1, n])
        return out

    return to_rows, back


def slice_node(g: Graph, x: str, slices: list) -> str:
    """ONNX ``Slice`` of ``x`` by ``[start, end, step]`` per axis."""
    s = np.asarray(slices, np.int64)
    return g.node("Slice", [x, g.const(s[:, 0], np.int64), g.const(s[:, 1], np.int64),
                            g.const(np.arange(len(s)), np.int64), g.const(s[:, 2], np.int64)])
