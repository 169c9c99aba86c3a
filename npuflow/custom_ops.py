"""Custom operators: ops of the user's own domain, implemented by the user in Python.

A model may contain operators no standard runtime knows (a PointPillars-style scatter, a custom
activation): Vitis AI and Horizon's toolchains take them as "custom ops" that stay on the CPU
with the user's implementation.  Here the user registers a numpy function per op type::

    @npuflow.register_op("MySwish", domain="com.example", attrs={"beta": float})
    def my_swish(x, beta=1.0):
        return x / (1.0 + np.exp(-beta * x))

or an ONNX Runtime custom-op library (a compiled ``.so``/``.dll``, the C++ implementations a
Vitis AI custom-op workflow produces) for a domain::

    npuflow.register_op_library("libmy_ops.so", domain="com.example")

and every stage accepts the model: ``check`` places the op on the CPU (reason "custom op"),
``quantize`` keeps it in float with Q/DQ at its boundary, ``compile`` leaves it in a CPU subgraph,
and :class:`npuflow.Session` runs it.  Implementations can also come from installed packages, as
entry points of the group ``npuflow.ops`` (each a callable that registers its ops), loaded the
first time a model names an unknown custom op.  A ``.npuf`` never carries executable code: a
compiled model whose custom op is not registered in the running process is the coded error
``NPF_MODEL_CUSTOM_OP`` when the session opens, naming the op and how to register it.

Execution: every stage runs models on ONNX Runtime (:mod:`npuflow.ort_session`); custom ops run
there as Python ops of onnxruntime-extensions (an optional dependency, ``pip install npuflow[ort]``).
Each is declared once per process, in a domain of its own (:func:`declare_pyop` says why), so the
session's copy of the model has each custom node renamed into that domain (:func:`for_onnxruntime`).
onnxruntime-extensions ends the process when a Python op raises, so the registered function is
called inside a guard: an exception is recorded, the op returns an empty array, and
:func:`raise_recorded` (called after every run by the session wrapper) turns it into
``NPF_CUSTOM_OP_FAILED`` naming the op and the exception.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import onnx

from .errors import NpuflowError, error_text

log = logging.getLogger(__name__)

#: Prefix of the domains npuflow declares Python ops in: one domain per op (see :func:`declare_pyop`).
PYOP_DOMAIN_PREFIX = "npuflow.pyop."
#: Entry-point group of packages that register custom ops.
ENTRY_POINT_GROUP = "npuflow.ops"

_TYPES = {"float": "float32", "float32": "float32", "float16": "float16", "double": "float64", "int8": "int8",
          "uint8": "uint8", "int16": "int16", "int32": "int32", "int64": "int64", "bool": "bool"}
_ATTR_TYPES = {int: "dt_int64", float: "dt_float", str: "dt_string"}
#: numpy dtype name -> onnxruntime-extensions' type constant.
_PYOP_TYPES = {"float32": "dt_float", "float16": "dt_float16", "float64": "dt_double", "int8": "dt_int8",
               "uint8": "dt_uint8", "int16": "dt_int16", "int32": "dt_int32", "int64": "dt_int64", "bool": "dt_bool"}


@dataclass(frozen=True)
class CustomOp:
    """One registered custom operator."""

    domain: str
    op_type: str
    fn: Callable[..., Any] | None  # None: the op comes from ``library``
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    attrs: tuple[tuple[str, type], ...] = ()
    library: str | None = None  # an ONNX Runtime custom-op library that implements the op

    @property
    def key(self) -> tuple[str, str]:
        return self.domain, self.op_type

    @property
    def pyop_type(self) -> str:
        """The op's name as a Python op of onnxruntime-extensions (unique per domain and type)."""
        return f"{self.domain.replace('.', '_')}__{self.op_type}"

    @property
    def source(self) -> str:
        if self.library is not None:
            return f"from the ONNX Runtime library {self.library}"
        return f"{getattr(self.fn, '__module__', '?')}.{getattr(self.fn, '__qualname__', repr(self.fn))}"


_REGISTRY: dict[tuple[str, str], CustomOp] = {}
#: domain -> [(library path, the op types it provides; None: every op of the domain)]
_LIBRARIES: dict[str, list[tuple[str, frozenset[str] | None]]] = {}
#: op type -> the domain its Python op was declared in (once per process, see :func:`declare_pyop`)
_DECLARED: dict[str, str] = {}
_LOCK = threading.Lock()
_ERRORS: list[tuple[CustomOp, BaseException]] = []
_entry_points_loaded = False


