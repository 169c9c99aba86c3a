"""An ONNX-Runtime-shaped entry to compiled models (the role of the Vitis AI Execution Provider).

An application written against ``onnxruntime.InferenceSession`` runs npuflow's integer
simulation by changing one line::

    sess = npuflow.ort.InferenceSession("quantized_model.onnx", target="DPUCZDX8G_ISA1_B4096")
    (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})

A quantized ``.onnx`` is compiled when the session starts (:func:`npuflow.compile`, as the
Vitis AI EP compiles at session creation), and the ``.npuf`` is kept in a cache
(``cache_dir``, default ``~/.cache/npuflow/compiled``) so the next start only loads it.  The
cache entry is named by ``cache_key`` (default: the key itself) and keyed by the sha256 of the
model bytes, the target's name and fingerprint and the npuflow version, stored in the entry: an
entry made from other bytes, for another target or by another npuflow version is rebuilt, a
damaged one is discarded with a warning and rebuilt, ``NPUFLOW_ENABLE_CACHE=0`` rebuilds
always.  Entries are written atomically (temporary file, then ``os.replace``), so concurrent
starts never read half a file.  A ``.npuf`` is loaded as it is.

``get_inputs()``/``get_outputs()`` give ``NodeArg``-like objects (``.name``, ``.shape``,
``.type`` such as ``"tensor(float)"``), ``run(output_names, input_feed)`` returns a list in the
order asked, ``get_modelmeta()`` the model's metadata.  ``providers`` and ``sess_options`` are
accepted so ORT code runs unchanged; ``sess_options.intra_op_num_threads`` sets the threads of
the CPU subgraphs (which run on ONNX Runtime's CPU provider).  ``close()`` / ``with`` free the
sessions now; ORT methods without a counterpart (``io_binding``, ``end_profiling`` ...) are
``NPF_ORT_UNSUPPORTED_METHOD`` naming the method, not an AttributeError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from . import __version__
from .compiler import CompiledModel, compile_model
from .errors import NpuflowError
from .model import NPUF_MAGIC
from .runtime import Session
from .targets import Target, load_target
from .outputs import CACHE_ENV, cache_enabled, cache_root  # noqa: F401  (CACHE_ENV: the switch, named here too)

log = logging.getLogger(__name__)

#: What :meth:`InferenceSession.get_providers` reports: accelerator subgraphs, then CPU subgraphs.
PROVIDERS = ["NpuflowExecutionProvider", "CPUExecutionProvider"]


def default_cache_dir() -> Path:
    """``$NPUFLOW_CACHE/compiled`` (``~/.cache/npuflow/compiled`` by default, beside fast finetune's cache)."""
    return cache_root("compiled")


@dataclass(frozen=True)
class NodeArg:
    """An input or output as ``onnxruntime.NodeArg`` describes it."""

    name: str
    shape: list[int]
    type: str  # "tensor(float)", "tensor(uint8)", ...


@dataclass(frozen=True)
class ModelMetadata:
    """``onnxruntime.ModelMetadata``'s fields, from the model the ``.npuf`` was compiled from."""

    producer_name: str
    graph_name: str
    domain: str = ""
    description: str = ""
    graph_description: str = ""
    version: int = 0
    custom_metadata_map: dict[str, str] = field(default_factory=dict)


def ort_type(dtype: str) -> str:
    """ONNX Runtime's type string of a numpy dtype name (``float32`` -> ``tensor(float)``)."""
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"


def cache_digest(model_bytes: bytes, target: Target, input_shapes: Any = None) -> str:
    """What a cache entry must have been made from: model bytes, target, npuflow version, and the
    input shapes it was frozen at when any were given."""
    h = hashlib.sha256(model_bytes)
    h.update(f"\0{target.name}\0{target.fingerprint}\0{__version__}".encode())
    if input_shapes is not None:
        h.update(b"\0" + json.dumps(input_shapes, sort_keys=True, default=list).encode())
    return h.hexdigest()


def _cached(path: Path, digest: str) -> CompiledModel | None:
    """The cache entry at ``path`` when it is sound and was made from ``digest``, else None."""
    if not path.is_file():
        return None
    try:
        compiled = CompiledModel.load(path)
    except NpuflowError as exc:
        log.warning("npuflow cache entry %s is damaged and is rebuilt: [%s] %s", path, exc.code, exc.message)
        path.unlink(missing_ok=True)
        return None
    stored = ((compiled.manifest.get("build_config") or {}).get("ort_cache") or {}).get("sha256")
    if stored != digest:
        log.info("npuflow cache entry %s was made from another model, target or version; rebuilding", path)
        return None
    return compiled


def compile_cached(model: str | os.PathLike | bytes, target: str | Target, cache_dir: str | os.PathLike | None = None,
                   cache_key: str | None = None, input_shapes: Any = None) -> tuple[CompiledModel, bool]:
    """The compiled form of quantized ONNX ``model`` (a path or the file's bytes) for ``target``,
    from the cache or compiled and stored; returns ``(compiled, came from the cache)``.
    ``input_shapes``: as :func:`npuflow.compile`'s (a dict, or a list of them for several shape sets)."""
    tgt = target if isinstance(target, Target) else load_target(target)
    data = _model_bytes(model)
    digest = cache_digest(data, tgt, input_shapes)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", cache_key) if cache_key else digest
    path = Path(cache_dir or default_cache_dir()) / f"{name}.npuf"
    if cache_enabled():
        hit = _cached(path, digest)
        if hit is not None:
            return hit, True
    compiled = compile_model(_proto(model, data), tgt, build_config={"ort_cache": {"sha256": digest, "cache_key": cache_key}},
                             input_shapes=input_shapes)
    try:
        compiled.save(path)
    except NpuflowError as exc:  # the session still runs; the next start compiles again
        log.warning("npuflow cannot cache the compiled model: [%s] %s", exc.code, exc.message)
    return compiled, False


def _model_bytes(model: str | os.PathLike | bytes) -> bytes:
    if isinstance(model, bytes):
        return model
    path = Path(model)
    if not path.is_file():
        raise NpuflowError("NPF_MODEL_NOT_FOUND", path=str(path))
    return path.read_bytes()


def _proto(model: str | os.PathLike | bytes, data: bytes) -> onnx.ModelProto | str:
    """What the compiler reads: the path (its loader's coded errors), or the parsed bytes."""
    if not isinstance(model, bytes):
        return str(model)
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path="<model bytes>", reason=str(exc) or type(exc).__name__) from None
    return proto


