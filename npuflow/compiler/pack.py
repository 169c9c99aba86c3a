"""``npuflow pack``: several compiled models in one ``.npuf`` (Horizon's ``hb_pack``).

A board application that runs a detector and a classifier deploys, pins and loads one file.
The packed file (format 1.2) has one blob table and a manifest ``packed: [{name, manifest}]``;
each model's blobs are renamed ``<name>/<blob>`` unless an identical blob (dtype, shape and bytes)
is already stored, so weights two models share are stored once.  Every model keeps its whole
manifest (variants, removed nodes), so ``CompiledModel.load(path, model=NAME)``, ``Session``,
``info``, ``perf`` and ``run`` see it as if it had been a file of its own.

Models are named by their file names without ``.npuf``; a packed input contributes its models
under their packed names.  All models must be for one target (one accelerator serves the file).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import __version__
from ..errors import NpuflowError
from ..targets import same_fingerprint
from . import artifact
from .compiled import PACKED, VARIANTS, CompiledModel, add_blobs, renamed_blobs


def pack(paths: Sequence[str | os.PathLike], output: str | os.PathLike) -> Path:
    """Write the models of ``paths`` (plain or packed ``.npuf`` files) into one packed file at
    ``output`` (atomically: a failure leaves no partial file).  Returns ``output``."""
    models: list[CompiledModel] = []
    origin: dict[str, str] = {}
    for path in paths:
        for name, model in CompiledModel.load_all(path).items():
            if name in origin:
                raise NpuflowError("NPF_PACK_DUPLICATE_NAME", name=name, paths=f"{origin[name]}, {path}")
            first = models[0] if models else model
            if not same_fingerprint(model.fingerprint, first.fingerprint):
                raise NpuflowError("NPF_PACK_TARGET_MISMATCH", path=str(path), target=model.target_name,
                                   fingerprint=model.fingerprint, first=origin[first.name],
                                   first_target=first.target_name, first_fingerprint=first.fingerprint)
            origin[name] = str(path)
            models.append(model)
    blobs: dict[str, np.ndarray | bytes] = {}
    stored: dict[tuple, str] = {}
    entries = []
    for model in models:
        renamed = add_blobs(blobs, stored, model, f"{model.name}/")
        manifest = {k: v for k, v in model.manifest.items() if k != "blobs"}
        manifest["subgraphs"] = [renamed_blobs(sg, renamed) for sg in manifest["subgraphs"]]
        if VARIANTS in manifest:
            manifest[VARIANTS] = [{**v, "subgraphs": [renamed_blobs(sg, renamed) for sg in v["subgraphs"]]}
                                  for v in manifest[VARIANTS]]
        entries.append({"name": model.name, "manifest": manifest})
    return artifact.write(output, {"format": "npuf", "npuflow_version": __version__, PACKED: entries}, blobs)
