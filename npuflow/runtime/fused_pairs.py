"""Every-pair checks of ONNX Runtime's ``com.microsoft`` eltwise kernels on 8-bit codes, and the
float-scale eltwise ops (bernoulli2) written as those kernels where the checks pass.

A ``QLinearAdd`` / ``QLinearMul`` stands in for an op's own kernel only where it gives the op's
codes on every pair of codes the op can meet (:data:`ALL_PAIRS`, or :func:`broadcast_pairs` for
a per-channel operand), with the op's scales and zero points: a float32 rounding that differs on
one pair in a million escapes any sample.  The checks run once per op's constants and are kept
on disk (``ort_verdicts.persistent_check`` / ``keyed_verdict``): a load whose checks were made
before opens none of their sessions, and computes none of their reference codes
(:func:`dequantized_pairs_match`).  An add whose ``QLinearAdd`` check fails is written as the
arithmetic of ``numerics.qlinear_add`` in float operations, checked the same way
(:func:`qlinear_add_float`), so that it does not cut its fused run.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from .. import ort_kernels, ort_verdicts
from ..compiler.manifest_verdicts import source_digest
from ..ort_kernels import MS_DOMAIN, probe_session
from .fused_graph import Graph
from .kernels import KERNELS

#: Every pair of uint8 codes, as two [1, 1, 256, 256] operands.
ALL_PAIRS = tuple(v.reshape(1, 1, 256, 256) for v in np.meshgrid(np.arange(256), np.arange(256), indexing="ij"))

#: The sources the float-scale eltwise kernel's codes come from (``kernels._float_eltwise``): a
#: change of one gives :func:`dequantized_pairs_match` other verdict keys.
REFERENCE_SOURCES = ("runtime/kernels.py", "runtime/epilogues.py", "numerics.py")


def on_all_pairs(op_type: str, inputs: list[str], inits: dict[str, np.ndarray],
                 pairs: tuple[np.ndarray, np.ndarray] = ALL_PAIRS) -> np.ndarray:
    """ONNX Runtime's ``com.microsoft`` kernel ``op_type`` on ``pairs`` (graph inputs ``a`` and
    ``b``, :data:`ALL_PAIRS` or :func:`broadcast_pairs`; its other ``inputs`` are the constants
    ``inits``)."""
    node = helper.make_node(op_type, inputs, ["y"], domain=MS_DOMAIN)
    ins = [helper.make_tensor_value_info(n, TensorProto.UINT8, v.shape) for n, v in zip(("a", "b"), pairs)]
    sess = probe_session([node], ins, [numpy_helper.from_array(v, n) for n, v in inits.items()])
    return sess.run(None, {"a": pairs[0].astype(np.uint8), "b": pairs[1].astype(np.uint8)})[0]


def broadcast_pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of codes with operand ``k`` one value per row (``[256, 1]``) and the other a
    row of all codes (``[256, 256]``): the span-by-span path ONNX Runtime's broadcasting takes
    for a ``[1, C, H, W]`` tensor and a ``[1, C, 1, 1]`` one, which its kernels may compute
    otherwise than two tensors of one shape."""
    rows, full = np.arange(256).reshape(256, 1), np.tile(np.arange(256), (256, 1))
    return (rows, full) if k == 0 else (full, rows)


def per_channel_operand(shape: list[int], shapes: list[list[int]]) -> int | None | bool:
    """Which operand of a product holds one value per channel of each image (``[N, C, 1, ...]``,
    an SE block's scale, at any batch ``N``) while the other has the output's ``shape``; ``None``
    when both have it, ``False`` for any other broadcasting."""
    if all(s == shape for s in shapes):
        return None
    per_channel = [*shape[:2], *[1] * (len(shape) - 2)]
    if len(shape) < 3 or sorted(map(str, shapes)) != sorted(map(str, [shape, per_channel])):
        return False
    return shapes.index(per_channel)