def _is_npuf(model: str | os.PathLike | bytes) -> bool:
    """Whether ``model`` is a compiled ``.npuf`` file: its name, or its signature as the loaders
    read it (a ``.npuf`` saved as ``model.bin`` was compiled as ONNX).  A ``.npuf``'s bytes are a
    coded error, not "a quantized ONNX model needing a target": a ``.npuf`` is opened from its
    file, whose weights stay memory-mapped."""
    if isinstance(model, bytes):
        if model.startswith(NPUF_MAGIC):
            raise NpuflowError("NPF_MODEL_NOT_ONNX", path="<model bytes>",
                               reason="they are a compiled npuflow model (.npuf), which is opened from its file: "
                                      "npuflow.ort.InferenceSession('model.npuf')")
        return False
    if not isinstance(model, (str, os.PathLike)):
        raise NpuflowError("NPF_MODEL_NOT_ONNX", path=f"a {type(model).__name__}",
                           reason="the model is a path (a quantized .onnx or a compiled .npuf), the .onnx file's "
                                  "bytes or an onnx.ModelProto")
    path = Path(model)
    if path.suffix == ".npuf":
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(NPUF_MAGIC)) == NPUF_MAGIC
    except OSError:  # missing or unreadable: the ONNX path's loader says so, coded
        return False


#: How a session compiling a quantized model is given another input size, per shape error.
_RESIZE = {
    "NPF_RUNTIME_INPUT_SHAPE": "npuflow.ort.InferenceSession(..., input_shapes={{{name!r}: {got}}})",
    "NPF_RUNTIME_SHAPE_TOO_LARGE": "npuflow.ort.InferenceSession(..., input_shapes=[{{'NAME': DIMS}}, ...]), "
                                   "a dict per shape set",
}


def _unsupported(method: str, instead: str) -> NpuflowError:
    """The coded error for an ``onnxruntime.InferenceSession`` method npuflow has no counterpart of."""
    return NpuflowError("NPF_ORT_UNSUPPORTED_METHOD", method=method, instead=instead)


