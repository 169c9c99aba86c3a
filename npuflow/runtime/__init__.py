"""Runtime: ``Session`` runs a compiled model (``.npuf``); ``Runner`` is the VART-style
per-subgraph API.  Imports :mod:`npuflow.numerics` for all integer arithmetic, never the
quantizer."""

from .runner import Runner, TensorInfo
from .session import Session, SubgraphEvent, set_blas_threads

__all__ = ["Runner", "Session", "SubgraphEvent", "TensorInfo", "set_blas_threads"]
