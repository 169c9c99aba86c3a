"""A compiled model as a plain ONNX model for ``onnxruntime.InferenceSession`` (onnxruntime-extensions).

The second half of the Vitis AI Execution Provider's role: an existing ONNX Runtime application
runs npuflow's exact integer simulation without changing how it creates or runs its session,
only its ``SessionOptions``::

    npuflow.ort_export.export("model.npuf", "model_ort.onnx")           # once, at build time

    so = npuflow.ort_export.session_options("model_ort.onnx")          # the one changed line
    sess = onnxruntime.InferenceSession("model_ort.onnx", so, providers=["CPUExecutionProvider"])
    outputs = sess.run(None, {"input": x})

The exported graph holds each CPU subgraph of the ``.npuf`` inline, as the ONNX nodes it is, and
each accelerator subgraph (and a compiler plugin's, or a CPU subgraph with custom operators,
which plain ONNX Runtime would not know) as one node that onnxruntime-extensions runs as a Python
op, in a domain of its own (``npuflow.pyop.<op type>``: :func:`npuflow.custom_ops.declare_pyop`
says why): the op runs that subgraph from the ``.npuf``
(:meth:`npuflow.Session.run_subgraph`), so outputs equal :class:`npuflow.Session` bit for bit.
The inline CPU subgraphs equal the session at the graph optimisation level it runs them at (basic
on power-of-two targets), which :func:`session_options` sets from the model's metadata; where the
session runs CPU subgraphs at both levels (cpu-int8 fed nv12), those at the level of fewer nodes
are npuflow ops too.

This path is for compatibility, not speed: onnxruntime-extensions hands a Python op's outputs
back to ONNX Runtime as Python lists (``tolist()``), which costs far more than the integer
programs on large feature maps.  ``npuflow.ort.InferenceSession`` (the same API, no ONNX Runtime
session) or :class:`npuflow.Session` run the same ``.npuf`` at full speed.  The
node names the ``.npuf`` by path and sha256 (attributes ``npuf``, ``sha256``, ``subgraph``): the
integer programs are not copied into the ONNX file, and a ``.npuf`` changed after the export is
the coded error ``NPF_ORT_EXPORT_STALE`` (from :func:`session_options`) rather than other numbers.

Python ops must be declared before a session is created, with the types of their inputs and
outputs; :func:`session_options` reads those from the exported model, declares them and adds the
extensions library to the options.  onnxruntime-extensions is an optional dependency
(``pip install onnxruntime-extensions``).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from .compiler.compiled import CompiledModel
from .custom_ops import PYOP_DOMAIN_PREFIX, custom_nodes, declare_pyop, extensions
from .graph import attr_values
from .ort_session import DISABLE_KEY, LEVELS, disabled, float_matmul_weights
from .runtime.executors import cpu_level
from .runtime.session import file_sha256
from .errors import NpuflowError
from .model import write_atomic

log = logging.getLogger(__name__)

#: The one domain older exports put every npuflow op in (refused by :func:`session_options`: export again).
OLD_DOMAIN = "ai.onnx.contrib"
#: Metadata key: the ONNX Runtime graph optimisation level the inline CPU subgraphs need.
LEVEL_KEY = "npuflow.ort_graph_optimization_level"
#: Prefix of the op type of an accelerator-subgraph node: ``Npuflow_<sha256[:16]>_<subgraph index>``.
OP_PREFIX = "Npuflow_"


def export(npuf: str | os.PathLike | CompiledModel, output: str | os.PathLike) -> onnx.ModelProto:
    """Write ``output``: the ``.npuf``'s subgraphs as one ONNX graph (see the module docstring).

    ``npuf`` is the file's path, or a :class:`CompiledModel` read from one (``CompiledModel.load``):
    the exported nodes name the file they run.  One made by :func:`npuflow.compile` is saved first."""
    if isinstance(npuf, CompiledModel):
        if npuf.source is None or npuf.packed:
            raise NpuflowError("NPF_ORT_EXPORT_NOT_SAVED", what=f"CompiledModel {npuf.name!r}")
        npuf = npuf.source
    elif not isinstance(npuf, (str, os.PathLike)):
        raise NpuflowError("NPF_COMPILE_NOT_NPUF", path=f"a {type(npuf).__name__}",
                           reason="export takes the path of a compiled .npuf (npuflow compile's output)")
    path = Path(npuf).resolve()
    compiled = CompiledModel.load(path)
    if len(compiled.programs) > 1:
        raise NpuflowError("NPF_ORT_EXPORT_SHAPES", path=str(path), count=len(compiled.programs))
    digest = file_sha256(path)
    m = compiled.manifest
    tensors = m["tensors"]
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    seen: set[str] = set()
    opsets: dict[str, int] = {"": 13}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    subs = [onnx.load_from_string(compiled.blob(sg["onnx"])) if sg["engine"] == "onnx" else None
            for sg in m["subgraphs"]]
    level = _inline_level(subs)
    for k, sg in enumerate(m["subgraphs"]):
        sub = subs[k]
        # run by npuflow: integer programs, a plugin's subgraphs (its runner), CPU subgraphs with
        # custom operators (npuflow's session runs them; plain ONNX Runtime would not know them) and
        # CPU subgraphs the session runs at another optimisation level than the exported graph's
        if sub is None or custom_nodes(sub) or cpu_level(sub) != level:
            op_type = f"{OP_PREFIX}{digest[:16]}_{k}"
            opsets[PYOP_DOMAIN_PREFIX + op_type] = 1
            nodes.append(helper.make_node(op_type, list(sg["inputs"]), list(sg["outputs"]), name=sg["name"],
                                          domain=PYOP_DOMAIN_PREFIX + op_type, npuf=str(path), sha256=digest,
                                          subgraph=k))
            continue
        sub = float_matmul_weights(sub, level)  # a float MatMul stays float in the user's session too
        nodes.extend(sub.graph.node)
        for init in sub.graph.initializer:  # a constant several CPU subgraphs read is in each of them
            if init.name not in seen:
                seen.add(init.name)
                initializers.append(init)
        for imp in sub.opset_import:
            opsets[imp.domain] = max(opsets.get(imp.domain, 0), imp.version)
        for fn in sub.functions:
            functions[(fn.domain, fn.name)] = fn
    value = {name: helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(t["dtype"])),
                                                 list(t["shape"])) for name, t in tensors.items()}
    graph = helper.make_graph(
        nodes, m.get("graph_name") or "npuflow", [value[i["name"]] for i in m["inputs"]],
        [value[o["name"]] for o in m["outputs"]], initializer=initializers,
        value_info=[v for name, v in value.items() if name not in {i["name"] for i in m["inputs"] + m["outputs"]}])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              functions=list(functions.values()), producer_name="npuflow")
    model.ir_version = max(model.ir_version, 8)
    model.metadata_props.add(key="npuflow.npuf", value=str(path))
    model.metadata_props.add(key="npuflow.target", value=compiled.target_name)
    # The CPU subgraphs equal the integer programs at the optimisation level the session uses.
    model.metadata_props.add(key=LEVEL_KEY, value=level)
    write_atomic(output, model.SerializeToString())
    return model


def _inline_level(subs: list[onnx.ModelProto | None]) -> str:
    """The one graph optimisation level of the exported graph: that of most inline CPU nodes.

    The session runs each CPU subgraph at its own level (``cpu_level``: basic where every scale
    is a power of two, all otherwise), and the levels give different numbers (at ``all`` ONNX
    Runtime fuses ``DequantizeLinear -> Softmax -> QuantizeLinear`` into its own kernel).  One
    ONNX Runtime session has one level, so the subgraphs at the other one run as npuflow ops:
    a cpu-int8 model fed nv12 has its input quantize steps at scale 1 (basic) and the rest on
    float scales (all); all of them inline at ``basic`` read one step off on YOLOv8n's output.
    """
    counts = {"basic": 0, "all": 0}
    for sub in subs:
        if sub is not None and not custom_nodes(sub):
            counts[cpu_level(sub)] += len(sub.graph.node)
    return "all" if counts["all"] > counts["basic"] else "basic"


# --- running the exported model in onnxruntime --------------------------------------------------

_SESSIONS: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


def _session(npuf: str, sha256: str, beside: Path | None = None):
    """The session of the ``.npuf`` at ``npuf`` (one per file and hash).

    ``beside``: the folder of the exported ONNX model.  Where ``npuf`` is missing or changed, a
    file of the same name there with the exported sha256 is used: a deployment copies the two
    files together to another folder or machine, and the absolute path the export recorded no
    longer exists there (it was ``NPF_ORT_EXPORT_STALE``, exporting again on the device)."""
    from .runtime import Session

    with _LOCK:
        session = _SESSIONS.get((npuf, sha256))
        if session is None:
            path = Path(npuf)
            reason = None if path.is_file() else "the file is missing"
            if reason is None and file_sha256(path) != sha256:
                reason = "its sha256 differs from the exported one"
            if reason is not None and beside is not None:
                near = beside / path.name
                if near.is_file() and near.resolve() != path.resolve() and file_sha256(near) == sha256:
                    path, reason = near, None
                else:
                    reason += f", and {near} beside the ONNX model is {'not the exported file' if near.is_file() else 'missing too'}"
            if reason is not None:
                raise NpuflowError("NPF_ORT_EXPORT_STALE", path=npuf, reason=reason)
            session = _SESSIONS[(npuf, sha256)] = Session(path)
    return session


def session_options(model: str | os.PathLike | onnx.ModelProto, sess_options: Any = None):
    """``SessionOptions`` that run an exported model: its npuflow ops declared as Python ops of
    onnxruntime-extensions and the extensions library registered (``sess_options`` is updated
    when given).

    Every ``.npuf`` the model names is verified and loaded here (``NPF_ORT_EXPORT_STALE`` when it
    is missing or changed, and no file of its name and hash lies beside ``model``, a path):
    onnxruntime-extensions ends the process on an exception raised in a Python op, so nothing
    that can fail is left for the op itself.
    """
    import onnxruntime as ort

    ext = extensions()
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(os.fspath(model), load_external_data=False)
    beside = None if isinstance(model, onnx.ModelProto) else Path(model).resolve().parent
    types = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output,
                                                             *proto.graph.value_info]}
    ops = [node for node in proto.graph.node if is_npuflow_op(node)]
    for node in ops:
        if node.domain == OLD_DOMAIN:
            raise NpuflowError("NPF_ORT_EXPORT_STALE", path=str(attr_values(node)["npuf"]),
                               reason="the ONNX model was exported by an older npuflow")
        ins = [_ext_type(ext, types[n]) for n in node.input]
        outs = [_ext_type(ext, types[n]) for n in node.output]

        def op(*arrays: np.ndarray, npuf: str = "", sha256: str = "", subgraph: int = 0):
            try:
                result = _session(npuf, sha256).run_subgraph(int(subgraph), arrays)
            except BaseException as exc:
                log.critical("npuflow op of subgraph %s of %s failed (onnxruntime-extensions ends the process "
                             "on an exception in a Python op): %s", subgraph, npuf, exc)
                raise
            return result if len(result) > 1 else result[0]

        declare_pyop(node.op_type, op, ins, outs, {"npuf": ext.PyCustomOpDef.dt_string,
                                                   "sha256": ext.PyCustomOpDef.dt_string,
                                                   "subgraph": ext.PyCustomOpDef.dt_int64})
    # verified and loaded now, not in the op; after the declarations above, so that a .npuf whose
    # CPU subgraph holds a user's Python custom op registers it when the npuflow ops are known
    for node in ops:
        attrs = attr_values(node)
        _session(attrs["npuf"], attrs["sha256"], beside)
    so = sess_options if sess_options is not None else ort.SessionOptions()
    so.register_custom_ops_library(ext.get_library_path())
    level = {p.key: p.value for p in proto.metadata_props}.get(LEVEL_KEY)
    if level is not None:
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    # the inline CPU subgraphs as npuflow's sessions run them (``ort_session.disabled``: a float
    # convolution between quantized layers stays float); transformers the application left out stay out
    try:
        named = [n for n in so.get_session_config_entry(DISABLE_KEY).split(";") if n]
    except RuntimeError:  # ONNX Runtime's answer for an option not set
        named = []
    left_out = disabled(proto, named)
    if left_out:
        so.add_session_config_entry(DISABLE_KEY, ";".join(left_out))
    return so


def is_npuflow_op(node: onnx.NodeProto) -> bool:
    """Whether an exported model's node is one npuflow runs (a subgraph of the ``.npuf``), in this
    npuflow's form or an older export's."""
    return node.op_type.startswith(OP_PREFIX) and node.domain in (PYOP_DOMAIN_PREFIX + node.op_type, OLD_DOMAIN)


def _ext_type(ext, elem_type: int) -> int:
    name = onnx.TensorProto.DataType.Name(elem_type).lower()
    code = getattr(ext.PyCustomOpDef, f"dt_{name}", None)
    if code is None:
        raise NpuflowError("NPF_ORT_EXPORT_TYPE", dtype=name)
    return code