def register_op(op_type: str, fn: Callable[..., Any] | None = None, *, domain: str,
                inputs: tuple[str, ...] | list[str] = ("float",), outputs: tuple[str, ...] | list[str] = ("float",),
                attrs: Mapping[str, type] | None = None):
    """Register ``fn(*inputs, **attrs) -> array | tuple of arrays`` as ``domain:op_type``.

    ``inputs``/``outputs``: the element types of the op's tensors in order (``"float"``,
    ``"int64"``, ...; ONNX Runtime needs them declared); ``attrs``: the node attributes passed to
    ``fn``, by type (``int``, ``float``, ``str``).  Usable as a decorator.  Registering the same op
    again replaces the function (ONNX Runtime keeps the first declaration of the types)."""
    if fn is None:
        return lambda f: register_op(op_type, f, domain=domain, inputs=inputs, outputs=outputs, attrs=attrs)
    if not domain or domain in ("ai.onnx", "ai.onnx.ml", "com.microsoft"):
        raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=op_type, reason=f"domain {domain!r} is a standard one; "
                           "give the custom domain the model uses (e.g. 'com.example')")
    if "::" in domain or "::" in op_type:
        raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=op_type, reason=f"'::' in {domain}:{op_type}; "
                           "onnxruntime-extensions splits a Python op's name there (rename the op or domain)")
    for t in (*inputs, *outputs):
        if t not in _TYPES:
            raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=op_type,
                               reason=f"tensor type {t!r} is not one of {', '.join(sorted(_TYPES))}")
    for name, kind in (attrs or {}).items():
        if kind not in _ATTR_TYPES:
            raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=op_type,
                               reason=f"attribute {name!r} has type {kind!r}; use int, float or str")
    op = CustomOp(domain, op_type, fn, tuple(inputs), tuple(outputs), tuple((attrs or {}).items()))
    with _LOCK:
        _REGISTRY[op.key] = op
    return fn


def register_op_library(path: str | os.PathLike, *, domain: str, op_types: Iterable[str] | None = None) -> None:
    """Register an ONNX Runtime custom-op library (``.so``/``.dll``/``.dylib``) as the implementation
    of the ops of ``domain`` (only ``op_types`` when given).  Every ONNX Runtime session npuflow
    opens on a model with such an op loads the library; the op stays on the CPU as any custom op.
    The library is loaded once here, so a file ONNX Runtime cannot load is refused at once."""
    import onnxruntime as ort

    lib = Path(path).resolve()
    if not lib.is_file():
        raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=f"{domain}:*",
                           reason=f"the library {str(path)!r} is not a file")
    if not domain or domain in ("ai.onnx", "ai.onnx.ml", "com.microsoft"):
        raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=f"{domain}:*", reason=f"domain {domain!r} is a "
                           "standard one; give the custom domain the model uses (e.g. 'com.example')")
    try:
        ort.SessionOptions().register_custom_ops_library(str(lib))
    except Exception as exc:  # ONNX Runtime's own error types
        raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=f"{domain}:*",
                           reason=f"ONNX Runtime cannot load the library {lib}: {exc}") from None
    with _LOCK:
        _LIBRARIES.setdefault(domain, []).append((str(lib), None if op_types is None else frozenset(op_types)))


def load_register_files(files: Iterable[str | os.PathLike], folder: str | os.PathLike | None = None) -> list[Path]:
    """Run each Python file that registers custom ops (Horizon's ``custom_op: {op_register_files,
    custom_op_dir}``): names are relative to ``folder``.  The files are the user's own code, named
    in their own config; a missing file or one that raises is ``NPF_CUSTOM_OP_BAD_REGISTRATION``."""
    import runpy

    ran = []
    for name in files:
        path = (Path(folder) / name) if folder is not None else Path(name)
        if not path.is_file():
            raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=str(name), reason=f"register file {path} is not a file")
        try:
            runpy.run_path(str(path), run_name=f"npuflow_custom_ops_{path.stem}")
        except NpuflowError:
            raise
        except BaseException as exc:  # the user's file: any failure is reported with its name
            raise NpuflowError("NPF_CUSTOM_OP_BAD_REGISTRATION", op=str(name),
                               reason=f"register file {path} failed: {type(exc).__name__}: {exc}") from None
        ran.append(path)
    return ran


def has_registrations() -> bool:
    return bool(_REGISTRY) or bool(_LIBRARIES)


def lookup(domain: str, op_type: str) -> CustomOp | None:
    """The registered op (a Python function, else a library's), loading the ``npuflow.ops``
    entry points once when it is unknown."""
    global _entry_points_loaded
    op = _find(domain, op_type)
    if op is None and not _entry_points_loaded:
        _entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()()
            except Exception as exc:  # a broken plugin is reported, not fatal to models that do not use it
                log.warning("custom-op entry point %s failed: %s", ep.name, exc)
        op = _find(domain, op_type)
    return op


def _find(domain: str, op_type: str) -> CustomOp | None:
    op = _REGISTRY.get((domain, op_type))
    if op is not None:
        return op
    for lib, types in _LIBRARIES.get(domain, ()):
        if types is None or op_type in types:
            return CustomOp(domain, op_type, None, library=lib)
    return None


