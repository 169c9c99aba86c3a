"""The two subgraph executors: the integer program (accelerator) and ONNX Runtime (CPU)."""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from .. import numerics as nm, ort_kernels
from ..errors import NpuflowError
from ..graph import GraphView, attr
from ..operators import BOOLEAN_OUTPUT_OPS, ELEMENTWISE_OPS
from ..ort_session import Level, open_session
from ..qdq import DOMAIN, parse_function_name

from . import fused
from .broadcast import full_rank_constants
from .fused_graph import EXTERNAL_BYTES, external_stub
from .fused_run import RUN_OPTIONS
from .kernels import KERNELS, Kernel
from .halfup_steps import shorter_quantize_steps
from .prelu_forms import prelu_forms

Dump = Callable[[str, np.ndarray], None]

#: The external weights from which a CPU subgraph's session is created only after ``release``
#: (``OnnxExecutor``): a release costs a ``malloc_trim``, and YOLOv8n on the DPU opens 116 small
#: subgraphs, whose creation is no high-water mark.
RELEASE_BYTES = 1 << 20

#: The arena of a program that places no kernel output (empty: shared by every run, as nothing
#: can be written to it).
_NO_ARENA = np.empty(0, np.uint8)


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
                 threads: int = 1, fuse: bool = True, release: Callable[[], object] | None = None,
                 defer: bool = False) -> None:
        """``release``: called before each fused run's ONNX Runtime session is created
        (:class:`.fused.FusedRun`); ``defer``: a stored plan's runs are opened by :meth:`open`
        (a load that may join them into another graph first: ``runtime/joined.py``)."""
        self.outputs = list(sg["outputs"])
        self._ops = sg["ops"]
        self._blob = blob
        self._kernels: dict[int, Kernel] = {}
        self._kernel_lock = threading.Lock()
        self.plan = (fused.plan(sg, tensors, blob, threads, release, defer) if fuse
                     else fused.Plan(list(range(len(self._ops))), {}))
        plan = sg["memory"]
        # the arena holds the outputs of ops run as kernels; a program of fused runs only (ONNX
        # Runtime's own buffers) allocates none per frame
        kernels = any(not isinstance(item, fused.FusedRun) for item in self.plan.items)
        #: the program's one fused run where it makes exactly the subgraph's outputs (MNIST, PP-OCR
        #: cls, YOLOv8n on cpu-int8): ``run`` returns its result as it comes, the rest of a frame's
        #: bookkeeping (arena, environment, output dictionary) being for programs of several items
        only = self.plan.items[0] if len(self.plan.items) == 1 else None
        self.single = (only if isinstance(only, fused.FusedRun) and list(only.outputs) == self.outputs
                       else None)
        self.arena_bytes = plan["arena_bytes"] if kernels else 0
        self.buffers = {}
        for name, b in plan["buffers"].items():
            info = tensors[name]
            dtype = np.dtype(info["dtype"])
            count = int(np.prod(info["shape"]))
            self.buffers[name] = (b["offset"], count, dtype, tuple(info["shape"]))

    @functools.cached_property
    def op_index(self) -> dict[str, int]:
        """Each op's index by name (``run_op``): built when first asked, as a load reads no op
        where its fused plan is stored (``compiler/lazy_ops.py``)."""
        return {op["name"]: k for k, op in enumerate(self._ops)}

    def open(self) -> None:
        """Open the sessions of fused runs a deferred load left closed (``defer``)."""
        for item in self.plan.items:
            if isinstance(item, fused.FusedRun):
                item.open()

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
        if self.single is not None and dump is None:  # one fused run makes every output: no arena, no env
            return self.single.run(feeds)
        arena = np.empty(self.arena_bytes, np.uint8) if self.arena_bytes else _NO_ARENA
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


#: What ONNX Runtime raises when a run fails on the values it was given (pybind classes, not RuntimeError).
ORT_RUN_ERRORS = (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidArgument,
                   ort.capi.onnxruntime_pybind11_state.RuntimeException)