def dequantized(g: Graph, op: dict, op_type: str) -> bool:
    """Write a float-scale eltwise add or product that dequantizes its 8-bit operands
    (``kernels._float_eltwise``: float32 values, combined, the fused chain, the quantize step with
    the target's tie rule; bernoulli2) as ``com.microsoft`` kernel ``op_type`` on bytes (int8 codes
    moved by 128, as ``Graph.as_bytes`` holds them) where that kernel, run at load with the op's
    scales and zero points, gives the op's own kernel's codes on every pair of codes (broadcast as
    the operands are: :func:`dequantized_pairs_match`); say whether it did.

    Why: the float form is a ``Mul`` per operand, the combination, ``Div``, ``Round``, ``Clip`` and
    casts, six to eight passes over the tensor where the kernel makes one (PP-OCRv4 det on
    bernoulli2: 9 of its 10 SE products, 2 of its 11 adds).  Its float32 arithmetic is another order
    of operations (scale ratios, fused multiply-adds), so it differs near some ties: the check
    runs on every pair the op can meet; scales it refuses keep the float form."""
    a, ep = op["attrs"], op["attrs"]["epilogue"]
    mode = {"QLinearAdd": "add", "QLinearMul": "mul"}[op_type]
    if a["mode"] != mode or any("const" in o for o in a["operands"]) or not ort_kernels.exact():
        return False
    names, out = [op["inputs"][o["input"]] for o in a["operands"]], op["outputs"][0]
    dtypes = [np.dtype(g.tensors[t]["dtype"]) for t in (*names, out)]
    if any(d.itemsize != 1 or d.kind not in "iu" for d in dtypes) \
            or any(np.ndim(v) for v in (*a["dequant"], *(o["zp"] for o in a["operands"]), ep["scale"], ep["zp"])):
        return False
    shape = list(g.tensors[out]["shape"])
    broadcast = per_channel_operand(shape, [list(g.tensors[t]["shape"]) for t in names])
    if broadcast is False or (mode == "add" and broadcast is not None):
        return False
    lows = [nm.qrange(8, d.kind == "i")[0] for d in dtypes]  # bytes are codes minus these
    scales = [float(np.float32(s)) for s in (*a["dequant"], ep["scale"])]
    zps = [int(z) - k for z, k in zip((*(o["zp"] for o in a["operands"]), ep["zp"]), lows)]
    if not all(0 <= z <= 255 for z in zps) or not dequantized_pairs_match(op_type, a, dtypes, scales, zps, broadcast):
        return False
    y = g.node(op_type, [g.as_bytes(names[0], lows[0]), g.scalar(scales[0]), g.scalar(zps[0], np.uint8),
                         g.as_bytes(names[1], lows[1]), g.scalar(scales[1]), g.scalar(zps[1], np.uint8),
                         g.scalar(scales[2]), g.scalar(zps[2], np.uint8)], domain=MS_DOMAIN)
    g.put_bytes(out, y, lows[2])
    return True


#: :func:`dequantized_pairs_match`'s verdicts in this process, by key (the disk cache may be off)
_VERDICTS: dict[str, bool] = {}


def dequantized_pairs_match(op_type: str, attrs: dict, dtypes: list[np.dtype], scales: list[float],
                            zps: list[int], broadcast: int | None) -> bool:
    """:func:`kernel_pairs_match` of :func:`dequantized`'s op (eltwise ``attrs``, operand and
    output ``dtypes``) against its own kernel's codes on every pair, the verdict kept under a key
    of what decides it: the attributes, dtypes, scales and zero points, and the reference kernel's
    sources (:data:`REFERENCE_SOURCES`).  Why a key of its own: the kernel's 65,536 reference codes
    (a float eltwise kernel in numpy, 2-4 ms an op) were the check's argument, computed at each
    load only to be hashed where the verdict was cached; keyed by what decides them, a load
    whose verdicts are known computes none (PP-OCRv4 det on bernoulli2: 11 ops)."""
    key = hashlib.sha256(json.dumps(
        [op_type, attrs, [d.str for d in dtypes], scales, zps, broadcast, source_digest(REFERENCE_SOURCES)],
        sort_keys=True, default=lambda v: np.asarray(v).tolist()).encode()).hexdigest()[:32]
    found = _VERDICTS.get(key)
    if found is None:
        found = _VERDICTS[key] = ort_verdicts.keyed_verdict(
            _pairs_match_reference, key, op_type, attrs, dtypes, scales, zps, broadcast)
    return found


