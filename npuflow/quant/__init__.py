"""Post-training quantization to the QDQ ONNX format of docs/quantized-model-format.md.

Modules, in pipeline order: :mod:`.config` (typed layered config), :mod:`.data` (calibration
sources), :mod:`.legalize` (target arithmetic), :mod:`.plan` (where quantize steps go),
:mod:`.observers` / :mod:`.calibrate` / :mod:`.thresholds` (streaming statistics),
:mod:`.params` / :mod:`.assign` (scales and integers), :mod:`.export` (QDQ writer),
:mod:`.quant_info`, :mod:`.report`, :mod:`.pipeline` (:func:`quantize`).
"""

from .config import FastFinetune, LayerOverride, QuantConfig, TensorSettings, TensorSpec
from .params import TensorQuant
from .pipeline import QuantizedModel, quantize
from .report import QuantReport

__all__ = ["FastFinetune", "LayerOverride", "QuantConfig", "QuantReport", "QuantizedModel", "TensorQuant",
           "TensorSettings", "TensorSpec", "quantize"]