class OnnxExecutor:
    """Runs one CPU subgraph (plain ONNX with the quantized model's own Q/DQ) on ONNX Runtime.

    The optimisation level follows the model's scales.  With power-of-two scales ONNX Runtime's
    float execution of Q/DQ is exact and is the reference the integer programs equal bit for bit,
    so graph optimisations stop at the basic level (no fusion of Q/DQ into QLinear kernels).
    With float scales the float execution and ORT's default one (QDQ fused into integer
    ``QLinear*`` kernels, what users run) differ by many steps after steep activations (YOLOv8n:
    239 of 268 integer tensors beyond one step); the integer programs follow the default one
    (``numerics.requantize_float``), so CPU subgraphs run at ORT's default level too, less the
    transformer that would quantize a float Conv/Gemm's weights (``ort_session.disabled``): a
    layer the model keeps float runs in float.  CPU
    subgraphs are small (a few nodes between accelerator parts), so each session runs on one
    thread by default: a thread pool per subgraph costs more in wake-ups than it gains.  A
    subgraph whose outputs are each an elementwise function of (a ``Split`` slice of) one 8-bit
    input runs as the tables this session computes for every code (``_as_lookup``;
    ``lookup=False`` keeps the session).
    """

    def __init__(self, sg: dict, onnx_bytes: bytes | Callable[[], bytes], threads: int = 1, lookup: bool = True,
                 release: Callable[[], object] | None = None) -> None:
        """``onnx_bytes``: the serialized subgraph, or a function that reads it, which lets it go
        once parsed; ``release`` (e.g. dropping the mapped ``.npuf``'s pages and the C heap's free
        pages) is called just before ONNX Runtime creates the session.  Both keep the blob out of
        that creation, a load's high-water mark where the subgraph holds large weights (PP-OCRv4
        rec's CTC head on the DPU targets: its 3.2 MB blob, the pages it was read from and the
        protobuf's freed copy were resident beside ONNX Runtime's copy and its packed form)."""
        #: the serialized subgraph again (:meth:`model`): read from the file, not kept
        self._read = onnx_bytes if callable(onnx_bytes) else lambda: onnx_bytes
        #: ONNX Runtime intra-op threads of its session
        self.threads, self._release = threads, release
        model, self.carried, external = self._prepared()
        #: bytes of its constants handed to ONNX Runtime as external arrays (``joined.APART_BYTES``)
        self.constant_bytes = sum(a.nbytes for a in external.values())
        self.session = self._open(model, external)
        del external  # ONNX Runtime holds its own copy (``open_session``)
        self.name = sg["name"]
        self.inputs = list(sg["inputs"])
        self.outputs = list(sg["outputs"])
        self.lookup = _as_lookup(model, self.session) if lookup and not self.carried else None
        if self.lookup is not None:  # the tables replace the session: release it and the memory of
            self.session = None      # the run that built them (YOLOv8n on the DPU: 55 sessions, 62 MiB)
        #: the session's run without the Python wrapper's per-call checks (``fused.direct_run``)
        self._run = fused.direct_run(self.session) if self.session is not None else None

    def _prepared(self) -> tuple[onnx.ModelProto, Carried, dict[str, np.ndarray]]:
        """The subgraph as its session runs it: the model (its quantize steps in the shorter form of
        ``halfup_steps``), its carried tensors, its external arrays."""
        model, carried = _session_model(onnx.load_from_string(self._read()))
        return model, carried, _move_out_large_constants(model)

    def _open(self, model: onnx.ModelProto, external: dict[str, np.ndarray]) -> ort.InferenceSession:
        if self._release is not None and sum(a.nbytes for a in external.values()) >= RELEASE_BYTES:
            self._release()
        return open_session(full_rank_constants(model), level=cpu_level(model), threads=self.threads,
                            spinning=self.threads <= 1, external=external, shared_arena=True)

    def model(self) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
        """The model its session runs and its external arrays, or None where no session runs it
        (tables, carried types): for a caller that runs it inside another graph (``runtime/joined.py``)."""
        if self.lookup is not None or self.carried:
            return None
        model, _, external = self._prepared()
        return model, external

    def close(self) -> None:
        """Drop the session (run inside another graph); a later run opens it again."""
        if self.lookup is None:
            self.session = self._run = None

    def run(self, feeds: dict[str, np.ndarray], dump: Dump | None = None) -> dict[str, np.ndarray]:
        if self.session is None and self.lookup is None:  # closed (:meth:`close`): open again
            session = self._open(*self.model())
            self._run = fused.direct_run(session)  # before ``session``: another thread may run once that is set
            self.session = session
        carried = self.carried
        try:
            if self.lookup is not None:
                result = self.lookup(feeds)
            elif not carried:  # the common case, once per frame: no carrier types to convert
                result = dict(zip(self.outputs, self._run(self.outputs, {k: feeds[k] for k in self.inputs},
                                                             RUN_OPTIONS)))
            else:
                ins = {carried[k][0] if k in carried else k: _to_carrier(feeds[k], carried.get(k)) for k in self.inputs}
                values = self.session.run([carried[o][0] if o in carried else o for o in self.outputs], ins)
                result = {o: _from_carrier(v, carried.get(o)) for o, v in zip(self.outputs, values)}
        except ORT_RUN_ERRORS as exc:  # the values, not the model: a token id past an embedding table's end
            raise NpuflowError("NPF_RUNTIME_SUBGRAPH_FAILED", subgraph=self.name, reason=str(exc)) from None
        if dump is not None:
            for name, value in result.items():
                if value.dtype.kind in "iu":
                    dump(name, value)
        return result


