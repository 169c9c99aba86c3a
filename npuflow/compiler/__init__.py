"""Compiler: quantized ONNX -> integer programs for the accelerator + ONNX for the CPU, in one
``.npuf`` file (the role of Vitis AI's ``vai_c`` / ``.xmodel`` and Horizon's ``.bin``).

* :func:`compile_model` (exported as ``npuflow.compile``) -> :class:`CompiledModel`
* :class:`CompiledModel` ``.save(path)`` / ``CompiledModel.load(path)`` (the ``.npuf`` format,
  :mod:`npuflow.compiler.artifact`)
"""

from .compile import compile_model
from .compiled import CompiledModel, SubgraphInfo

__all__ = ["CompiledModel", "SubgraphInfo", "compile_model"]
