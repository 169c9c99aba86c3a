"""Accelerator subgraphs and the CPU tables between them, run as one integer program.

A model placed for an accelerator without some elementwise function (YOLOv8n's SiLU on a DPU
without sigmoid) alternates accelerator subgraphs with CPU subgraphs that are each one
elementwise table of an 8-bit tensor (``executors.OnnxExecutor.lookup``: what that subgraph's
ONNX Runtime session computes for every code, checked at load).  Run one by one, every
boundary costs a fused graph call, a lookup in Python and the conversions of the codes around
them (YOLOv8n on DPUCZDX8G: 114 subgraphs).  The tables are exact, so :func:`steps` splices
them into the neighbouring integer programs as ``lut`` ops: the fused planner then sees one
program, in which a table composes with the op that reads it (SiLU's ``Mul`` of the input and
its sigmoid becomes one table, as on a CPU target) and the codes stay in ONNX Runtime between
layers.  The manifest keeps its subgraphs; runners, ``run_subgraph`` and listeners of single
subgraphs still see them one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .executors import IntegerExecutor, Lookup, OnnxExecutor, Slices, return_freed_heap


@dataclass(frozen=True)
class Step:
    """What :meth:`Session.run` runs in turn: one executor for the subgraphs ``indices``."""

    executor: object
    indices: tuple[int, ...]
    inputs: tuple[str, ...]


def _spliceable(executor: object) -> Lookup | None:
    """The tables of a CPU subgraph that can join an integer program (every output a table of
    an 8-bit input, or of a ``Split`` slice of one)."""
    return executor.lookup if isinstance(executor, OnnxExecutor) else None


def steps(subgraphs: list[dict], executor: Callable[[int], object], tensors: dict, blob: Callable[[str], np.ndarray],
          outputs: set[str], threads: int, release: Callable[[], object] = return_freed_heap,
          defer: bool = False) -> list[Step]:
    """The run order: each maximal stretch of consecutive integer subgraphs and spliceable CPU
    tables that holds at least two integer subgraphs becomes one :class:`IntegerExecutor`; every
    other subgraph runs alone, on ``executor(k)`` (subgraph ``k``'s own, which an integer
    subgraph spliced into a stretch never builds); ``outputs``: the model's outputs;
    ``release``: called after each merged program's build, to give back what it read and freed
    (``Session``'s: the mapped file's pages and the C heap's free pages); ``defer``: merged
    programs' stored runs are left for the caller to open (``IntegerExecutor.open``)."""
    kinds = ["integer" if sg["engine"] == "integer" else
             "table" if _spliceable(executor(k)) is not None else "other" for k, sg in enumerate(subgraphs)]
    result: list[Step] = []
    k = 0
    while k < len(subgraphs):
        end = k
        while end < len(subgraphs) and kinds[end] != "other":
            end += 1
        while end > k and kinds[end - 1] == "table":  # a stretch ends on an integer program
            end -= 1
        while k < end and kinds[k] == "table":
            result.append(_alone(subgraphs, executor, k))
            k += 1
        if sum(kinds[j] == "integer" for j in range(k, end)) >= 2:
            result.append(_merged(subgraphs, executor, range(k, end), tensors, blob, outputs, threads, release,
                                  defer))
            k = end
        else:
            result.append(_alone(subgraphs, executor, k))
            k += 1
    return result


def _alone(subgraphs: list[dict], executor: Callable[[int], object], k: int) -> Step:
    return Step(executor(k), (k,), tuple(subgraphs[k]["inputs"]))


def _merged(subgraphs: list[dict], executor: Callable[[int], object], run: range, tensors: dict, blob: Callable,
            outputs: set[str], threads: int, release: Callable[[], object], defer: bool) -> Step:
    """One integer program of the subgraphs in ``run``: their ops in order, each CPU table a
    ``lut`` op per output; the memory plans side by side in one arena."""
    ops: list[dict] = []
    tables: dict[str, np.ndarray] = {}
    buffers: dict[str, dict] = {}
    arena = 0
    for k in run:
        sg = subgraphs[k]
        if sg["engine"] == "integer":
            ops.extend(sg["ops"])
            for name, b in sg["memory"]["buffers"].items():
                buffers[name] = {**b, "offset": b["offset"] + arena}
            arena += sg["memory"]["arena_bytes"]
            continue
        for out, (src, slices, table, qmin) in _spliceable(executor(k)).tables.items():
            name = f"{sg['name']}:{out}"
            identity = tensors[out]["dtype"] == tensors[src]["dtype"] and np.array_equal(table, qmin + np.arange(256))
            if slices:  # the slice as a data-movement op, into a tensor of its own unless the table is the identity
                shape, cut = _cut(tensors[src]["shape"], slices)
                moved = out if identity else f"{name}:slice"
                if moved != out:
                    tensors = {**tensors, moved: {**tensors[src], "shape": shape}}
                ops.append({"name": f"{name}:slice", "op": "slice", "inputs": [src], "outputs": [moved], "blobs": {},
                            "attrs": {"qmin": int(qmin), "x_zp": 0, "out_dtype": tensors[src]["dtype"],
                                      "out_shape": shape, "slices": cut}})
                src = moved
            if src != out:
                tables[name] = table
                ops.append({"name": name, "op": "lut", "inputs": [src], "outputs": [out], "blobs": {"table": name},
                            "attrs": {"qmin": int(qmin), "out_dtype": tensors[out]["dtype"]}})
    produced = {t for op in ops for t in op["outputs"]}
    later = {t for sg in subgraphs[run.stop:] for t in sg["inputs"]} | outputs
    inputs = list(dict.fromkeys(t for op in ops for t in op["inputs"] if t not in produced))
    merged = {"name": "+".join(subgraphs[k]["name"] for k in run), "engine": "integer", "ops": ops,
              "inputs": inputs, "outputs": [t for t in dict.fromkeys(o for op in ops for o in op["outputs"])
                                            if t in later],
              "memory": {"arena_bytes": arena, "buffers": buffers}}

    def merged_blob(name: str) -> np.ndarray:
        return tables[name] if name in tables else blob(name)

    step = Step(IntegerExecutor(merged, tensors, merged_blob, threads=threads, release=release, defer=defer), tuple(run),
                tuple(inputs))
    release()  # the build's graph and bounds, before the next one's (as ``Session``'s own builds)
    return step


def _cut(shape: list[int], slices: Slices) -> tuple[list[int], list[list[int]]]:
    """A ``Split`` output's shape and the ``[start, end, step]`` per axis of the ``slice`` op that
    cuts it from a tensor of ``shape`` (``slices`` apply in order, each on the previous cut)."""
    cut = [[0, d, 1] for d in shape]
    for axis, start, end in slices:
        first = cut[axis][0]
        cut[axis] = [first + start, first + end, 1]
    return [end - start for start, end, _ in cut], cut