def return_freed_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``); ``False``
    where the C library has none (not glibc).

    A load frees more than it keeps: the parsed subgraphs, the weights' numpy forms once ONNX
    Runtime holds its copies, the sessions that became tables.  glibc keeps those pages for later
    allocations, and the fused runs' sessions and frames then grow beside them rather than into
    them (measured over a baseline process, 5 frames: YOLOv8n bernoulli2 48.9 -> 44.4 MiB peak,
    PP-OCRv4 rec B4096 50.0 -> 46.6).  Called at the end of a ``Session``'s load, once the CPU
    subgraphs' sessions are open and after each integer program's build: each build's transient
    (graph, bounds, the weights' numpy forms) then goes back before the next one's, which
    otherwise grew beside it (PP-OCRv4 rec, 42 subgraphs: 41.0 -> 38.0 MiB peak).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def _session_model(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Carried]:
    """A CPU subgraph's model as its session runs it, and its carried tensors.  A quantize step of
    booleans becomes a select first: the shorter form of the other steps would hide its ``Cast``.  A
    ``PRelu`` between quantize steps runs as faster kernels (``prelu_forms``)."""
    _quantized_booleans_as_select(model)
    model, carried = _carry_unexchangeable(shorter_quantize_steps(prelu_forms(model)))
    _softmax_before_transpose(model)
    return model, carried


def _quantized_booleans_as_select(model: onnx.ModelProto) -> None:
    """Write each quantize step whose input is a ``Cast`` of booleans to float (a one-hot: Magika's
    ``Equal`` of 2048 bytes with 257 values) as a ``Where`` between its two codes, in place.

    The step sees 0.0 and 1.0 only, so its codes are ``numerics.quantize`` of those two under its own
    scale, zero point and rounding: the same codes, one select over the tensor instead of the float
    cast and the quantize function's eight passes (Magika on DPUCZDX8G_ISA1_B4096, ``[1, 2048, 257]``:
    benchmarks/results/runtime_corpus_s34.md).  The ``Cast`` stays where something else reads it, and goes
    where nothing does: ONNX Runtime runs a node no one reads (Magika's float one-hot, 4 % of its frame)."""
    view = GraphView(model.graph)
    casts = []
    for node in list(model.graph.node):
        standard = (nm.RoundMode.HALF_EVEN, None) if node.op_type == "QuantizeLinear" else None
        parsed = parse_function_name(node.op_type) if node.domain == DOMAIN else standard
        cast = view.producer_node(node.input[0])
        if parsed is None or len(node.input) < 3 or cast is None or cast.op_type != "Cast" \
                or attr(cast, "to") != TensorProto.FLOAT:
            continue
        source = view.producer_node(cast.input[0])
        scale, zero = view.const(node.input[1]), view.const(node.input[2])
        if source is None or source.op_type not in BOOLEAN_OUTPUT_OPS or scale is None or zero is None \
                or scale.size != 1 or zero.size != 1:
            continue
        bits = 8 * zero.dtype.itemsize
        codes = nm.quantize(np.array([0.0, 1.0], np.float32), float(scale.reshape(())), int(zero.reshape(())),
                            bits=bits, signed=zero.dtype.kind == "i", round_mode=parsed[0]).astype(zero.dtype)
        names = [f"{node.output[0]}__code{k}" for k in (0, 1)]
        model.graph.initializer.extend(numpy_helper.from_array(np.array(c, zero.dtype), n)
                                       for c, n in zip(codes, names))
        select = helper.make_node("Where", [cast.input[0], names[1], names[0]], list(node.output), name=node.name)
        node.CopyFrom(select)
        casts.append(cast.output[0])
    after = GraphView(model.graph)
    for name in dict.fromkeys(casts):  # a cast two steps read: once
        if not after.consumer_nodes(name) and not after.is_graph_output(name):
            model.graph.node.remove(after.producer_node(name))


def _softmax_before_transpose(model: onnx.ModelProto) -> None:
    """Move each ``Transpose`` that only a ``Softmax`` over a middle axis reads below it, in place.

    ONNX Runtime's softmax over an axis that is not the last transposes that axis to the end,
    computes and transposes back; how fast depends on where the axis sits, not on the values.
    YOLOv8n's DFL head (``Reshape`` to 1x4x16x2100, ``Transpose`` to 1x16x4x2100, softmax over the
    16 bins) is much slower in the transposed form than as the softmax over axis 2 of the tensor
    before the ``Transpose`` (figures: ``docs/runtime-measurements.md``, fifteenth round); ONNX
    Runtime's own optimiser moves that ``Transpose`` down on the whole model, but not inside the
    CPU subgraph that ends at the softmax's quantize step.  Every row of the softmax holds the
    same values in the same order either way, so the values are unchanged.  Only from opset 13,
    where ``axis`` is one axis (earlier ones flatten the axes after it), and only where the axis
    is not already the last (a softmax there is ONNX Runtime's fast form).

    Where ONNX Runtime fuses Q/DQ (float scales, :func:`cpu_level` ``"all"``) the move must not
    change which kernel computes the softmax: with uint8 codes it fuses ``QLinearSoftmax`` either
    way (YOLOv8n on cpu-int8).  With int8 codes a fusion of the moved form only would give other
    codes, so there the move is kept only where ONNX Runtime's optimised graph runs the same
    kernels as before it, Transposes and quantize steps aside (``ort_kernels.kernels``; onnxruntime
    1.32 keeps the float ``Softmax`` in both forms of YOLOv8n bernoulli2's DFL head).  At the basic
    level the softmax is float either way."""
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 13:
        return
    level = cpu_level(model)
    view = GraphView(model)
    moved: dict[int, list[onnx.NodeProto]] = {}  # softmax position -> its replacement
    dropped: set[int] = set()
    for i, node in enumerate(view.nodes):
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        t = view.producer_node(node.input[0])
        if t is None or t.op_type != "Transpose" or view.only_consumer(t.output[0]) is not node:
            continue
        perm = attr(t, "perm")
        axis = attr(node, "axis", -1)
        if not perm or axis % len(perm) == len(perm) - 1:
            continue
        inner = f"{node.output[0]}__before_transpose"
        moved[i] = [helper.make_node("Softmax", [t.input[0]], [inner], name=node.name, axis=perm[axis % len(perm)]),
                    helper.make_node("Transpose", [inner], [node.output[0]], name=t.name, perm=perm)]
        dropped.add(view.position(t))
    if moved:
        # the model as it was, to go back to where the move changes ONNX Runtime's kernels (copied only here:
        # a CPU subgraph may hold megabytes of weights)
        before = onnx.ModelProto.FromString(model.SerializeToString()) if level == "all" and not _uint8_steps(model) \
            else None
        nodes = [n for k, node in enumerate(view.nodes) if k not in dropped for n in moved.get(k, [node])]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        if before is not None and _moved_kernels(model, level) != _moved_kernels(before, level):
            model.CopyFrom(before)


def _moved_kernels(model: onnx.ModelProto, level: Level) -> dict:
    """ONNX Runtime's kernels for ``model`` at ``level``, less the Transposes and quantize steps that
    :func:`_softmax_before_transpose` moves (its optimiser adds Q/DQ pairs of one scale around them)."""
    return {k: n for k, n in ort_kernels.kernels(model, level).items()
            if k[1] not in ("Transpose", "QuantizeLinear", "DequantizeLinear")}


def _uint8_steps(model: onnx.ModelProto) -> bool:
    """Whether every ``QuantizeLinear``/``DequantizeLinear`` of ``model`` has a uint8 zero point."""
    inits = {t.name: t for t in model.graph.initializer}
    steps = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    return all(len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.UINT8
               for n in steps)


def _move_out_large_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Replace ``model``'s initialisers of ``fused_graph.EXTERNAL_BYTES`` and more by external
    stubs and return their arrays, for ``open_session(external=...)``.

    ONNX Runtime's Python session keeps the serialized model it was given for its whole life
    (``InferenceSession._model_bytes``), so a weight left in the protobuf stays resident twice:
    there and in ONNX Runtime's own (prepacked) copy.  PP-OCRv4 rec's CTC head on the DPU targets
    is such a subgraph: a float 120x6625 ``MatMul`` that the target's fully connected engine cannot
    hold (6625 output channels), so the quantizer leaves it float.  The values ONNX Runtime
    computes are the same: it reads the same array, only from the options instead of the protobuf.
    """
    inits = model.graph.initializer
    arrays: dict[str, np.ndarray] = {}
    for k, t in enumerate(inits):
        if t.data_location != TensorProto.EXTERNAL and _nbytes(t) >= EXTERNAL_BYTES:
            arrays[t.name] = numpy_helper.to_array(t)
            inits[k].CopyFrom(external_stub(t.name, arrays[t.name]))
    return arrays


def _nbytes(t: onnx.TensorProto) -> int:
    """An initialiser's size in bytes, from its dims and type (without converting its data)."""
    if t.data_type == TensorProto.STRING:
        return 0  # strings have no fixed width and are no weights worth moving
    return int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def _elementwise(nodes, functions: dict) -> bool:
    for node in nodes:
        if node.domain in ("", "ai.onnx") and node.op_type in ELEMENTWISE_OPS:
            if node.op_type == "Constant" and any(a.t.dims and np.prod(a.t.dims) != 1 for a in node.attribute):
                return False
            continue
        body = functions.get((node.domain, node.op_type))
        if body is None or not _elementwise(body.node, functions):
            return False
    return True


Slices = tuple[tuple[int, int, int], ...]  # (axis, start, end), applied in order


def _sources(model: onnx.ModelProto) -> dict[str, tuple[str, Slices]] | None:
    """For each graph output, the graph input it is an elementwise function of, position by
    position, and the ``Split`` slices of that input on the way; ``None`` when some output is
    not (a node mixing positions, or two different inputs or slices)."""
    graph = model.graph
    functions = {(f.domain, f.name): f for f in model.functions}
    inits = {t.name: t for t in graph.initializer}
    view = GraphView(graph)
    inputs = {vi.name for vi in graph.input}
    memo: dict[str, tuple[str, Slices] | None] = {}

    def trace(name: str) -> tuple[str, Slices] | None | str:
        """The source of ``name``; ``"const"`` for a scalar constant."""
        if name in inputs:
            return name, ()
        if name in inits:
            return "const" if np.prod(inits[name].dims) == 1 else None
        if name in memo:
            return memo[name]
        node = view.producer_node(name)
        memo[name] = None
        if node is None:
            return None
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return "const" if _elementwise([node], functions) else None  # a scalar
        if node.op_type == "Split" and node.domain in ("", "ai.onnx"):
            src = trace(node.input[0])
            sizes = _split_sizes(node, inits, model)
            if not isinstance(src, tuple) or sizes is None:
                return None
            axis = attr(node, "axis", 0)
            k = list(node.output).index(name)
            result = (src[0], src[1] + ((axis, sum(sizes[:k]), sum(sizes[:k + 1])),))
        elif _elementwise([node], functions):
            found = {trace(i) for i in node.input if i}
            found.discard("const")
            if len(found) != 1 or None in found:
                return None
            result = found.pop()
        else:
            return None
        memo[name] = result
        return result

    sources = {}
    for vo in graph.output:
        src = trace(vo.name)
        if not isinstance(src, tuple):
            return None
        sources[vo.name] = src
    return sources


def _split_sizes(node: onnx.NodeProto, inits: dict, model: onnx.ModelProto) -> list[int] | None:
    """A ``Split``'s output sizes along its axis, when they are constants of the graph."""
    if len(node.input) > 1 and node.input[1]:
        t = inits.get(node.input[1])
        return None if t is None else [int(v) for v in numpy_helper.to_array(t)]
    split = attr(node, "split")
    if split is not None:
        return list(split)
    axis = attr(node, "axis", 0)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in model.graph.input}
    shape = dims.get(node.input[0])
    if shape is None or not shape[axis] or shape[axis] % len(node.output):
        return None
    return [shape[axis] // len(node.output)] * len(node.output)


class Lookup:
    """A CPU subgraph as one table per output (:func:`_as_lookup`): ``tables[output] = (input,
    slices, table, qmin)``, the output's codes for the input codes ``qmin, qmin + 1, ...``."""

    def __init__(self, tables: dict[str, tuple[str, Slices, np.ndarray, int]]) -> None:
        self.tables = tables
        # indexed by the code's byte (take on a uint8 view: twice as fast as fancy indexing)
        self._rotated = {o: (name, slices, np.ascontiguousarray(table[(np.arange(256) - qmin) % 256]))
                         for o, (name, slices, table, qmin) in tables.items()}

    def __call__(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {o: np.take(rotated, _cut(values[name], slices).view(np.uint8))
                for o, (name, slices, rotated) in self._rotated.items()}


def _as_lookup(model: onnx.ModelProto, session: ort.InferenceSession) -> Lookup | None:
    """A CPU subgraph whose every output is an elementwise function of (a ``Split`` slice of)
    one 8-bit code input, as one table per output.

    YOLOv8n's SiLU on the DPU leaves 58 such subgraphs (``DequantizeLinear -> Sigmoid ->
    quantize step``, also several side by side), and its C2f blocks a ``Split`` between two
    quantize steps.  A table is what this very session computes for every code: it is run once
    on inputs of the subgraph's shapes holding every code many times, and a table is kept only
    if every position holding a code gave the same output (position-independent, as an
    elementwise graph of scalar constants is); the lookup then equals the session's outputs bit
    for bit, at a fraction of the cost (no float round trip per element).
    """
    graph = model.graph
    sources = _sources(model)
    if sources is None:
        return None
    feeds, codes = {}, {}
    for vi in graph.input:
        t = vi.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        if t.elem_type not in (TensorProto.INT8, TensorProto.UINT8) or not shape or min(shape) < 1:
            return None
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        info = np.iinfo(dtype)
        feeds[vi.name] = np.resize(np.arange(info.min, info.max + 1, dtype=np.int64), shape).astype(dtype)
        codes[vi.name] = info.min
    if any(vo.type.tensor_type.elem_type not in (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16,
                                                 TensorProto.UINT16) for vo in graph.output):
        return None
    outs = session.run([vo.name for vo in graph.output], feeds)
    tables = {}
    for vo, out in zip(graph.output, outs):
        name, slices = sources[vo.name]
        x = _cut(feeds[name], slices)
        if out.shape != x.shape or out.size < 4 * 256:
            return None
        idx = x.astype(np.int64).reshape(-1) - codes[name]
        table = np.zeros(256, out.dtype)
        seen = np.zeros(256, bool)
        table[idx], seen[idx] = out.reshape(-1), True
        if not seen.all() or not np.array_equal(table[idx], out.reshape(-1)):
            return None
        tables[vo.name] = (name, slices, table, codes[name])
    return Lookup(tables)


def _cut(x: np.ndarray, slices: Slices) -> np.ndarray:
    for axis, start, end in slices:
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, end)
        x = x[tuple(index)]
    return x


def cpu_level(model: onnx.ModelProto) -> Level:
    """The graph optimisation level a CPU subgraph runs at (see :class:`OnnxExecutor`)."""
    return "all" if _float_scaled(model) else "basic"


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
