"""Float-scale ops of a bernoulli2 (int8 codes, fixed-point convolutions) fused run on ONNX
Runtime's 8-bit kernels where a load-time check proves them exact (issue 19): an SE block's
product and an add of two dequantized operands as ``QLinearMul``/``QLinearAdd`` on the bytes
(``fused_pairs.dequantized``), a hard-swish byte table as ``DequantizeLinear -> HardSwish ->
QuantizeLinear`` with the zero points moved by 128 (``fused_tables.float_form``), the operands of
the float adds and products left as ``DequantizeLinear`` of their bytes (``fused._dequantized_operand``),
a global average summing the held bytes (``fused._code_sums``).  Real PP-OCR cls frames: outputs equal the kernels
of ``numerics`` (``fuse=False``) bit for bit, with the checks on and with them refusing."""

from __future__ import annotations

import collections

import numpy as np

import npuflow
from npuflow import numerics as nm
from npuflow.runtime import fused, fused_pairs, fused_qlinear, fused_tables
from tests.unit.test_runtime_hswish_float import SHAPE, _build, _frames


def _ops(session: npuflow.Session) -> tuple[collections.Counter, dict]:
    """Op counts of ``session``'s fused graph, and each node's writer by output name."""
    run = next(it for ex in session._executors if hasattr(ex, "plan") for it in ex.plan.items
               if isinstance(it, fused.FusedRun))
    nodes = run.graph().nodes
    return collections.Counter(n.op_type for n in nodes), {o: n for n in nodes for o in n.output}


def _equal_kernels(session: npuflow.Session, compiled) -> None:
    ref = npuflow.Session(compiled, fuse=False)
    frames = _frames(3, 1) + [{"x": np.full(SHAPE, v, np.float32)} for v in (-50.0, 50.0)]  # both ends saturate
    for x in frames:
        a, b = session.run(x), ref.run(x)
        for k in a:
            assert np.array_equal(a[k], b[k]), (k, np.abs(a[k].astype(np.float64) - b[k]).max())


def test_cls_bernoulli2_float_ops_on_integer_kernels_equal_the_kernels():
    cls = _build("bernoulli2")
    session = npuflow.Session(cls["compiled"])
    _equal_kernels(session, cls["compiled"])
    ops, writer = _ops(session)
    # 17 of the 18 hard-swish tables (the one a max pooling reads stays a table), the 9 SE blocks'
    # products and both adds; before: none (every one a table or the float form)
    assert ops["HardSwish"] == 17 and ops["QLinearMul"] == 9 and ops["QLinearAdd"] == 2, ops
    # the hard-swish tables' 17 and 10 operands of the float eltwise ops, read from the bytes
    # (2 of them the bytes of an earlier float add's QuantizeLinear)
    dq = [n for n in writer.values() if n.op_type == "DequantizeLinear"]
    assert len(dq) == 27 and all(writer[n.input[0]].op_type != "Cast" for n in dq), ops
    # the 5 float adds (a Sum of two DequantizeLinear, which ONNX Runtime does not fuse into a
    # QLinearAdd: the frames above differ where it does) and the 10 SE pools end in one
    # QuantizeLinear each (fused._put_quantized), not a division, rounding and clamp (before: 15
    # more Round; 1 left, the int8 input's: the other, a ConvInteger layer's float32 requantisation,
    # went when the compiler gave its channels multipliers with a float32 form, session 34)
    q = collections.Counter(writer[n.input[0]].op_type for n in writer.values() if n.op_type == "QuantizeLinear")
    assert q == {"HardSwish": 17, "Div": 10, "Sum": 5} and ops["Round"] == 1 and not ops["ConvInteger"], (q, ops)
    # every SE pool sums the bytes' float view itself (no centring Add over the whole map first)
    sums = [n for n in writer.values() if n.op_type == "ReduceSum"]
    assert len(sums) == 10 and all(writer[n.input[0]].op_type == "Cast" for n in sums), \
        [writer[n.input[0]].op_type for n in sums]


def test_refused_checks_keep_the_float_forms(monkeypatch):
    cls = _build("bernoulli2")
    monkeypatch.setattr(fused_pairs, "dequantized_pairs_match", lambda *args: False)
    monkeypatch.setattr(fused_tables, "_float_form_matches", lambda *args: False)
    monkeypatch.setattr(fused_qlinear, "_dequantize_matches", lambda *args: False)
    session = npuflow.Session(cls["compiled"])
    _equal_kernels(session, cls["compiled"])
    ops, _ = _ops(session)
    assert not ops["HardSwish"] and not ops["QLinearMul"] and not ops["QLinearAdd"] and not ops["DequantizeLinear"], ops


def test_known_pair_verdicts_compute_no_reference_codes(monkeypatch, tmp_path):
    # the pair checks' verdicts kept on disk (a fresh cache), none yet in this process
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    monkeypatch.delenv("NPUFLOW_ENABLE_CACHE", raising=False)
    monkeypatch.setattr(fused_pairs, "_VERDICTS", {})
    cls = _build("bernoulli2")
    eltwise, calls = fused_pairs.KERNELS["eltwise"], []

    def counted(attrs, blobs):
        calls.append(attrs["mode"])
        return eltwise(attrs, blobs)

    monkeypatch.setattr(fused_pairs, "KERNELS", {"eltwise": counted})
    first = _ops(npuflow.Session(cls["compiled"]))[0]
    # every float add and product checked once: 65,536 (or 256 x 256 broadcast) reference codes each
    assert len(calls) >= first["QLinearMul"] + first["QLinearAdd"] == 11, (calls, first)

    def refused(attrs, blobs):
        raise AssertionError("a known verdict computed its reference codes")

    # a second load (a new process's: no verdict in memory) reads the verdicts, computes no codes
    monkeypatch.setattr(fused_pairs, "_VERDICTS", {})
    monkeypatch.setattr(fused_pairs, "KERNELS", {"eltwise": refused})
    session = npuflow.Session(cls["compiled"])
    assert _ops(session)[0] == first
    _equal_kernels(session, cls["compiled"])


def _float_add(sa: float, sb: float, sc: float) -> bytes:
    """``kernels._float_eltwise``'s add of two int8 operands (zero points 0, bernoulli2's ties to
    even) on every pair of codes, as bytes (codes + 128) in ``fused_pairs.ALL_PAIRS``' layout."""
    a, b = (np.float32(p - 128) * np.float32(s) for p, s in zip(fused_pairs.ALL_PAIRS, (sa, sb)))
    codes = nm.quantize(a + b, sc, 0, bits=8, signed=True, round_mode=nm.RoundMode.HALF_EVEN)
    return (codes.astype(np.int64) + 128).astype(np.uint8).tobytes()


def test_pair_check_refuses_an_add_whose_float_order_differs_on_ties():
    check = fused_pairs.kernel_pairs_match  # the check itself (its verdicts are cached by the caller)
    # PP-OCRv4 det's FPN: two operands of one scale, the output twice it: the kernel's float32
    # (a * s + b * s) / 2s lands off the ties that QLinearAdd's exact 0.5 ratios hit (6,842 pairs)
    sa = sb = 4.181102275848389
    sc = 8.362204551696777
    assert not check("QLinearAdd", sa, sb, sc, 128, 128, 128, None, _float_add(sa, sb, sc))
    # another of its adds, equal on all 65,536 pairs
    sa, sb, sc = 0.18208661675453186, 0.16584645211696625, 0.33809053897857666
    assert check("QLinearAdd", sa, sb, sc, 128, 128, 128, None, _float_add(sa, sb, sc))
