"""Shared check for compiler tests: compile, run with a dump, compare with ONNX Runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import npuflow
from tests.qdq_builder import ort_values


def integer_tensors(compiled) -> list[str]:
    """Every integer tensor an accelerator subgraph writes (the dump names)."""
    names = []
    for sg in compiled.subgraphs:
        if sg.on_accelerator:
            for op in sg.ops:
                names += [o for o in op["outputs"] if compiled.manifest["tensors"][o]["dtype"] != "float32"]
    return names


def compare_with_ort(model, feeds: dict, target: str, levels=("disable",)) -> dict[str, int]:
    """Max |difference| in LSB per integer tensor of the accelerator subgraphs (and outputs)."""
    compiled = npuflow.compile(model, target)
    sess = npuflow.Session(compiled)
    with tempfile.TemporaryDirectory() as d:
        outs = sess.run(feeds, dump_dir=d)
        index = __import__("json").loads((Path(d) / "index.json").read_text())
        names = integer_tensors(compiled)
        assert names, "nothing ran on the accelerator"
        diffs = {}
        for level in levels:
            ref = ort_values(model, feeds, names + list(outs), level)
            for n in names:
                got = np.load(Path(d) / index[n])
                assert got.dtype == ref[n].dtype and got.shape == ref[n].shape, n
                diffs[f"{level}:{n}"] = int(np.abs(got.astype(np.int64) - ref[n].astype(np.int64)).max(initial=0))
    return diffs
