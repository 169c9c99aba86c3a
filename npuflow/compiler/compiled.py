"""``CompiledModel``: the in-memory form of a ``.npuf`` (a manifest plus named blobs)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifact


@dataclass(frozen=True)
class SubgraphInfo:
    """Static facts about one subgraph (for ``npuflow info``, perf estimates and traces)."""

    id: int
    name: str
    device: str  # the target's device label (DPU, BPU, ...) or CPU
    engine: str  # "integer" (the integer executor) or "onnx" (ONNX Runtime)
    inputs: list[str]
    outputs: list[str]
    op_counts: dict[str, int]
    macs: int
    weight_bytes: int
    activation_bytes: int
    ops: list[dict] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    @property
    def on_accelerator(self) -> bool:
        return self.engine == "integer"


class CompiledModel:
    """A compiled model: ``manifest`` (JSON-able dict) and blobs (arrays, or bytes of ONNX)."""

    def __init__(self, manifest: dict, blobs: dict[str, np.ndarray | bytes] | None = None,
                 reader: Callable[[str], np.ndarray | bytes] | None = None, source: Path | None = None) -> None:
        self.manifest = manifest
        self._blobs = blobs or {}
        self._reader = reader
        self.source = source

    # --- I/O --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npuf`` file atomically."""
        names = self.blob_names()
        blobs = {n: self.blob(n) for n in names}
        body = {k: v for k, v in self.manifest.items() if k != "blobs"}
        return artifact.write(path, body, blobs)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CompiledModel":
        """Open and verify a ``.npuf`` (coded errors for any damage); weights stay memory-mapped."""
        f = artifact.NpufFile(path)

        def read(name: str):
            return f.blob_bytes(name) if name.endswith(".onnx") else f.blob(name)

        model = cls(f.manifest, reader=read, source=Path(path))
        model._file = f
        return model

    def blob_names(self) -> list[str]:
        if self._reader is not None:
            return sorted(self.manifest["blobs"])
        return sorted(self._blobs)

    def blob(self, name: str) -> np.ndarray | bytes:
        if name in self._blobs:
            return self._blobs[name]
        if self._reader is None:
            raise KeyError(name)
        return self._reader(name)

    # --- description ------------------------------------------------------------------------

    @property
    def target_name(self) -> str:
        return self.manifest["target"]["name"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["target"]["fingerprint"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def notes(self) -> list[str]:
        return self.manifest.get("notes", [])

    @property
    def weight_bytes(self) -> int:
        return self.manifest["memory"]["weight_bytes"]

    @property
    def peak_activation_bytes(self) -> int:
        return self.manifest["memory"]["peak_activation_bytes"]

    @property
    def subgraphs(self) -> list[SubgraphInfo]:
        out = []
        for sg in self.manifest["subgraphs"]:
            out.append(SubgraphInfo(
                id=sg["id"], name=sg["name"], device=sg["device"], engine=sg["engine"],
                inputs=list(sg["inputs"]), outputs=list(sg["outputs"]), op_counts=dict(sg["op_counts"]),
                macs=int(sg["macs"]), weight_bytes=int(sg["weight_bytes"]),
                activation_bytes=int(sg.get("memory", {}).get("arena_bytes", 0)),
                ops=list(sg.get("ops", [])), nodes=list(sg.get("nodes", [])),
            ))
        return out

    def __repr__(self) -> str:
        n_acc = sum(1 for s in self.subgraphs if s.on_accelerator)
        return (f"CompiledModel(target={self.target_name!r}, subgraphs={len(self.subgraphs)} "
                f"({n_acc} on {self.manifest['target']['device_label']}))")
