"""npuflow: an open toolchain from float ONNX models to INT8 NPU/DPU deployments.

Public API (each stage is a small module; data flows one way, see ARCHITECTURE in docs/):

* :func:`load` - read and normalise an ONNX model (``npuflow.model``)
* :func:`load_target`, :class:`Target` - target descriptions (``npuflow.targets``)
* :class:`NpuflowError` - the one error type, with stable codes (``npuflow.errors``)
* :func:`build` - the whole conversion from an hb_mapper-style YAML config (``npuflow.build``)
"""

from .errors import NpuflowError
from .model import load
from .targets import Target, list_targets, load_target
from .build import build  # noqa: E402  (last: it imports the stages above)

__version__ = "0.1.0"

__all__ = ["NpuflowError", "Target", "__version__", "build", "list_targets", "load", "load_target"]