def custom_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, CustomOp | None]]:
    """Every node of a non-standard domain that no model-local function defines, with its
    registration (None when unregistered); subgraphs of control flow included."""
    from .graph import subgraphs
    from .model_checks import KNOWN_DOMAINS

    local = {(f.domain, f.name) for f in model.functions}
    found: list[tuple[onnx.NodeProto, CustomOp | None]] = []

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ours = _DECLARED.get(node.op_type) == node.domain  # a Python op npuflow declared (renamed node)
            if node.domain not in KNOWN_DOMAINS and not ours and (node.domain, node.op_type) not in local:
                found.append((node, lookup(node.domain, node.op_type)))
            for g in subgraphs(node):
                walk(g)

    walk(model.graph)
    return found


def for_onnxruntime(model: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """The model as ONNX Runtime runs it: custom nodes registered as Python functions renamed into
    onnxruntime-extensions' domain and their Python ops declared; ``(model, uses_python_ops)``.
    A copy is made only when the model has such nodes (library ops stay as they are)."""
    from .graph import subgraphs

    nodes = [(n, op) for n, op in custom_nodes(model) if op is not None and op.library is None]
    if not nodes:
        return model, False
    out = onnx.ModelProto()
    out.CopyFrom(model)
    renamed = {op.key: (op, _declare_custom_op(op)) for _, op in nodes}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            op, domain = renamed.get((node.domain, node.op_type), (None, ""))
            if op is not None:
                node.domain, node.op_type = domain, op.pyop_type
            for g in subgraphs(node):
                walk(g)

    walk(out.graph)
    imported = {o.domain for o in out.opset_import}
    for domain in sorted({domain for _, domain in renamed.values()} - imported):
        out.opset_import.add(domain=domain, version=1)
    return out, True


def extensions():
    """The onnxruntime-extensions module, or the coded error saying how to install it."""
    try:
        import onnxruntime_extensions
    except ImportError:
        raise NpuflowError("NPF_ORT_EXTENSIONS_MISSING") from None
    return onnxruntime_extensions


def declare_pyop(op_type: str, fn: Callable[..., Any], inputs: list[int], outputs: list[int],
                 attrs: Mapping[str, int]) -> str:
    """Declare ``fn`` as the onnxruntime-extensions Python op ``op_type`` (types and attributes as
    ``PyCustomOpDef`` constants) once per process, in a domain of its own; the domain is returned
    (a node runs the op under that domain; a later call for the same op type returns it again).

    Why a domain of its own: onnxruntime-extensions keeps the Python ops of one domain in one
    ``std::vector``, and every ONNX Runtime session (and ``SessionOptions``) that registered its
    library points into that vector.  Declaring another op in the same domain can reallocate it,
    and every session still alive then calls through freed memory on its next run or when it is
    destroyed (a segfault, often in a later garbage collection).  A domain that holds one op is a
    vector that never grows; the extensions library registers each domain with every session."""
    ext = extensions()
    with _LOCK:
        domain = _DECLARED.get(op_type)
        if domain is not None:
            return domain
        domain = _DECLARED[op_type] = PYOP_DOMAIN_PREFIX + op_type
        # onnxruntime-extensions keeps the callable alive (its registry of Opdefs) for the process
        ext.onnx_op(op_type=f"{domain}::{op_type}", inputs=inputs, outputs=outputs, attrs=dict(attrs))(fn)
    return domain


def _declare_custom_op(op: CustomOp) -> str:
    """Declare the Python op running ``op``'s registered function (the latest registration of its
    domain and type at each call), once per process; its domain."""
    dt = extensions().PyCustomOpDef
    key = op.key

    def call(*arrays: np.ndarray, **attrs: Any):
        current = _REGISTRY[key]  # the latest registration
        try:
            result = current.fn(*arrays, **attrs)
            values = result if isinstance(result, tuple) else (result,)
            if len(values) != len(current.outputs):
                raise ValueError(f"returned {len(values)} value(s) for {len(current.outputs)} declared output(s)")
            cast = tuple(np.ascontiguousarray(v, dtype=_TYPES[t]) for v, t in zip(values, current.outputs))
        except BaseException as exc:  # raising here would end the process (see the module docstring)
            with _LOCK:
                _ERRORS.append((current, exc))
            cast = tuple(np.zeros(0, dtype=_TYPES[t]) for t in current.outputs)
        return cast if len(cast) > 1 else cast[0]

    return declare_pyop(op.pyop_type, call, [getattr(dt, _PYOP_TYPES[_TYPES[t]]) for t in op.inputs],
                        [getattr(dt, _PYOP_TYPES[_TYPES[t]]) for t in op.outputs],
                        {name: getattr(dt, _ATTR_TYPES[kind]) for name, kind in op.attrs})


def raise_recorded() -> None:
    """Raise ``NPF_CUSTOM_OP_FAILED`` for the first exception a custom op recorded (and forget them)."""
    with _LOCK:
        if not _ERRORS:
            return
        op, exc = _ERRORS[0]
        _ERRORS.clear()
    raise NpuflowError("NPF_CUSTOM_OP_FAILED", op=f"{op.domain}:{op.op_type}", source=op.source,
                       reason=f"{type(exc).__name__}: {error_text(exc)}")
