"""How a quantize step is written into ``quantized_model.onnx`` (the quantizer/compiler contract).

ONNX ``QuantizeLinear`` always rounds half to even.  DPU-class targets round activations half
up, and with power-of-two scales exact ties are common, so a plain Q node would not simulate the
chip.  For any tie rule other than ``half_even`` npuflow therefore writes a *model-local ONNX
function* in the domain :data:`DOMAIN`, named ``Quantize_<mode>_<dtype>``, whose body uses only
standard ops (``Div``, ``Floor``, ``Sub``, ``GreaterOrEqual``, ``Where``, ``Clip``, ``Cast``).  Plain ONNX Runtime runs it
(functions are inlined when the session is created) and computes exactly
:func:`npuflow.numerics.quantize`.  Its signature matches ``QuantizeLinear``:
``(x, y_scale, y_zero_point) -> y``, per tensor.

8-bit ``half_even`` steps stay standard ``QuantizeLinear`` (see :func:`uses_standard_quantize`;
int16 ``QuantizeLinear`` needs opset 21, so 16-bit steps are always functions); the matching
``DequantizeLinear`` is always standard.  ``plain_qdq=True`` exports (for other runtimes) replace every function call with
``QuantizeLinear``, which differs from the chip on exact ties only.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from .numerics import RoundMode, qrange

DOMAIN = "ai.npuflow"
DOMAIN_VERSION = 1
#: ``doc_string`` of a quantize step whose tensor comes from float (a graph input, or a node that
#: is not quantized: the CPU -> accelerator boundary).  Structure alone cannot tell such a
#: producer from a quantized one, and precision edits must not treat it as integer.
FLOAT_PRODUCER_DOC = "npuflow: float producer"

_DTYPES = {
    "int8": (TensorProto.INT8, 8, True),
    "uint8": (TensorProto.UINT8, 8, False),
    "int16": (TensorProto.INT16, 16, True),
    "uint16": (TensorProto.UINT16, 16, False),
}


def function_name(mode: RoundMode | str, dtype: str) -> str:
    """Name of the function implementing quantization with ``mode`` into ``dtype``."""
    return f"Quantize_{RoundMode(mode).value}_{dtype}"


def parse_function_name(name: str) -> tuple[RoundMode, str] | None:
    """Inverse of :func:`function_name`; ``None`` for anything else."""
    if not name.startswith("Quantize_"):
        return None
    for dtype in _DTYPES:
        suffix = "_" + dtype
        if name.endswith(suffix):
            try:
                return RoundMode(name[len("Quantize_"):-len(suffix)]), dtype
            except ValueError:
                return None
    return None


def uses_standard_quantize(mode: RoundMode | str, dtype: str) -> bool:
    """Whether a quantize step is written as plain ``QuantizeLinear`` rather than a function."""
    return RoundMode(mode) is RoundMode.HALF_EVEN and dtype in ("int8", "uint8")


def _const(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.FLOAT, [], [value])
    )


def _half_up(v: str, out: str) -> list[onnx.NodeProto]:
    """``numerics.round_values``' half up as ONNX nodes: ``floor(v)`` plus one where the exact
    fraction ``v - floor(v)`` is at least one half.  ``Floor(v + 0.5)`` is not the same in
    float32: ``0.49999997 + 0.5`` rounds to 1."""
    return [
        helper.make_node("Floor", [v], [f"{v}_lo"]),
        helper.make_node("Sub", [v, f"{v}_lo"], [f"{v}_fr"]),
        helper.make_node("GreaterOrEqual", [f"{v}_fr", "half"], [f"{v}_up"]),
        helper.make_node("Cast", [f"{v}_up"], [f"{v}_upf"], to=TensorProto.FLOAT),
        helper.make_node("Add", [f"{v}_lo", f"{v}_upf"], [out]),
    ]


def make_quantize_function(mode: RoundMode | str, dtype: str, opset: int = 13) -> onnx.FunctionProto:
    """A FunctionProto computing ``clip(round_mode(x / scale) + zp, qmin, qmax)`` cast to ``dtype``."""
    mode = RoundMode(mode)
    elem, bits, signed = _DTYPES[dtype]
    qmin, qmax = qrange(bits, signed)
    nodes = [
        helper.make_node("Div", ["x", "y_scale"], ["v"]),
        _const("half", 0.5),
        _const("qmin", float(qmin)),
        _const("qmax", float(qmax)),
    ]
    if mode is RoundMode.HALF_UP:
        nodes += _half_up("v", "r")
    elif mode is RoundMode.HALF_DOWN:  # half up of -v, negated
        nodes += [helper.make_node("Neg", ["v"], ["nv"]), *_half_up("nv", "nr"), helper.make_node("Neg", ["nr"], ["r"])]
    elif mode is RoundMode.STD_ROUND:  # half up of |v|, with v's sign
        nodes += [
            helper.make_node("Abs", ["v"], ["a"]),
            *_half_up("a", "ra"),
            helper.make_node("Neg", ["ra"], ["nra"]),
            _const("zero", 0.0),
            helper.make_node("Less", ["v", "zero"], ["neg"]),
            helper.make_node("Where", ["neg", "nra", "ra"], ["r"]),
        ]
    else:
        nodes += [helper.make_node("Round", ["v"], ["r"])]
    nodes += [
        helper.make_node("Cast", ["y_zero_point"], ["zp_f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["r", "zp_f"], ["rz"]),
        helper.make_node("Clip", ["rz", "qmin", "qmax"], ["c"]),
        helper.make_node("Cast", ["c"], ["y"], to=elem),
    ]
    return helper.make_function(
        DOMAIN,
        function_name(mode, dtype),
        ["x", "y_scale", "y_zero_point"],
        ["y"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
    )


def ensure_quantize_function(model: onnx.ModelProto, mode: RoundMode | str, dtype: str) -> str:
    """Add the function for ``(mode, dtype)`` to ``model`` once; return the op type to call."""
    name = function_name(mode, dtype)
    if not any(f.domain == DOMAIN and f.name == name for f in model.functions):
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        model.functions.append(make_quantize_function(mode, dtype, opset))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return name
