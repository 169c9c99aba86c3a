"""The two subgraph executors: the integer program (accelerator) and ONNX Runtime (CPU)."""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm
from ..ort_session import open_session
from ..qdq import DOMAIN

from . import fused
from .kernels import KERNELS, Kernel

Dump = Callable[[str, np.ndarray], None]


class IntegerExecutor:
    """Runs one accelerator subgraph's integer program.

    ``run`` executes the program's fused runs (:mod:`.fused`: consecutive ops as one ONNX
    Runtime graph of exact float operations, ``threads`` intra-op threads) and, between them,
    the ops that cannot be fused as their kernels; dump mode runs the same graphs with every
    integer tensor as an output.  ``run_op`` uses the op's kernel, which computes the same codes
    bit for bit (``Session(..., fuse=False)`` runs only kernels).  Kernels are
    prepared on first use and only read while running; each run gets its own arena (the
    compiler's memory plan: kernel outputs are views at planned offsets, reused once dead), so
    concurrent runs from several threads never share mutable state.
    """

    def __init__(self, sg: dict, tensors: dict, blob: Callable[[str], np.ndarray], *,
                 threads: int = 1, fuse: bool = True) -> None:
        self.outputs = list(sg["outputs"])
        self._ops = sg["ops"]
        self._blob = blob
        self._kernels: dict[int, Kernel] = {}
        self._kernel_lock = threading.Lock()
        self.op_index = {op["name"]: k for k, op in enumerate(sg["ops"])}
        self.plan = fused.plan(sg, tensors, blob, threads) if fuse else fused.Plan(list(range(len(self._ops))), {})
        plan = sg["memory"]
        self.arena_bytes = plan["arena_bytes"]
        self.buffers = {}
        for name, b in plan["buffers"].items():
            info = tensors[name]
            dtype = np.dtype(info["dtype"])
            count = int(np.prod(info["shape"]))
            self.buffers[name] = (b["offset"], count, dtype, tuple(info["shape"]))

    def _kernel(self, k: int) -> Kernel:
        """The prepared kernel of op ``k`` (built once, on first use, by whichever thread needs it)."""
        kernel = self._kernels.get(k)
        if kernel is None:
            with self._kernel_lock:
                kernel = self._kernels.get(k)
                if kernel is None:
                    op = self._ops[k]
                    blobs = {role: self._blob(name) for role, name in op["blobs"].items()}
                    kernel = self._kernels[k] = KERNELS[op["op"]](op["attrs"], blobs)
        return kernel

    def run(self, feeds: dict[str, np.ndarray], dump: Dump | None = None) -> dict[str, np.ndarray]:
        arena = np.empty(self.arena_bytes, np.uint8)
        env = dict(feeds)
        for item in self.plan.items:
            if isinstance(item, fused.FusedRun):
                made = item.run(env, dump is not None)
                env.update(made)
                if dump is not None:
                    for name, value in made.items():
                        dump(name, value)
                continue
            op = self._ops[item]
            results = self._kernel(item)([env[i] for i in op["inputs"]])
            for name, value in zip(op["outputs"], results):
                env[name] = value = self._place(arena, name, value)
                if dump is not None:
                    dump(name, value)
        return {o: env[o] for o in self.outputs}

    def run_op(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the one op made from ONNX node ``name`` on ``feeds`` (its input tensors by name).

        The same prepared kernel as the op-by-op run, fed from the caller instead of the arena:
        a layer-wise check (each op on a reference's integer inputs) then sees one op's own
        arithmetic, without differences carried in from the ops before it.
        """
        k = self.op_index[name]
        op = self._ops[k]
        return {o: np.array(v) for o, v in zip(op["outputs"], self._kernel(k)([feeds[i] for i in op["inputs"]]))}

    def _place(self, arena: np.ndarray, name: str, value: np.ndarray) -> np.ndarray:
        """Where ``name`` lives from now on: its planned bytes in the arena, or its own memory.

        Kernels of data-movement ops (Reshape, Flatten, Squeeze, Unsqueeze, Slice, Gather,
        Transpose of unit axes) may return a view of their input.  The plan gives that input's
        bytes to a later tensor once the input is dead, so a tensor outside the plan (a subgraph
        output) that still views the arena would be overwritten by a later op of this subgraph
        before the caller reads it: it gets its own copy instead.
        """
        buf = self.buffers.get(name)
        if buf is not None and value.shape == buf[3] and value.dtype == buf[2]:
            off, count, dtype, shape = buf
            view = arena[off:off + count * dtype.itemsize].view(dtype).reshape(shape)
            np.copyto(view, value)
            return view
        if np.may_share_memory(value, arena):
            return value.copy()
        return value


class OnnxExecutor:
    """Runs one CPU subgraph (plain ONNX with the quantized model's own Q/DQ) on ONNX Runtime.

    The optimisation level follows the model's scales.  With power-of-two scales ONNX Runtime's
    float execution of Q/DQ is exact and is the reference the integer programs equal bit for bit,
    so graph optimisations stop at the basic level (no fusion of Q/DQ into QLinear kernels).
    With float scales the float execution and ORT's default one (QDQ fused into integer
    ``QLinear*`` kernels, what users run) differ by many steps after steep activations (YOLOv8n:
    239 of 268 integer tensors beyond one step); the integer programs follow the default one
    (``numerics.requantize_float``), so CPU subgraphs run at ORT's default level too.  CPU
    subgraphs are small (a few nodes between accelerator parts), so each session runs on one
    thread by default: a thread pool per subgraph costs more in wake-ups than it gains.  A
    subgraph that is one elementwise function of one 8-bit tensor runs as the table this session
    computes for every code (``_as_lookup``; ``lookup=False`` keeps the session).
    """

    def __init__(self, sg: dict, onnx_bytes: bytes, threads: int = 1, lookup: bool = True) -> None:
        model, self.carried = _carry_unexchangeable(onnx.load_from_string(onnx_bytes))
        self.session = open_session(model, level="all" if _float_scaled(model) else "basic", threads=threads,
                                    spinning=threads <= 1)
        self.inputs = list(sg["inputs"])
        self.outputs = list(sg["outputs"])
        self.lookup = _as_lookup(model, self.session) if lookup and not self.carried else None

    def run(self, feeds: dict[str, np.ndarray], dump: Dump | None = None) -> dict[str, np.ndarray]:
        carried = self.carried
        if self.lookup is not None:
            result = {self.outputs[0]: self.lookup(feeds[self.inputs[0]])}
        else:
            ins = {carried[k][0] if k in carried else k: _to_carrier(feeds[k], carried.get(k)) for k in self.inputs}
            values = self.session.run([carried[o][0] if o in carried else o for o in self.outputs], ins)
            result = {o: _from_carrier(v, carried.get(o)) for o, v in zip(self.outputs, values)}
        if dump is not None:
            for name, value in result.items():
                if value.dtype.kind in "iu":
                    dump(name, value)
        return result


#: Standard ops that compute each output element from the same element of their inputs only.
_ELEMENTWISE = {"DequantizeLinear", "QuantizeLinear", "Sigmoid", "Tanh", "Relu", "LeakyRelu", "Elu", "Selu",
                "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "Softplus", "Softsign", "HardSigmoid",
                "HardSwish", "Mish", "Clip", "Add", "Sub", "Mul", "Div", "Pow", "Min", "Max", "Floor", "Ceil",
                "Round", "Sign", "Cast", "Identity", "Where", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                "Equal", "Not", "And", "Or", "Constant"}


def _elementwise(nodes, functions: dict) -> bool:
    for node in nodes:
        if node.domain in ("", "ai.onnx") and node.op_type in _ELEMENTWISE:
            if node.op_type == "Constant" and any(a.t.dims and np.prod(a.t.dims) != 1 for a in node.attribute):
                return False
            continue
        body = functions.get((node.domain, node.op_type))
        if body is None or not _elementwise(body.node, functions):
            return False
    return True


def _as_lookup(model: onnx.ModelProto, session: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray] | None:
    """A CPU subgraph that is one elementwise function of one 8-bit code tensor, as a table.

    YOLOv8n's SiLU on the DPU leaves 58 such subgraphs (``DequantizeLinear -> Sigmoid ->
    quantize step``).  The table is what this very session computes for every code: it is run
    once on an input of the subgraph's shape holding every code many times, and the table is
    kept only if every position holding a code gave the same output (position-independent, as
    an elementwise graph of scalar constants is); the lookup then equals the session's output
    bit for bit, at a fraction of the cost (no float round trip per element).
    """
    graph = model.graph
    inits = list(graph.initializer)
    if len(graph.input) != 1 or len(graph.output) != 1 or any(np.prod(t.dims) != 1 for t in inits):
        return None
    functions = {(f.domain, f.name): f for f in model.functions}
    if not _elementwise(graph.node, functions):
        return None
    vi, vo = graph.input[0].type.tensor_type, graph.output[0].type.tensor_type
    shape = [d.dim_value for d in vi.shape.dim]
    if vi.elem_type not in (TensorProto.INT8, TensorProto.UINT8) or vo.elem_type not in (
            TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16) \
            or not shape or min(shape) < 1 or int(np.prod(shape)) < 4 * 256:
        return None
    dtype = helper.tensor_dtype_to_np_dtype(vi.elem_type)
    info = np.iinfo(dtype)
    x = np.resize(np.arange(info.min, info.max + 1, dtype=np.int64), shape).astype(dtype)
    out = session.run(None, {graph.input[0].name: x})[0]
    if out.shape != x.shape:
        return None
    table = np.empty(256, out.dtype)
    table[x.reshape(-1)[:256].astype(np.int64) - info.min] = out.reshape(-1)[:256]
    if not np.array_equal(table[x.astype(np.int64) - info.min], out):
        return None
    rotated = np.ascontiguousarray(table[(np.arange(256) - info.min) % 256])  # indexed by the code's byte
    return lambda q: np.take(rotated, q.view(np.uint8))  # take: twice as fast as fancy indexing


def _float_scaled(model: onnx.ModelProto) -> bool:
    """Whether some quantize/dequantize step of the model has a scale that is not a power of two."""
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if len(node.input) > 1 and node.input[1] in inits and (
                node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.domain == DOMAIN):
            if nm.fix_pos_of(numpy_helper.to_array(inits[node.input[1]])) is None:
                return True
    return False


def _carriers() -> dict[int, int]:
    """Tensor types ONNX Runtime's Python API cannot exchange as numpy arrays ("No corresponding
    Numpy type", "Numpy_type 259"), each with the type that carries its values exactly across the
    boundary: every type onnx maps to an ``ml_dtypes`` scalar (float8/6/4, int4/int2, bfloat16)."""
    table = {}
    for value in TensorProto.DataType.values():
        if value == TensorProto.UNDEFINED:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(value)
        if dtype.type.__module__.startswith("ml_dtypes"):
            name = dtype.name
            table[value] = (TensorProto.UINT8 if name.startswith("uint") else
                            TensorProto.INT8 if name.startswith("int") else TensorProto.FLOAT)
    return table


_CARRIERS = _carriers()

Carried = dict[str, tuple[str, np.dtype, np.dtype]]  # name -> (carrier name, real dtype, carrier dtype)


def _carry_unexchangeable(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Carried]:
    """Give every float8/int4/int2 input and output of a CPU subgraph an exact carrier type.

    A float8, int4 or int2 tensor crossing a subgraph boundary (a quantize step on one side, its
    dequantize step or a graph output on the other) travels as float32 / int8 values, which hold
    every such value exactly; ``Cast`` nodes inside the ONNX model convert at the edge, and the
    executor converts the carrier back to the real (ml_dtypes) numpy type, so the rest of the
    runtime, the dumps and the caller see the tensor's declared type.
    """
    carried: Carried = {}
    graph = model.graph
    for vi in [*graph.input, *graph.output]:
        real = vi.type.tensor_type.elem_type
        if real in _CARRIERS:
            carrier = _CARRIERS[real]
            carried[vi.name] = (f"{vi.name}__carrier", helper.tensor_dtype_to_np_dtype(real),
                                helper.tensor_dtype_to_np_dtype(carrier))
    if not carried:
        return model, carried
    input_names = {vi.name for vi in graph.input}
    casts_in, casts_out = [], []
    for vi in [*graph.input, *graph.output]:
        if vi.name not in carried:
            continue
        name, carrier_name, real = vi.name, carried[vi.name][0], vi.type.tensor_type.elem_type
        vi.type.tensor_type.elem_type = _CARRIERS[real]
        if name in input_names and any(o.name == name for o in graph.output):
            carried[name] = (name, *carried[name][1:])  # passed straight through, as its carrier
            continue
        vi.name = carrier_name
        if name in input_names:
            casts_in.append(helper.make_node("Cast", [carrier_name], [name], name=f"{name}__to_real", to=real))
        else:
            casts_out.append(helper.make_node("Cast", [name], [carrier_name], name=f"{name}__to_carrier",
                                              to=_CARRIERS[real]))
    nodes = [*casts_in, *graph.node, *casts_out]
    del graph.node[:]
    graph.node.extend(nodes)
    return model, carried


def _to_carrier(value: np.ndarray, carried: tuple | None) -> np.ndarray:
    return value if carried is None else np.asarray(value).astype(carried[2])


def _from_carrier(value: np.ndarray, carried: tuple | None) -> np.ndarray:
    return value if carried is None else np.asarray(value).astype(carried[1])