def _pairs_match_reference(op_type: str, attrs: dict, dtypes: list[np.dtype], scales: list[float],
                           zps: list[int], broadcast: int | None) -> bool:
    """:func:`kernel_pairs_match` against the op's own kernel (``kernels.KERNELS["eltwise"]``)
    run on every pair of codes."""
    lows = [nm.qrange(8, d.kind == "i")[0] for d in dtypes]
    pairs = ALL_PAIRS if broadcast is None else broadcast_pairs(broadcast)
    want = KERNELS["eltwise"](attrs, {})([(p + k).astype(d) for p, k, d in zip(pairs, lows, dtypes)])[0]
    want = (np.asarray(want, np.int64) - lows[2]).astype(np.uint8).tobytes()  # 8-bit codes: 0..255
    return kernel_pairs_match(op_type, *scales, *zps, broadcast, want)


def kernel_pairs_match(op_type: str, sa: float, sb: float, sc: float, za: int, zb: int, zc: int,
                       broadcast: int | None, want: bytes) -> bool:
    """Whether ``com.microsoft`` kernel ``op_type`` with these float32 scales and uint8 zero points
    gives the uint8 ``want`` (a byte a pair) on every pair of codes (:data:`ALL_PAIRS`, or
    :func:`broadcast_pairs` of ``broadcast``)."""
    pairs = ALL_PAIRS if broadcast is None else broadcast_pairs(broadcast)
    got = on_all_pairs(op_type, ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], {
        "sa": np.float32(sa), "za": np.uint8(za), "sb": np.float32(sb), "zb": np.uint8(zb),
        "sc": np.float32(sc), "zc": np.uint8(zc)}, pairs)
    return np.array_equal(got, np.frombuffer(want, np.uint8).reshape(got.shape))


def qlinear_add_operands(g: Graph, op: dict) -> tuple[list[str], str, tuple[float, int, float, int, float, int]] | None:
    """An eltwise add with ``QLinearAdd`` arithmetic (``numerics.qlinear_add``) on two uint8
    tensors of its uint8 output's shape, one scale and zero point each: its operands, its output
    and ``(sa, za, sb, zb, sc, zc)`` (float32 scales as floats); None for any other add."""
    a = op["attrs"]
    spec = a.get("qlinear")
    if spec is None or a["mode"] != "add" or any(spec["scalar"]) or any("const" in o for o in a["operands"]):
        return None
    names = [op["inputs"][o["input"]] for o in a["operands"]]
    out = op["outputs"][0]
    shape = list(g.tensors[out]["shape"])
    if any(np.dtype(d) != np.uint8 for d in (spec["out_dtype"], *(g.tensors[t]["dtype"] for t in (*names, out)))) \
            or any(list(g.tensors[t]["shape"]) != shape for t in (*names, out)):
        return None
    params = [*spec["scales"], *spec["zps"], spec["out_scale"], spec["out_zp"]]
    if any(np.size(v) != 1 for v in params):
        return None
    sa, sb, za, zb, sc, zc = params
    if not all(0 <= int(z) <= 255 for z in (za, zb, zc)):
        return None
    return names, out, (float(np.float32(sa)), int(za), float(np.float32(sb)), int(zb), float(np.float32(sc)), int(zc))


