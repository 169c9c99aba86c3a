"""The one way npuflow opens an ONNX Runtime session.

Every stage runs models on ONNX Runtime's CPU provider: the shape probe, calibration, fast
finetune's captures, the compiler's constant fragments, the runtime's CPU subgraphs and fused
integer runs, and perf's CPU timing.  Their sessions differ in four settings only, which are the
arguments here:

* ``level``: the graph optimisation level.  It changes numbers, not only speed: at ``"all"``
  ONNX Runtime fuses Q/DQ pairs into integer ``QLinear*`` kernels, at ``"basic"`` it runs Q/DQ in
  float.  The runtime's exactness contract names the level it compares with, so every caller
  states it (``"disable"`` for probes that must see the graph as written).
  At the default level ONNX Runtime also fuses a float ``MatMul``/``Gemm`` whose weight is a dequantize
  step of constants into ``com.microsoft.MatMulNBits``, which quantizes the float input to int8 per
  run (its default accuracy level): a session computes such a layer with the weight's float values
  instead (:func:`float_matmul_weights`).
  At every level above ``"disable"`` ONNX Runtime's ``WeightBiasQuantization`` would also quantize
  the float weights (to per-tensor int8) and bias of a ``Conv``/``ConvTranspose``/``Gemm`` that
  reads a dequantize step and feeds a ``QuantizeLinear`` (through a ``Relu``/``Clip``): the float
  convolution of a CPU island between two accelerator subgraphs, or a ``keep_float`` one, which the
  quantized model keeps float as the vendors' CPU parts run it.  A session of a model holding such
  a layer leaves that transformer out (:func:`disabled`), so the layer computes what the model says
  at any level; other models keep it (NNCF's float bias of a dequantized weight is quantized by it,
  which the compiler's legalisation follows).
* ``threads``: intra-op threads (0: ONNX Runtime's default, one per core; inter-op always 1,
  npuflow's graphs being small or sequential).
* ``spinning``: whether idle pool threads spin.  Off where sessions run beside other work (the
  calibration pipeline, several runtime sessions), where spinning threads steal the cores.
* ``mem_pattern``: ONNX Runtime's memory pattern, which from the second run on allocates the
  activations planned by the first as one block, beside the arena chunks the first run took:
  their sum is in the peak.  The runtime's fused runs turn it off (PP-OCRv4 det, one fused run:
  79 -> 59 MiB peak over a baseline process, the same CPU time per frame).

* ``shared_arena``: the session allocates from one arena registered with ONNX Runtime's
  environment (once per process, :func:`shared_arena`) instead of an arena of its own.  The
  runtime's many sessions (one per fused run and CPU subgraph) each kept the chunks of their own
  largest run: their sum was in the peak, where one shared arena holds the largest of them
  (PP-OCRv4 rec, 42 sessions: 47.3 -> 41.6 MiB peak over a baseline process).

ONNX Runtime's own log is kept to fatal messages (its errors reach the user inside npuflow's coded
errors, not as a second, uncoded line on stderr), and a model of a newer IR version than the bundled
ONNX Runtime reads is handed over at :data:`npuflow.model.MAX_IR_VERSION` (the operators are what
matter; the IR bump adds nothing these models use).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from . import numerics
from .errors import NpuflowError
from .operators import DQ_PROPAGATING_OPS, FOLDS_INTO, QDQ_WEIGHT_READERS

if TYPE_CHECKING:  # graph imports model, which opens sessions through this module
    from .graph import GraphView

Level = Literal["disable", "basic", "all"]

#: ``Level`` -> the name of ONNX Runtime's ``GraphOptimizationLevel`` member.
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL"}

#: ONNX Runtime's transformer that quantizes a float weight read by a quantized layer (module
#: docstring, ``level``)
WEIGHT_QUANTIZER = "WeightBiasQuantization"
#: The session option naming transformers to leave out, separated by ``;`` (a list given to the
#: session's constructor replaces it)
DISABLE_KEY = "optimization.disable_specified_optimizers"


_ARENA_LOCK = threading.Lock()
#: whether this process' environment holds npuflow's shared CPU arena (empty: not tried yet)
_ARENA: list[bool] = []


def shared_arena() -> bool:
    """Register one CPU arena allocator with ONNX Runtime's environment, once per process, and
    say whether sessions may use it (``session.use_env_allocators``).  ``False`` where ONNX
    Runtime refuses the registration (e.g. an allocator the application registered already, whose
    settings npuflow does not know): sessions then keep arenas of their own."""
    import onnxruntime as ort

    with _ARENA_LOCK:
        if not _ARENA:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            try:  # ONNX Runtime's default arena settings (-1: its default for each)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))
                _ARENA.append(True)
            except Exception:  # ONNX Runtime raises its own Fail type
                _ARENA.append(False)
        return _ARENA[0]


def options(*, level: Level = "all", threads: int = 0, spinning: bool = True, mem_pattern: bool = True,
            arena: bool = False):
    """``onnxruntime.SessionOptions`` with npuflow's settings (see the module docstring;
    ``arena``: the shared arena)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # fatal only: a failing run is reported as a coded error with ORT's message
    opts.enable_mem_pattern = mem_pattern
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if arena and shared_arena():
        opts.add_session_config_entry("session.use_env_allocators", "1")
    return opts


