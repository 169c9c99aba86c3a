"""``CompiledModel``: the in-memory form of a ``.npuf`` (a manifest plus named blobs)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import NpuflowError, did_you_mean
from ..model import write_atomic
from ..targets import Target, load_target
from . import artifact, manifest_arrays


#: Manifest key of the programs compiled for further shape sets (format 1.1).
VARIANTS = "variants"
#: What a variant replaces in the manifest: everything that depends on the input shapes.
VARIANT_FIELDS = ("inputs", "outputs", "subgraphs", "tensors", "memory", "notes")
#: Manifest key of a packed file (format 1.2): ``[{"name", "manifest"}]`` over one blob table.
PACKED = "packed"
#: Manifest key of the nodes ``npuflow modify`` removed, with their parameters (format 1.2).
REMOVED = "removed"


def with_shapes(programs: list[CompiledModel]) -> CompiledModel:
    """One model holding several programs of the same quantized model at different input shapes.

    The first program's manifest is the model's (what ``info``, ``perf``, ``bench``, runners and
    ``run_op`` see); the others become ``variants`` entries.  Their blobs are renamed ``v<k>.``
    unless an identical blob (same dtype, shape and bytes: a convolution's weights do not depend
    on the width) is already stored, so weights are stored once.
    """
    first, *others = programs
    shapes = [p.input_shapes[0] for p in programs]
    repeated = next((s for k, s in enumerate(shapes) if s in shapes[:k]), None)
    if repeated is not None:
        raise NpuflowError("NPF_MODEL_BAD_INPUT_SHAPE", value=str(repeated), reason="this shape set is given twice")
    blobs = {n: first.blob(n) for n in first.blob_names()}
    stored = {blob_key(v): n for n, v in blobs.items()}
    variants = []
    for k, program in enumerate(others, 1):
        renamed = add_blobs(blobs, stored, program, f"v{k}.")
        variant = {f: program.manifest[f] for f in VARIANT_FIELDS}
        variant["subgraphs"] = [renamed_blobs(sg, renamed) for sg in variant["subgraphs"]]
        variants.append(variant)
    return CompiledModel({**first.manifest, VARIANTS: variants}, blobs)


def referenced_blobs(manifest: dict) -> set[str]:
    """Names of the blobs the subgraphs of every program of ``manifest`` read."""
    names: set[str] = set()
    for subgraphs in [manifest["subgraphs"], *(v["subgraphs"] for v in manifest.get(VARIANTS, []))]:
        for sg in subgraphs:
            if sg["engine"] == "integer":
                names.update(b for op in sg["ops"] for b in op["blobs"].values())
            else:
                names.add(sg["onnx"])
                if sg.get("payload"):  # a compiler plugin's own data
                    names.add(sg["payload"])
    return names


def shape_sets_text(sets: list[dict[str, list[int]]]) -> str:
    """``x=1x3x48x160; x=1x3x48x320``: compiled shape sets as ``info``, ``compile`` and errors show them."""
    return "; ".join(", ".join(f"{n}={'x'.join(map(str, d))}" for n, d in s.items()) for s in sets)


def add_blobs(blobs: dict[str, np.ndarray | bytes], stored: dict[tuple, str], model: "CompiledModel",
              prefix: str) -> dict[str, str]:
    """Add ``model``'s blobs to ``blobs`` (``stored``: :func:`blob_key` -> name in ``blobs``), each
    under ``prefix + name`` unless an identical one is already there; returns each blob's old name
    -> its name in ``blobs`` (for :func:`renamed_blobs`).  Shape sets and packed models share
    weights this way."""
    renamed = {}
    for name in model.blob_names():
        value = model.blob(name)
        key = blob_key(value)
        if key not in stored:
            stored[key] = f"{prefix}{name}"
            blobs[stored[key]] = value
        renamed[name] = stored[key]
    return renamed


def blob_key(value: np.ndarray | bytes) -> tuple:
    """What makes two blobs the same blob (dtype, shape and bytes): stored once when shared."""
    if isinstance(value, (bytes, bytearray)):
        return ("bytes", hashlib.sha256(value).hexdigest())
    arr = np.ascontiguousarray(value)
    return (arr.dtype.name, arr.shape, hashlib.sha256(arr.tobytes()).hexdigest())


def renamed_blobs(sg: dict, renamed: dict[str, str]) -> dict:
    """Subgraph ``sg`` with its blob references renamed (``renamed``: old name -> new name)."""
    if sg["engine"] != "integer":
        payload = {"payload": renamed[sg["payload"]]} if sg.get("payload") else {}
        return {**sg, "onnx": renamed[sg["onnx"]], **payload}
    return {**sg, "ops": [{**op, "blobs": {r: renamed[b] for r, b in op["blobs"].items()}} for op in sg["ops"]]}


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
        #: The model's name: its name in a packed file, else the file name without ``.npuf``.
        self.name = source.stem if source is not None else "model"
        #: Whether the model was read from a packed file (``npuflow pack``).
        self.packed = False
        #: the mapped ``.npuf`` its blobs are read from (``load``), else ``None``
        self._file: artifact.NpufFile | None = None

    def release_pages(self) -> None:
        """Drop the mapped file's pages from the resident set (``NpufFile.release_pages``): a
        runtime calls it once its executors hold what they read."""
        if self._file is not None:
            self._file.release_pages()

    # --- I/O --------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npuf`` file atomically."""
        return write_atomic(path, self.to_bytes())

    def to_bytes(self) -> bytes:
        """The ``.npuf`` file's bytes."""
        blobs = {n: self.blob(n) for n in self.blob_names()}
        return artifact.serialize({k: v for k, v in self.manifest.items() if k != "blobs"}, blobs)

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, lazy_ops: bool = False) -> "CompiledModel":
        """Open and verify a ``.npuf`` (coded errors for any damage); weights stay memory-mapped;
        ``lazy_ops``: integer programs' ops parsed when first read (``artifact.NpufFile``).

        A packed file (``npuflow pack``) holds several models: ``model`` names the one to load
        (``NPF_PACK_MODEL_REQUIRED`` without it when there are several, ``NPF_PACK_UNKNOWN_MODEL``
        for a name not in the file).  A plain file is one model named by its file name."""
        models = cls.load_all(path, lazy_ops)
        if model is None:
            if len(models) > 1:
                raise NpuflowError("NPF_PACK_MODEL_REQUIRED", path=str(path), count=len(models),
                                   names=", ".join(models))
            return next(iter(models.values()))
        if model not in models:
            raise NpuflowError("NPF_PACK_UNKNOWN_MODEL", path=str(path), name=model,
                               did_you_mean=did_you_mean(model, models), names=", ".join(models))
        return models[model]

    @classmethod
    def load_all(cls, path: str | os.PathLike, lazy_ops: bool = False) -> dict[str, "CompiledModel"]:
        """Every model of a ``.npuf`` by name, in file order, read and verified once: the packed
        models of a packed file, else the one model named by the file name (``a.npuf``: ``a``)."""
        f = artifact.NpufFile(path, lazy_ops)
        manifest_arrays.resolve(f.manifest, f.blob)

        def read(name: str):
            return f.blob_bytes(name) if name.endswith(".onnx") else f.blob(name)

        entries = f.manifest.get(PACKED) or [{"name": Path(path).stem, "manifest": f.manifest}]
        models = {}
        for entry in entries:
            model = cls({**entry["manifest"], "blobs": f.manifest["blobs"]}, reader=read, source=Path(path))
            model._file = f
            model.name = entry["name"]
            model.packed = PACKED in f.manifest
            models[entry["name"]] = model
        return models

    def blob_names(self) -> list[str]:
        """The blobs this model references (a packed file's table also holds the other models')."""
        if self._reader is not None:
            return sorted(referenced_blobs(self.manifest) & set(self.manifest["blobs"]))
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

    def target(self) -> Target:
        """The target it was compiled for: the description the file carries when it was compiled
        for a target file of the user's own (no bundled target has that content), else the
        bundled target of its name."""
        spec = self.manifest["target"].get("spec")
        return Target.model_validate(spec) if spec is not None else load_target(self.target_name)

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

    @property
    def programs(self) -> list[dict]:
        """One manifest per compiled shape set, the first being :attr:`manifest` itself; the others
        are it with a variant's ``inputs``, ``outputs``, ``subgraphs``, ``tensors``, ``memory`` and
        ``notes`` (all blobs live in one table)."""
        base = {k: v for k, v in self.manifest.items() if k != VARIANTS}
        return [self.manifest, *({**base, **v} for v in self.manifest.get(VARIANTS, []))]

    def program(self, k: int) -> "CompiledModel":
        """Program ``k`` (:attr:`programs` order) as a model of its own, over the same blobs: what
        ``perf`` costs and ``info`` describes per compiled shape set."""
        manifest = {key: value for key, value in self.programs[k].items() if key != VARIANTS}
        view = CompiledModel(manifest, self._blobs, self._reader, self.source)
        view.name, view.packed = self.name, self.packed
        return view

    @property
    def removed(self) -> list[dict]:
        """Nodes ``npuflow modify`` took out, with their parameters (format 1.2 ``removed``)."""
        return self.manifest.get(REMOVED, [])

    @property
    def input_shapes(self) -> list[dict[str, list[int]]]:
        """The compiled shape sets, ``{input: shape}`` per program, in :attr:`programs` order."""
        return [{i["name"]: list(i["shape"]) for i in p["inputs"]} for p in self.programs]

    def __repr__(self) -> str:
        n_acc = sum(1 for s in self.subgraphs if s.on_accelerator)
        return (f"CompiledModel(target={self.target_name!r}, subgraphs={len(self.subgraphs)} "
                f"({n_acc} on {self.manifest['target']['device_label']}))")
