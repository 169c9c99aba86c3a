"""PyTorch front end: inspect, quantize and quantization-aware-train an ``nn.Module``.

torch is an optional dependency (``pip install npuflow[torch]``): nothing in the core package
imports this subpackage; importing it imports torch.

* :func:`prepare_qat` -> :class:`QatModel` (train it with your own loop) -> :func:`export_qat`;
  :func:`distributed` wraps it for torch DDP, :func:`save_checkpoint` / :func:`load_checkpoint` resume it
* :func:`inspect` -> checker report with each node's module path and source line
* :func:`quantize` -> post-training quantization of a module through ONNX
* :func:`compile` -> ``torch.compile`` with the ``"npuflow"`` backend: captured graphs run as
  compiled INT8 models (:mod:`.dynamo`)
"""

from ..fake_quant import QuantSpec, fake_quantize
from .config import QatConfig
from .dynamo import compile  # noqa: A001  (npuflow.torch.compile, like torch.compile)
from .inspect import inspect
from .ptq import quantize
from .qat import QatModel, distributed, export_qat, load_checkpoint, prepare_qat, save_checkpoint
from .quantizer import FakeQuantizer

__all__ = ["FakeQuantizer", "QatConfig", "QatModel", "QuantSpec", "compile", "distributed", "export_qat",
           "fake_quantize", "inspect", "load_checkpoint", "prepare_qat", "quantize", "save_checkpoint"]