def disabled(model: onnx.ModelProto, extra: Sequence[str] = ()) -> list[str]:
    """The ONNX Runtime transformers a session of ``model`` leaves out: ``extra``, and
    :data:`WEIGHT_QUANTIZER` where the model has :func:`float_weight_layers`."""
    return list(dict.fromkeys([*extra, *([WEIGHT_QUANTIZER] if float_weight_layers(model) else [])]))


def float_weight_layers(model: onnx.ModelProto) -> list[str]:
    """The Conv/ConvTranspose/Gemm nodes (``FOLDS_INTO``: the layers with a weight and a bias input; names,
    else outputs) that read a dequantize step and a float weight of the graph's: float layers between
    quantized ones, which must stay float."""
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    floats.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name or n.output[0] for n in model.graph.node
            if n.op_type in FOLDS_INTO and len(n.input) > 1 and n.input[0] in dequantized and n.input[1] in floats]


#: ONNX Runtime's kernel for a float ``MatMul``/``Gemm`` whose weight is a dequantize step of 8-bit (or
#: narrower) constants (its ``QDQSelectorActionTransformer``'s ``DQMatMulToMatMulNBits`` rule, default
#: level only; the rule cannot be left out alone: the transformer also fuses the QLinear groups that
#: float-scale runs follow)
NBITS_MATMUL = "MatMulNBits"


def float_matmul_weights(model: onnx.ModelProto, level: Level, external: Mapping[str, np.ndarray] | None = None,
                         libraries: Sequence[str] = ()) -> onnx.ModelProto:
    """``model`` with the weight of each float ``MatMul``/``Gemm`` that ONNX Runtime at ``level`` would
    run as :data:`NBITS_MATMUL` written as int32 codes (``numerics.centered_codes``) dequantized
    without a zero point after the ops that move them: the same real values, which ONNX Runtime
    computes as the model does (a run-time dequantize step, then the float product; its transpose
    optimizer folds the moves into the constant codes) and never fuses (int32 is no N-bit type).
    ``model`` itself where no layer is fused: one walk over the graph, and ONNX Runtime's optimised
    graph only where a candidate exists.

    Why: ``MatMulNBits`` at ONNX Runtime's default accuracy level quantizes the layer's float input to
    int8 blocks on every run, a step the model does not have.  A Brevitas QCDQ classifier's float
    ``Linear`` (cpu-int8) moved 0.0024 off the model that way once its weight's dequantize step
    shared the layer's CPU subgraph (up to 0.8 on a 256x1000 uint8 weight).  The other forms differ
    too: at accuracy level 0 the fused kernel sums in another order (up to 4e-4 for one row), and
    a float constant weight is pre-packed (1e-7).  A per-channel step behind moves is left as is.
    ``external``: the arrays of initialisers ``model`` declares external; ``libraries``: the custom
    operator libraries its session registers (:func:`open_session`)."""
    if level != "all":
        return model
    from .graph import GraphView

    view = GraphView(model)
    external = external or {}
    candidates = {n.output[0]: found for n in model.graph.node if n.op_type in ("MatMul", "Gemm")
                  and (found := _constant_weight(view, n, external)) is not None}
    if not candidates:
        return model
    from .ort_kernels import optimized_graph

    fused = {n.output[0] for n in optimized_graph(model, level, external=external, libraries=libraries).node
             if n.op_type == NBITS_MATMUL}
    chosen = [found for out, found in candidates.items() if out in fused]
    if not chosen:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = {n.output[0]: n for n in out.graph.node}
    for dq, moves in chosen:
        values = [_constant(view, t, external) for t in dq.input[:3]]
        codes = numerics.centered_codes(values[0], 0 if len(values) < 3 or values[2] is None else values[2],
                                        axis=_axis(dq))
        name = f"{dq.input[0]}__centered_int32"
        out.graph.initializer.append(numpy_helper.from_array(codes, name))
        step = nodes[dq.output[0]]
        if not moves:
            del step.input[2:]
            step.input[0] = name
            continue
        first, last = nodes[moves[0]], nodes[moves[-1]]
        first.input[0] = name
        moved = last.output[0]
        last.output[0] = f"{moved}__codes"
        step.input[0], step.output[0] = last.output[0], moved
        del step.input[2:]
    ordered = _topological(out.graph)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    read = {t for n in out.graph.node for t in n.input}
    unread = {dq.input[0] for dq, _ in chosen} - read  # the 8-bit codes the int32 ones replace
    kept_inits = [t for t in out.graph.initializer if t.name not in unread]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept_inits)
    return out


