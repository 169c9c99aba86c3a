"""PyTorch front end: inspect, quantize and quantization-aware-train an ``nn.Module``.

torch is an optional dependency (``pip install npuflow[torch]``): nothing in the core package
imports this subpackage; importing it imports torch.

* :func:`prepare_qat` -> :class:`QatModel` (train it with your own loop) -> :func:`export_qat`
* :func:`inspect` -> checker report with each node's module path and source line
* :func:`quantize` -> post-training quantization of a module through ONNX
* :func:`compile` -> ``torch.compile`` with the ``"npuflow"`` backend: captured graphs run as
  compiled INT8 models (:mod:`.dynamo`)
"""

from .config import QatConfig
from .dynamo import compile  # noqa: A001  (npuflow.torch.compile, like torch.compile)
from ..fake_quant import QuantSpec, fake_quantize
from .inspect import inspect
from .ptq import quantize
from .qat import QatModel, export_qat, prepare_qat
from .quantizer import FakeQuantizer

__all__ = ["FakeQuantizer", "QatConfig", "QatModel", "QuantSpec", "compile", "export_qat", "fake_quantize", "inspect",
           "prepare_qat", "quantize"]
