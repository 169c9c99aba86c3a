"""A manifest validated piece by piece: the same verdict as one ``Manifest`` of the whole file,
without a tree of it.

``Manifest.model_validate`` builds a pydantic object for every tensor, blob, subgraph and op, as
large as the parsed JSON it checks (PP-OCRv4 rec on cpu-int8: 1.22 MB of objects against the
parse's 1.05 MB) and alive beside it.  Python's allocator keeps the pools those objects used once
they are freed (an arena goes back to the system only when wholly free, and not the last one with
free pools) and ``malloc_trim`` cannot reach them, so a load kept that high-water mark for the
session's life: rec cpu-int8 103 unused 16 KiB pools and one more arena after the load, against 40
and none without the validation.  Here the manifest less its three tables is one ``Manifest``, and
each tensor, blob and subgraph is validated alone and dropped; the checks of
:mod:`.manifest_check` then read the tables through :class:`Lazy` views, which validate an entry
each time it is read (small objects, freed at once).  The manifest has no validator across
fields, so the pieces pass exactly where the whole does; where a piece is refused,
:func:`.manifest_check.validate` validates the whole manifest for its error, so a damaged file is
reported as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .manifest_schema import Blob, Manifest, Subgraph, Tensor

_TENSOR = TypeAdapter(Tensor)
_BLOB = TypeAdapter(Blob)
_SUBGRAPH = TypeAdapter(Subgraph)


class Lazy(Mapping):
    """A table of the manifest (name -> JSON) read as models, each validated when read."""

    def __init__(self, raw: dict, adapter: TypeAdapter, context: dict) -> None:
        self._raw, self._adapter, self._context = raw, adapter, context

    def __getitem__(self, name: str) -> Any:
        return self._adapter.validate_python(self._raw[name], context=self._context)

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __contains__(self, name: object) -> bool:
        return name in self._raw


class LazyList(Sequence):
    """The subgraphs read as models, each validated when read."""

    def __init__(self, raw: list, context: dict) -> None:
        self._raw, self._context = raw, context

    def __getitem__(self, k: int) -> Any:  # type: ignore[override]  (no slices: the checks index one subgraph)
        return _SUBGRAPH.validate_python(self._raw[k], context=self._context)

    def __len__(self) -> int:
        return len(self._raw)


def pieces(manifest: object, context: dict) -> Manifest | None:
    """``manifest`` as a ``Manifest`` whose tensors, blobs and subgraphs are lazy views, each piece
    validated once on the way; None where some piece (or the tables' form) is refused."""
    if not isinstance(manifest, dict):
        return None
    tensors, blobs, subgraphs = manifest.get("tensors"), manifest.get("blobs"), manifest.get("subgraphs")
    if not (isinstance(tensors, dict) and isinstance(blobs, dict) and isinstance(subgraphs, list) and subgraphs
            and all(type(k) is str for k in [*tensors, *blobs])):
        return None
    try:
        smallest = min(subgraphs, key=lambda sg: len(sg.get("ops") or ()) if isinstance(sg, dict) else 0)
        rest = Manifest.model_validate({**manifest, "tensors": {}, "blobs": {}, "subgraphs": [smallest]},
                                       context=context)
        for adapter, table in ((_TENSOR, tensors), (_BLOB, blobs)):
            for value in table.values():
                adapter.validate_python(value, context=context)
        for sg in subgraphs:
            _SUBGRAPH.validate_python(sg, context=context)
    except ValidationError:
        return None
    return rest.model_copy(update={"tensors": Lazy(tensors, _TENSOR, context), "blobs": Lazy(blobs, _BLOB, context),
                                   "subgraphs": LazyList(subgraphs, context)})
