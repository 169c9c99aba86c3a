"""The one way npuflow opens an ONNX Runtime session.

Every stage runs models on ONNX Runtime's CPU provider: the shape probe, calibration, fast
finetune's captures, the compiler's constant fragments, the runtime's CPU subgraphs and fused
integer runs, and perf's CPU timing.  Their sessions differ in three settings only, which are the
arguments here:

* ``level``: the graph optimisation level.  It changes numbers, not only speed: at ``"all"``
  ONNX Runtime fuses Q/DQ pairs into integer ``QLinear*`` kernels, at ``"basic"`` it runs Q/DQ in
  float.  The runtime's exactness contract names the level it compares with, so every caller
  states it (``"disable"`` for probes that must see the graph as written).
* ``threads``: intra-op threads (0: ONNX Runtime's default, one per core; inter-op always 1,
  npuflow's graphs being small or sequential).
* ``spinning``: whether idle pool threads spin.  Off where sessions run beside other work (the
  calibration pipeline, several runtime sessions), where spinning threads steal the cores.

ONNX Runtime's own log is kept to errors, and a model of a newer IR version than the bundled
ONNX Runtime reads is handed over at :data:`npuflow.model.MAX_IR_VERSION` (the operators are what
matter; the IR bump adds nothing these models use).
"""

from __future__ import annotations

from typing import Literal

import onnx

from .errors import NpuflowError

Level = Literal["disable", "basic", "all"]

_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "all": "ORT_ENABLE_ALL"}


def options(*, level: Level = "all", threads: int = 0, spinning: bool = True):
    """``onnxruntime.SessionOptions`` with npuflow's settings (see the module docstring)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def open_session(model: onnx.ModelProto | bytes, *, level: Level = "all", threads: int = 0,
                 spinning: bool = True, what: str = "load"):
    """An ``onnxruntime.InferenceSession`` on the CPU provider; a model ONNX Runtime refuses is
    ``NPF_MODEL_INVALID`` ("ONNX Runtime cannot {what} the model: ...")."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(_serialized(model), options(level=level, threads=threads, spinning=spinning),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"ONNX Runtime cannot {what} the model: {exc}") from None


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
