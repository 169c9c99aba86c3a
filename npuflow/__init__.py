"""npuflow: an open toolchain from float ONNX models to INT8 NPU/DPU deployments.

Public API (each stage is a small module; data flows one way, see ARCHITECTURE in docs/):

* :func:`load` - read and normalise an ONNX model (``npuflow.model``)
* :func:`load_target`, :class:`Target` - target descriptions (``npuflow.targets``)
* :class:`NpuflowError` - the one error type, with stable codes (``npuflow.errors``)
* :func:`register_op`, :func:`register_op_library` - a custom operator's Python or ONNX Runtime library implementation (``npuflow.custom_ops``)
* :func:`check` -> :class:`CheckReport` - NPU/CPU placement of every node, with reasons, and the subgraphs (``npuflow.check``)
* :func:`quantize` -> :class:`QuantizedModel`, :class:`QuantConfig` - post-training quantization (``npuflow.quant``)
* :func:`compile` -> :class:`CompiledModel` - quantized model to a ``.npuf`` (``npuflow.compiler``)
* :class:`Session` - run a compiled model (``npuflow.runtime``)
* :func:`build` - the whole conversion from an hb_mapper-style YAML config (``npuflow.build``)
"""

__version__ = "0.1.0"

import sys as _sys

try:
    from .errors import NpuflowError  # noqa: E402
    from .custom_ops import register_op, register_op_library  # noqa: E402
    from .model import load  # noqa: E402
    from .targets import Target, list_targets, load_target  # noqa: E402
    from .check import CheckReport, check  # noqa: E402
    from .quant import QuantConfig, QuantizedModel, quantize  # noqa: E402
    from .compiler import CompiledModel  # noqa: E402
    from .compiler import compile_model as compile  # noqa: E402,A001
    from .runtime import Session  # noqa: E402
    from .build import build  # noqa: E402  (last: it imports the stages above)
except KeyboardInterrupt:
    # ``python -m npuflow`` imports this package before ``__main__`` can catch anything, so a
    # Ctrl-C in these seconds would be a traceback; Python sets argv[0] to "-m" while it
    # locates the module.  Everywhere else the importer owns the interrupt.
    if _sys.argv[:1] != ["-m"]:
        raise
    from npuflow_launcher import interrupted

    interrupted()



def __getattr__(name: str):
    """``npuflow.ort`` and ``npuflow.ort_export`` after a plain ``import npuflow``, as the README
    writes them (``npuflow.ort.InferenceSession(...)`` was an AttributeError without ``import
    npuflow.ort``); imported on first use, since they load onnxruntime-extensions."""
    if name in ("ort", "ort_export"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'npuflow' has no attribute {name!r}")


__all__ = ["CheckReport", "CompiledModel", "NpuflowError", "QuantConfig", "QuantizedModel", "Session", "Target",
           "__version__", "build", "check", "compile", "list_targets", "load", "load_target", "quantize", "register_op", "register_op_library"]
