"""Issue 19, the manifest's validation without a tree of the whole file (compiler/manifest_pieces.py).

``Manifest.model_validate`` built a pydantic object for every tensor, blob, subgraph and op, as large
as the parsed manifest and beside it; Python's allocator kept the pools they used after the load
(PP-OCRv4 rec cpu-int8: 103 unused pools and one more arena against 40 without the validation).  The
pieces are validated one at a time now; a valid file passes and a damaged one is refused with the
very error the whole validation gives (docs/runtime-measurements.md, "Peak memory").
"""

from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest

import npuflow
from npuflow.compiler import manifest_check
from npuflow.compiler.artifact import NpufFile
from npuflow.compiler.manifest_schema import Manifest, SchemaError
from tests import fixture_models
from tests.compile_check import random_sample_npuf


@pytest.fixture(scope="module")
def cls_npuf(tmp_path_factory):
    """PP-OCR cls on cpu-int8 (the name is the fixture's role: a real model of two subgraphs)."""
    return random_sample_npuf(fixture_models.ppocr_cls(), "cpu-int8", "x", [1, 3, 48, 192], 4,
                              tmp_path_factory.mktemp("pieces") / "cls.npuf", low=0.0)


def _whole_error(manifest: dict, newer_minor: bool = False) -> tuple[str, str]:
    """The field and reason of the whole manifest's validation (the error a damaged file always got)."""
    try:
        Manifest.model_validate(manifest, context={"ignore_unknown": newer_minor})
    except manifest_check.ValidationError as exc:
        err = manifest_check._schema_error(exc, "")
        return err.field, err.reason
    raise AssertionError("the whole manifest validates")


def test_the_validation_holds_no_tree_of_the_whole_manifest(cls_npuf, monkeypatch):
    path, _ = cls_npuf
    f = NpufFile(path)
    manifest = f.manifest
    tables = []
    real = Manifest.model_validate.__func__

    def spied(cls, data, *args, **kwargs):
        tables.append(len(data["tensors"]) + len(data["blobs"]))
        return real(cls, data, *args, **kwargs)

    monkeypatch.setattr(Manifest, "model_validate", classmethod(spied))
    manifest_check.validate(manifest, f.blob_bytes)
    assert tables == [0]  # the manifest less its tables: no model of any tensor or blob beside the parse
    monkeypatch.undo()
    tracemalloc.start()
    tree = Manifest.model_validate(manifest, context={"ignore_unknown": False})
    tree_bytes = tracemalloc.get_traced_memory()[0]
    del tree
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    manifest_check.validate(manifest, f.blob_bytes)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    assert peak < tree_bytes, (peak, tree_bytes)  # the checks' high-water mark is below one tree of the file


@pytest.mark.parametrize("damage", ["tensor dtype", "tensor unknown key", "blob nbytes", "op attrs key",
                                    "subgraph engine", "tensors not a table", "no subgraphs"])
def test_a_damaged_manifest_gets_the_whole_validations_error(cls_npuf, damage):
    path, _ = cls_npuf
    f = NpufFile(path)
    m = copy.deepcopy(f.manifest)
    tensor = next(iter(m["tensors"]))
    integer = next(sg for sg in m["subgraphs"] if sg["engine"] == "integer")
    if damage == "tensor dtype":
        m["tensors"][tensor]["dtype"] = "int7"
    elif damage == "tensor unknown key":
        m["tensors"][tensor]["colour"] = "red"
    elif damage == "blob nbytes":
        m["blobs"][next(iter(m["blobs"]))]["nbytes"] = -1
    elif damage == "op attrs key":
        integer["ops"][0]["attrz"] = integer["ops"][0].pop("attrs")
    elif damage == "subgraph engine":
        integer["engine"] = "fpga"
    elif damage == "tensors not a table":
        m["tensors"] = list(m["tensors"])
    else:
        m["subgraphs"] = []
    with pytest.raises(SchemaError) as got:
        manifest_check.validate(m, f.blob_bytes)
    assert (got.value.field, got.value.reason) == _whole_error(m)


def test_a_newer_minor_versions_unknown_fields_pass_in_every_piece(cls_npuf):
    path, samples = cls_npuf
    f = NpufFile(path)
    m = copy.deepcopy(f.manifest)
    m["tensors"][next(iter(m["tensors"]))]["colour"] = "red"
    m["blobs"][next(iter(m["blobs"]))]["colour"] = "red"
    m["subgraphs"][0]["colour"] = "red"
    manifest_check.validate(m, f.blob_bytes, newer_minor=True)
    with pytest.raises(SchemaError):
        manifest_check.validate(m, f.blob_bytes)
    s = npuflow.Session(path)  # the file itself loads and runs as before
    assert all(np.isfinite(v.astype(np.float64)).all() for v in s.run(samples[0]).values())
