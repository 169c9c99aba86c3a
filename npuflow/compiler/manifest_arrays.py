"""Per-channel epilogue arrays of a ``.npuf`` stored as blobs, not as JSON lists (format 2.0).

An epilogue's per-channel ``shift``, ``multiplier`` or ``acc_scale`` written as a JSON list parses
into one Python number object per channel, which a loaded model keeps for its whole life (the
manifest is the runtime's description of its programs); on float-scale targets these lists are
most of a manifest (PP-OCRv4 rec on cpu-int8: 47 lists of ``scale`` multipliers, 378 KB of its
607 KB).  As a blob each is one read-only ``numpy`` view of the mapped file.

The writer (:func:`to_blobs`, called by ``artifact.serialize``) replaces each such list of at
least :data:`MIN_VALUES` values by ``{"blob": name}`` and adds the array to the blob table, named
by its content (equal arrays are stored once); shorter lists and scalars stay JSON, where a
blob's table entry would cost more than the list.  The reader (:func:`resolve`, called by
``CompiledModel.load_all`` once the file is verified) puts the array back in the reference's
place.  Integer lists are stored as int64 and real ones as float64, the arrays ``numpy`` makes
of the JSON lists, so every kernel computes on the same values as before.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import numpy as np

from .lazy_ops import LazyOps

#: The epilogue fields that hold one value per output channel (or one for all).
FIELDS = ("shift", "multiplier", "acc_scale")
#: Lists of fewer values stay JSON.
MIN_VALUES = 16
#: Prefix of the blob names the writer gives these arrays.
PREFIX = "epilogue."


def programs(manifest: dict) -> list[dict]:
    """Every program of a manifest: each model's (a packed file's several) and its variants'."""
    models = [e["manifest"] for e in manifest["packed"]] if "packed" in manifest else [manifest]
    return [p for m in models for p in [m, *m.get("variants", [])]]


def epilogues(manifest: dict, parsed_only: bool = False) -> Iterator[dict]:
    """Every integer op's epilogue dict in ``manifest`` (all programs); ``parsed_only``: not those of
    ops a loaded manifest has not parsed yet (:mod:`.lazy_ops`, which resolves them as it parses)."""
    for program in programs(manifest):
        for sg in program.get("subgraphs", []):
            ops = sg.get("ops")
            if sg.get("engine") == "integer" and not (parsed_only and isinstance(ops, LazyOps) and not ops.parsed):
                for op in sg.get("ops", []):
                    ep = op.get("attrs", {}).get("epilogue")
                    if isinstance(ep, dict):
                        yield ep


def uses_blobs(manifest: dict) -> bool:
    """Whether any epilogue of ``manifest`` refers to a blob (a format 2.0 manifest)."""
    return any(isinstance(ep.get(f), dict) for ep in epilogues(manifest) for f in FIELDS)


def stored_array(values: list | np.ndarray) -> np.ndarray:
    """The array a list of channel values is stored as: int64 for integers, else float64."""
    arr = np.asarray(values).reshape(-1)
    return arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float64)


def to_blobs(manifest: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """``manifest`` with its long epilogue arrays as blob references, and those blobs by name.

    The caller's manifest is left as it is (the dicts on the way to an epilogue are copied).
    Arrays of a loaded model (``numpy`` arrays in place of lists) are written the same way;
    short ones become lists again."""
    blobs: dict[str, np.ndarray] = {}

    def epilogue(ep: dict) -> dict:
        out = dict(ep)
        for field in FIELDS:
            value = ep.get(field)
            if not isinstance(value, (list, np.ndarray)):
                continue
            if np.size(value) < MIN_VALUES:
                out[field] = np.asarray(value).tolist() if isinstance(value, np.ndarray) else value
                continue
            arr = stored_array(value)
            name = PREFIX + hashlib.sha256(arr.dtype.name.encode() + arr.tobytes()).hexdigest()[:32]
            blobs[name] = arr
            out[field] = {"blob": name}
        return out

    def op(o: dict) -> dict:
        ep = o.get("attrs", {}).get("epilogue")
        return {**o, "attrs": {**o["attrs"], "epilogue": epilogue(ep)}} if isinstance(ep, dict) else o

    def program(p: dict) -> dict:
        out = dict(p)
        if "subgraphs" in p:
            out["subgraphs"] = [{**sg, "ops": [op(o) for o in sg["ops"]]} if sg.get("engine") == "integer" else sg
                                for sg in p["subgraphs"]]
        if "variants" in p:
            out["variants"] = [program(v) for v in p["variants"]]
        return out

    if "packed" in manifest:
        copied = {**manifest, "packed": [{**e, "manifest": program(e["manifest"])} for e in manifest["packed"]]}
    else:
        copied = program(manifest)
    return copied, blobs


def resolve(manifest: dict, read: Callable[[str], np.ndarray]) -> None:
    """Replace, in place, each epilogue's blob reference by the array ``read`` gives for it (a
    verified file's read-only view); ops not parsed yet are resolved when they are (:mod:`.lazy_ops`)."""
    for ep in epilogues(manifest, parsed_only=True):
        for field in FIELDS:
            value = ep.get(field)
            if isinstance(value, dict):
                ep[field] = read(value["blob"])
