"""The model checker: per-node NPU/CPU placement with exact reasons, and the NPU subgraphs.

``check(model, target)`` returns a :class:`CheckReport`; :mod:`.render` turns it into the
console table, the ``inspect_<target>.txt``/``.json`` files and a Graphviz picture.
"""

from .place import check, prepare
from .report import CPU, NPU, CheckReport, NodeReport, Subgraph

__all__ = ["CPU", "NPU", "CheckReport", "NodeReport", "Subgraph", "check", "prepare"]
