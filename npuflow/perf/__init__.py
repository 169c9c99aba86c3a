"""Static performance estimate from the target file (``npuflow perf``).

:func:`perf` takes an ONNX model (float or quantized) or a compiled ``.npuf`` file, asks
the checker where every node runs (its placement map, :mod:`npuflow.placement`), costs each NPU layer on its engine
(:mod:`npuflow.perf.cost`), times CPU parts with ONNX Runtime on this host, and returns a
:class:`PerfReport`; :func:`write_report` writes ``perf_result/<name>/``.  The model behind the
numbers is documented in ``docs/perf-model.md``.
"""

from .estimate import PerfReport, estimate
from .model_perf import perf
from .report import write_report

__all__ = ["PerfReport", "estimate", "perf", "write_report"]