class InferenceSession:
    """``onnxruntime.InferenceSession``'s interface over a compiled model (see the module docstring)."""

    def __init__(self, path_or_bytes: str | os.PathLike | bytes | onnx.ModelProto, sess_options: Any = None,
                 providers: Sequence[str | tuple] | None = None, provider_options: Sequence[dict] | None = None, *,
                 target: str | Target | None = None, cache_dir: str | os.PathLike | None = None,
                 cache_key: str | None = None, input_shapes: Any = None) -> None:
        """``input_shapes`` freezes a quantized model's dynamic dimensions at compile time, as
        ``npuflow compile --input-shape`` does: ``{"input_ids": [1, 32], ...}``, or a list of such
        dicts for several shape sets (the session runs the smallest that fits each input, padded).
        Without it a dynamic model other than in its batch is ``NPF_MODEL_DYNAMIC_SHAPE``."""
        threads = getattr(sess_options, "intra_op_num_threads", 0) or 1
        self.from_cache = False
        if isinstance(path_or_bytes, onnx.ModelProto):  # what onnx.load gave: compiled from its bytes
            path_or_bytes = path_or_bytes.SerializeToString()
        npuf = _is_npuf(path_or_bytes)
        if npuf:
            compiled = CompiledModel.load(path_or_bytes)
        else:
            if target is None:
                raise NpuflowError("NPF_RUNTIME_NO_TARGET",
                                   path="<model bytes>" if isinstance(path_or_bytes, bytes) else str(path_or_bytes))
            compiled, self.from_cache = compile_cached(path_or_bytes, target, cache_dir, cache_key, input_shapes)
        #: the npuflow session doing the work (dumps, run_op, listeners, runners)
        self.session = Session(compiled, target, cpu_threads=threads)
        self._options = sess_options
        self._compiled_here = not npuf  # its shapes are this call's input_shapes=

    # --- lifetime: ORT frees a session when it is dropped; a server swapping models frees it now
    def close(self) -> None:
        """Free the compiled model's ONNX Runtime sessions and integer programs (:meth:`Session.close`)."""
        self.session.close()

    def __enter__(self) -> "InferenceSession":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg(t.name, list(t.shape), ort_type(t.dtype)) for t in self.session.get_inputs()]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg(t.name, list(t.shape), ort_type(t.dtype)) for t in self.session.get_outputs()]

    def get_providers(self) -> list[str]:
        """The providers this model runs on: ``NpuflowExecutionProvider`` where it has an
        accelerator subgraph, then ``CPUExecutionProvider`` (always listed, as ONNX Runtime lists
        its fallback; a model compiled for cpu-int8 or with nothing on the accelerator runs there only)."""
        accel = any(sg.on_accelerator for sg in self.session.compiled.subgraphs)
        return list(PROVIDERS) if accel else PROVIDERS[1:]

    def get_provider_options(self) -> dict[str, dict[str, str]]:
        """Per provider of :meth:`get_providers` its options: the target the model was compiled for."""
        return {p: {"target": self.session.compiled.target_name} if p == PROVIDERS[0] else {}
                for p in self.get_providers()}

    def get_session_options(self) -> Any:
        """The ``sess_options`` given (None when none was): their ``intra_op_num_threads`` is the
        one option npuflow reads."""
        return self._options

    def get_overridable_initializers(self) -> list[NodeArg]:
        """None: a compiled model's weights are constants of its integer programs."""
        return []

    def io_binding(self) -> Any:
        raise _unsupported("io_binding", "pass numpy arrays to run(); outputs come back as numpy arrays")

    def run_with_iobinding(self, iobinding: Any, run_options: Any = None) -> None:
        raise _unsupported("run_with_iobinding", "pass numpy arrays to run()")

    def run_with_ort_values(self, output_names: Any, input_dict_ort_values: Any, run_options: Any = None) -> Any:
        raise _unsupported("run_with_ort_values", "pass numpy arrays to run() (OrtValue.numpy())")

    def end_profiling(self) -> str:
        raise _unsupported("end_profiling", "time the model with `npuflow bench MODEL.npuf --trace trace.json` or "
                           "session.session.add_listener(fn), which hears every subgraph's start and end")

    def set_providers(self, providers: Any = None, provider_options: Any = None) -> None:
        raise _unsupported("set_providers", "the model runs where it was compiled to run; compile it for "
                           "another target for another split")

    def get_modelmeta(self) -> ModelMetadata:
        m = self.session.compiled.manifest.get("model", {})
        return ModelMetadata(producer_name=m.get("producer", ""), graph_name=m.get("name", ""),
                             domain=m.get("domain", ""), description=m.get("description", ""),
                             graph_description=m.get("graph_description", ""), version=m.get("version", 0),
                             custom_metadata_map=dict(m.get("metadata", {})))

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, np.ndarray],
            run_options: Any = None) -> list[np.ndarray]:
        """Outputs in the order of ``output_names`` (all outputs for None or an empty list)."""
        names = [o.name for o in self.session.get_outputs()]
        if isinstance(output_names, str):  # one name, not its letters ("no output named 'l'" before)
            output_names = [output_names]
        wanted = list(output_names) if output_names else names
        for name in wanted:
            if name not in names:
                raise NpuflowError("NPF_RUNTIME_UNKNOWN_OUTPUT", name=name, outputs=", ".join(names))
        try:
            result = self.session.run(input_feed, wanted)
        except NpuflowError as exc:
            raise self._resize_named(exc) from None
        return [result[n] for n in wanted]

    def _resize_named(self, exc: NpuflowError) -> NpuflowError:
        """A shape error of a model this session compiled, its hint naming this session's
        ``input_shapes=`` (the runtime's names ``npuflow compile``, which this user never ran)."""
        if not self._compiled_here or exc.code not in _RESIZE:
            return exc
        return NpuflowError(exc.code, **{**exc.fields, "resize": _RESIZE[exc.code].format(**exc.fields)})