def qlinear_add_float(g: Graph, op: dict) -> bool:
    """Write an add of :func:`qlinear_add_operands` as ``numerics.qlinear_add``'s own arithmetic in
    float operations, where a check on every pair of codes proves ONNX Runtime computes it so
    (:func:`_add_float_matches`); say whether it did.

    Why: where ONNX Runtime's ``QLinearAdd`` rounds some pair otherwise (``fused_qlinear.add``
    refuses it: another CPU's MLAS, or a kernel check that failed), the add would run as its
    numpy kernel and cut the fused run in two (PP-OCR cls on cpu-int8: two fused runs, the kernel
    and the softmax subgraph, three ONNX Runtime calls, where the frame is one call).  MLAS' sum is
    ``round(fma(a, rA, fma(b, rB, fixed)))``; each fused multiply-add is a float64 product and sum
    of float32 values cast to float32, which ONNX Runtime's ``Mul``, ``Add`` and ``Cast`` compute
    in the same IEEE operations as ``numerics``."""
    found = qlinear_add_operands(g, op)
    if found is None:
        return False
    names, out, params = found
    if not _add_float_matches(*params):
        return False
    g.put_bytes(out, _add_float_nodes(g.node, g.scalar, g.as_bytes(names[0]), g.as_bytes(names[1]), params))
    return True


def _add_float_nodes(node, scalar, a: str, b: str, params: tuple) -> str:
    """:func:`qlinear_add_float`'s nodes from uint8 ``a`` and ``b`` to the uint8 codes, written by
    ``node(op_type, inputs, **attrs)`` and ``scalar(value, dtype)`` (a graph's, or a probe's)."""
    ra, rb, fixed = nm.qlinear_add_constants(*params[:2], *params[2:4], *params[4:])

    def fma(x: str, r: np.float32, z: str) -> str:  # float32(x * r + z), the product and sum in float64
        wide = node("Cast", [x], to=TensorProto.DOUBLE)
        return node("Cast", [node("Add", [node("Mul", [wide, scalar(r, np.float64)]), z])], to=TensorProto.FLOAT)

    inner = fma(b, rb, scalar(fixed, np.float64))
    v = fma(a, ra, node("Cast", [inner], to=TensorProto.DOUBLE))
    codes = node("Clip", [node("Round", [v]), scalar(0), scalar(255)])  # ties to even: nm.ONNX_ROUND_MODE
    return node("Cast", [codes], to=TensorProto.UINT8)


@ort_verdicts.persistent_check
def _add_float_matches(sa: float, za: int, sb: float, zb: int, sc: float, zc: int) -> bool:
    """Whether :func:`_add_float_nodes` with these scales and zero points give
    ``numerics.qlinear_add`` (saturated) on every pair of uint8 codes."""
    nodes: list = []
    inits: list = []

    def node(op_type: str, ins: list[str], **attrs) -> str:
        out = f"n{len(nodes)}"
        nodes.append(helper.make_node(op_type, ins, [out], **attrs))
        return out

    def scalar(value, dtype=np.float32) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(np.asarray(value, dtype).reshape(()), name))
        return name

    y = _add_float_nodes(node, scalar, "a", "b", (sa, za, sb, zb, sc, zc))
    nodes.append(helper.make_node("Identity", [y], ["y"]))
    pa, pb = ALL_PAIRS
    ins = [helper.make_tensor_value_info(n, TensorProto.UINT8, v.shape) for n, v in (("a", pa), ("b", pb))]
    got = probe_session(nodes, ins, inits).run(None, {"a": pa.astype(np.uint8), "b": pb.astype(np.uint8)})[0]
    want = np.clip(nm.qlinear_add(pa, sa, za, pb, sb, zb, sc, zc), 0, 255)
    return np.array_equal(got, want)


