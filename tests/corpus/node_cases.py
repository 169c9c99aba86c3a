"""ONNX's own operator test cases (``onnx.backend.test.case.node``) as a corpus of single nodes.

Every case of the installed onnx (the plain and the ``_expanded`` function-body variants) whose
model the installed ONNX Runtime can load goes through ``npuflow.check``: it must place the node
or refuse with a coded error, never crash.  The QuantizeLinear/DequantizeLinear cases also go
through ``compile`` and ``Session.run`` and must reproduce ONNX's expected outputs (or refuse with
a code).  Checks run in-process (thousands of cases; one CLI process each would take hours);
"no traceback" here means no exception other than :class:`npuflow.NpuflowError`.
"""

from __future__ import annotations

import time
import traceback
import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx

from tests.corpus.harness import Stage

#: op types whose cases also compile and run against the expected outputs.
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class NodeCase:
    name: str
    op_type: str
    model: onnx.ModelProto
    inputs: tuple[np.ndarray, ...]
    outputs: tuple[np.ndarray, ...]
    rtol: float
    atol: float


def _at_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto | None:
    """The case with its default-domain opset set to ``version``, if the node is valid there."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = version
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception:  # noqa: BLE001  (not valid at that opset)
        return None
    return m


def runnable(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The case as ONNX Runtime runs it: as written, else at the newest older opset it has a kernel
    for (onnx writes every case at its newest opset, e.g. QuantizeLinear-28, ahead of ORT)."""
    if _ort_loads(model):
        return model
    current = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    for version in range(current - 1, 12, -1):
        m = _at_opset(model, version)
        if m is not None and _ort_loads(m):
            return m
    return None


def _feeds(model: onnx.ModelProto, inputs: tuple) -> dict:
    inits = {t.name for t in model.graph.initializer}
    return dict(zip([i.name for i in model.graph.input if i.name not in inits], inputs))


def _ort_loads(model: onnx.ModelProto) -> bool:
    """ONNX Runtime has kernels for the case (its Python binding may still not take some input
    types, such as int2: npuflow must then refuse with a code, not crash)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001  (any refusal means this ORT does not run the case)
        return False
    return True


@lru_cache(maxsize=1)
def cases() -> tuple[NodeCase, ...]:
    """The installed onnx's node cases that the installed ONNX Runtime runs (:func:`runnable`), by name."""
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collected = node.collect_testcases(None)
    out = []
    seen = set()
    for c in sorted(collected, key=lambda c: c.name):
        if not c.data_sets or c.name in seen:
            continue
        seen.add(c.name)
        inputs, outputs = (tuple(_array(x) for x in xs) for xs in c.data_sets[0])
        model = runnable(c.model)
        if model is None:
            continue
        op_type = model.graph.node[-1].op_type if model.graph.node else ""
        out.append(NodeCase(c.name, op_type, model, inputs, outputs, c.rtol, c.atol))
    return tuple(out)


def _array(value: object) -> object:
    """A case value as users pass it: an ndarray (onnx keeps float8/int4 values as TensorProto
    and scalars as numpy scalars); sequences and optionals stay as they are."""
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, np.generic):
        return np.asarray(value)
    return value


def _crash(exc: BaseException, start: float) -> Stage:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return Stage("traceback", detail=f"{type(exc).__name__}: {exc} at {frame.filename}:{frame.lineno}"[:300],
                 seconds=time.monotonic() - start)


def check_case(case: NodeCase, target: str) -> Stage:
    """``npuflow.check`` on the case's model: ok (placed) or a coded refusal, never an exception."""
    import npuflow

    start = time.monotonic()
    try:
        report = npuflow.check(case.model, target)
    except npuflow.NpuflowError as exc:
        return Stage("refused", code=exc.code, detail=npuflow.errors.error_text(exc)[:300], seconds=time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001  (the finding: an uncoded crash)
        return _crash(exc, start)
    s = report.summary
    return Stage("ok", detail=f"{s['npu_nodes']} NPU / {s['cpu_nodes']} CPU", seconds=time.monotonic() - start)


def run_case(case: NodeCase, target: str) -> Stage:
    """Compile and run a Q/DQ case; its outputs must equal ONNX's (integers exactly)."""
    import npuflow

    start = time.monotonic()
    try:
        outs = npuflow.Session(npuflow.compile(case.model, target)).run(_feeds(case.model, case.inputs))
    except npuflow.NpuflowError as exc:
        return Stage("refused", code=exc.code, detail=npuflow.errors.error_text(exc)[:300], seconds=time.monotonic() - start)
    except Exception as exc:  # noqa: BLE001
        return _crash(exc, start)
    got = list(outs.values()) if isinstance(outs, dict) else list(outs)
    for want, have in zip(case.outputs, got, strict=False):
        have = np.asarray(have)
        if have.shape != want.shape or have.dtype != want.dtype:
            return Stage("wrong", detail=f"got {have.dtype}{list(have.shape)}, expected {want.dtype}{list(want.shape)}",
                         seconds=time.monotonic() - start)
        same = (np.array_equal(have, want) if not np.issubdtype(want.dtype, np.floating)
                else np.allclose(have, want, rtol=case.rtol, atol=case.atol))
        if not same:
            diff = np.abs(have.astype(np.float64) - want.astype(np.float64)).max()
            return Stage("wrong", detail=f"output differs from ONNX's expected one by up to {diff:g}",
                         seconds=time.monotonic() - start)
    return Stage("ok", seconds=time.monotonic() - start)