def _axis(dq: onnx.NodeProto) -> int:
    from .graph import attr_values

    return int(attr_values(dq).get("axis", 1))


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``graph``'s nodes in an order where each follows its producers (a moved dequantize step now
    reads the last move's output)."""
    made = {t.name for t in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:  # the graph was in order but for the moved steps: one pass places nearly every node
        rest = []
        for n in pending:
            if all(t in made for t in n.input):
                ordered.append(n)
                made.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # outer-scope reads etc.: keep the rest in their order
            return ordered + rest
        pending = rest
    return ordered


def _constant(view: GraphView, tensor: str, external: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """An initialiser's array (``external``'s where the model declares it external), else None."""
    if tensor in external:
        return np.asarray(external[tensor])
    t = view.inits.get(tensor) if tensor else None
    if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
        return None
    return view.const(tensor)


def _constant_weight(view: GraphView, node: onnx.NodeProto, external: Mapping[str, np.ndarray],
                     ) -> tuple[onnx.NodeProto, list[str]] | None:
    """The ``DequantizeLinear`` of 8-bit or narrower constants with a float32 scale that ``node``
    reads as its weight, and the outputs of the ops that move its values on the way (each read
    once; the step per tensor where there are any), else None."""
    from .graph import attr_values

    if len(node.input) <= QDQ_WEIGHT_READERS[node.op_type]:
        return None
    tensor, moves = node.input[QDQ_WEIGHT_READERS[node.op_type]], []
    for _ in range(5):
        src = view.producer_node(tensor)
        if src is None or len(view.consumer_nodes(tensor)) != 1 or view.is_graph_output(tensor):
            return None
        if src.op_type in DQ_PROPAGATING_OPS:
            moves.insert(0, tensor)
            tensor = src.input[0]
            continue
        if src.op_type != "DequantizeLinear" or src.domain not in ("", "ai.onnx") \
                or attr_values(src).get("block_size", 0):
            return None
        values = [_constant(view, t, external) for t in src.input if t]
        if len(values) < 2 or any(v is None for v in values) or values[1].dtype != np.float32 \
                or values[0].dtype.itemsize != 1 or (moves and values[1].size != 1):
            return None
        return src, moves
    return None


def open_session(model: onnx.ModelProto | bytes, *, level: Level = "all", threads: int = 0,
                 spinning: bool = True, what: str = "load", disabled_optimizers: Sequence[str] = (),
                 external: Mapping[str, np.ndarray] | None = None, mem_pattern: bool = True,
                 shared_arena: bool = False):
    """An ``onnxruntime.InferenceSession`` on the CPU provider; a model ONNX Runtime refuses is
    ``NPF_MODEL_INVALID`` ("ONNX Runtime cannot {what} the model: ...").  ``shared_arena``: the
    session allocates from the environment's shared arena (module docstring).

    ``external``: the data of initialisers that ``model`` declares as external (name -> array),
    handed over as ``SessionOptions.add_external_initializers``: ONNX Runtime copies them into its
    graph before optimising it, so neither the protobuf, nor its serialized bytes (which ONNX
    Runtime's Python session keeps), nor ONNX Runtime's parse of them holds a copy.  The arrays
    may be dropped once the session is open; the session's options still name them, so it must
    not be built again from those (``set_providers``).

    A model with custom operators (:mod:`npuflow.custom_ops`) runs them as onnxruntime-extensions
    Python ops or from their registered ONNX Runtime library: an unregistered one is
    ``NPF_MODEL_CUSTOM_OP``, and the session returned checks after each run whether a Python op
    failed (``NPF_CUSTOM_OP_FAILED``)."""
    import onnxruntime as ort

    from . import custom_ops, ort_kernels

    opts = options(level=level, threads=threads, spinning=spinning, mem_pattern=mem_pattern, arena=shared_arena)
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (external or {}).values()]  # alive until loaded
    if values:
        opts.add_external_initializers(list(external), values)
    proto = onnx.load_from_string(model) if isinstance(model, bytes) and custom_ops.has_registrations() else model
    # integer kernels (fused QDQ groups, QOperator nodes) in the form this CPU computes exactly;
    # serialized models are parsed only where they may hold int8 weights and the form is not int8
    if level == "all" and isinstance(proto, bytes) and b"DequantizeLinear" in proto \
            and (b"MatMul" in proto or b"Gemm" in proto):
        proto = onnx.load_from_string(proto)  # parsed only where a float layer may be fused (float_matmul_weights)
    if not isinstance(proto, bytes):
        proto = ort_kernels.exact_weights(proto, external)
    elif any(op in proto for op in (b"DequantizeLinear", b"QLinear", b"Integer")) and ort_kernels.weight_form() == "u8":
        proto = ort_kernels.exact_weights(onnx.load_from_string(proto))
    custom = False
    if isinstance(proto, onnx.ModelProto):
        found = custom_ops.custom_nodes(proto)
        missing = sorted({f"{n.domain}:{n.op_type}" for n, op in found if op is None})
        if missing:
            raise NpuflowError("NPF_MODEL_CUSTOM_OP", count=len(missing), ops="; ".join(missing))
        libraries = {op.library for _, op in found if op.library is not None}  # C++ ops (register_op_library)
        proto, custom = custom_ops.for_onnxruntime(proto)
        if custom:
            libraries.add(custom_ops.extensions().get_library_path())
        for library in sorted(libraries):  # each once: ONNX Runtime refuses a second registration
            opts.register_custom_ops_library(library)
        proto = float_matmul_weights(proto, level, external, sorted(libraries))
    if isinstance(proto, onnx.ModelProto):
        left_out = disabled(proto, disabled_optimizers)
    elif b"DequantizeLinear" in proto and any(op in proto for op in (b"Conv", b"Gemm")):
        left_out = disabled(onnx.load_from_string(proto), disabled_optimizers)  # parsed only where it may matter
    else:
        left_out = list(disabled_optimizers)
    data = _serialized(proto)
    try:
        try:
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=left_out or None)
        except Exception as exc:
            if _S8_TO_U8 in left_out or "output_dtype" not in str(exc):
                raise
            # ONNX Runtime's int8 -> uint8 rewrite of quantize steps keeps an opset-21 QuantizeLinear's
            # output_dtype INT8 beside its new UINT8 zero point and then refuses its own graph (a
            # dynamo opset-21 export quantized for B4096, new-user round 15); without it the
            # arithmetic is the same
            session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=[*left_out, _S8_TO_U8])
    except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"ONNX Runtime cannot {what} the model: {exc}") from None
    # ONNX Runtime's Python session keeps the serialized model it was given (``_model_bytes``) for its
    # whole life, only to build itself again on ``set_providers``, which no caller does (nor may: see
    # ``external``); PP-OCRv4 rec cpu-int8's 37 sessions held 166 KiB of them
    session._model_bytes = None
    return _Guarded(session) if custom else session


#: ONNX Runtime's graph transformer that rewrites int8 quantize/dequantize pairs to uint8 on x86
_S8_TO_U8 = "QDQS8ToU8Transformer"


class _Guarded:
    """An ONNX Runtime session whose runs raise what a custom op recorded (see
    :mod:`npuflow.custom_ops`); everything else is the session's."""

    def __init__(self, session) -> None:
        self._session = session

    def run(self, *args, **kwargs):
        from .custom_ops import raise_recorded

        try:
            result = self._session.run(*args, **kwargs)
        except Exception:
            raise_recorded()  # the op's own error explains ONNX Runtime's (an empty output downstream)
            raise
        raise_recorded()
        return result

    def __getattr__(self, name: str):
        return getattr(self._session, name)


def _serialized(model: onnx.ModelProto | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    from .model import MAX_IR_VERSION

    if model.ir_version <= MAX_IR_VERSION:
        return model.SerializeToString()
    saved = model.ir_version
    model.ir_version = MAX_IR_VERSION
    try:
        return model.SerializeToString()
    finally:
        model.ir_version = saved