def constant_operand(g: Graph, op: dict, blobs: dict) -> bool:
    """Write a float-scale eltwise add of an 8-bit tensor and a one-value constant (bernoulli2:
    PP-OCRv4 rec's learnable bias after each hard-swish) as ``com.microsoft.QLinearAdd`` of the
    tensor's bytes and the constant's one byte, where that kernel, run at load on every code in
    ONNX Runtime's vector loop and in its scalar tails (:func:`_constant_matches`), gives the op's
    own kernel's codes; say whether it did.  Only where the tensor is held as bytes written by
    a kernel that is not a table copy (a table of a table is one table: ``fused_tables.as_table``).

    Why: the add is a table of the tensor, and a table of a hard-swish that ONNX Runtime computes
    in float (``fused_tables.float_form``) is composed into one ``GatherElements`` copy loop with
    the layout transposes around it; ONNX Runtime's own plain QDQ run of the model keeps the
    float hard-swish and adds on ``QLinearAdd``, one vector pass that its layout pass moves
    through."""
    a = op["attrs"]
    ep, specs = a.get("epilogue") or {}, a.get("operands", [])
    if a.get("mode") != "add" or "dequant" not in a or ep.get("mode") != "float" or ep.get("chain") \
            or len(specs) != 2 or ["const" in s for s in specs] != [False, True] or not ort_kernels.exact():
        return False
    x, out = op["inputs"][specs[0]["input"]], op["outputs"][0]
    const = np.asarray(blobs[specs[1]["const"]])
    dtypes = [np.dtype(g.tensors[x]["dtype"]), const.dtype, np.dtype(g.tensors[out]["dtype"])]
    if const.size != 1 or any(d.itemsize != 1 or d.kind not in "iu" for d in dtypes) or x not in g.bytes \
            or x in g.names or list(g.tensors[x]["shape"]) != list(g.tensors[out]["shape"]) \
            or any(np.ndim(v) for v in (*a["dequant"], specs[0]["zp"], specs[1]["zp"], ep["scale"], ep["zp"])):
        return False
    writer = next((n for n in reversed(g.nodes) if g.bytes[x] in n.output), None)
    if writer is None or writer.op_type in ("Reshape", "Transpose", "GatherElements"):
        return False  # a table's copy (compose instead) or a graph input
    lows = [nm.qrange(8, d.kind == "i")[0] for d in dtypes]
    scales = [float(np.float32(s)) for s in (*a["dequant"], ep["scale"])]
    zps = [int(z) - k for z, k in zip((specs[0]["zp"], specs[1]["zp"], ep["zp"]), lows)]
    byte = int(const.reshape(-1)[0]) - lows[1]
    if not all(0 <= z <= 255 for z in (*zps, byte)):
        return False
    codes = np.arange(lows[0], lows[0] + 256).astype(dtypes[0])
    table = np.asarray(KERNELS["eltwise"](a, blobs)([codes])[0]).astype(np.int64).reshape(-1) - lows[2]
    if table.size != 256 or not _constant_matches(*scales, *zps, byte, table.tobytes()):
        return False
    y = g.node("QLinearAdd", [g.as_bytes(x, lows[0]), g.scalar(scales[0]), g.scalar(zps[0], np.uint8),
                              g.const(np.array([byte], np.uint8), np.uint8), g.scalar(scales[1]),
                              g.scalar(zps[1], np.uint8), g.scalar(scales[2]), g.scalar(zps[2], np.uint8)],
               domain=MS_DOMAIN)
    g.put_bytes(out, y, lows[2])
    return True


@ort_verdicts.persistent_check
def _constant_matches(sa: float, sb: float, sc: float, za: int, zb: int, zc: int, byte: int, table: bytes) -> bool:
    """Whether ``QLinearAdd`` of uint8 ``a`` and the one-byte constant ``byte`` with these scales and
    zero points gives the int64 bytes ``table`` for every code of ``a``: one run of 16,384 codes
    holding every code at every position modulo 64, and runs of every length 1..65 that together
    hold every code (a tensor, or a thread's block of it, ends in a tail of any length)."""
    node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"], domain=MS_DOMAIN)
    inits = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(sa), "sa"), (np.uint8(za), "za"), (np.array([byte], np.uint8), "b"), (np.float32(sb), "sb"),
        (np.uint8(zb), "zb"), (np.float32(sc), "sc"), (np.uint8(zc), "zc"))]
    session = probe_session([node], [helper.make_tensor_value_info("a", TensorProto.UINT8, ["n"])], inits)
    entries = np.frombuffer(table, np.int64)
    i = np.arange(256 * 64)
    runs = [(i % 256 + i // 256) % 256]
    runs += [(np.arange(n) + start) % 256 for n in range(1, 66) for start in range(0, 256, n)]
    return all(np.array_equal(session.run(None, {"a": r.astype(np.uint8)})[0], entries[r]) for r in runs)
