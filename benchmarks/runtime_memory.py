"""The runtime benchmark's peak-memory probe: one fresh process per column.

``bench_runtime.py`` asks :func:`memory_columns` for each case's peak memory (npuflow's ``.npuf``,
ONNX Runtime on the plain QDQ and FP32 models) over a baseline process, and starts its
``--processes`` children with :func:`run_child` too.  Apart from the timing loops so that each can
be read on its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The program of a memory child.  Every child imports the same libraries (numpy, ONNX Runtime,
#: npuflow and its runtime, onnx), loads the input and then runs ``LOAD``, which binds ``run`` (a
#: frame) or leaves it ``None`` (the baseline child), so that the difference between a column's
#: peak and the baseline's is the model's load and runs, not the interpreter's imports.  The peak
#: is ``VmHWM``, the high-water mark of this process's own address space: ``ru_maxrss`` would not
#: do, since exec keeps the high-water mark of the address space the child was forked from (the
#: benchmark process, several hundred MB after quantizing), so every child would report at least
#: the parent's size.  RSS is read after the input, after the load, after the first frame and at
#: the end, to tell the model's resident weights from the runs' working memory; its anonymous part
#: (``RssAnon``: heap, arenas, weights) too, beside the file pages of the libraries' code that a
#: load and its runs touch (ONNX Runtime's first session: about 8.5 MiB, nearly all of it code).
MEMORY_CHILD = r'''
import json, sys
import numpy as np
import onnx, onnxruntime as ort
import npuflow, npuflow.runtime

def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)

spec = json.loads(sys.argv[1])
MODEL, FRAMES = spec["model"], spec["frames"]
x = dict(np.load(spec["input"])) if spec["input"] else {}
rss = {"input": status_kib("VmRSS")}
anon = {"input": status_kib("RssAnon")}

def ort_session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

run = None
exec(spec["load"])
rss["loaded"], anon["loaded"] = status_kib("VmRSS"), status_kib("RssAnon")
if run is not None:
    run()
    rss["first_frame"], anon["first_frame"] = status_kib("VmRSS"), status_kib("RssAnon")
    for _ in range(FRAMES - 1):
        run()
rss["end"], anon["end"] = status_kib("VmRSS"), status_kib("RssAnon")
print(json.dumps({"peak_kib": status_kib("VmHWM"), "rss_kib": rss, "anon_kib": anon}))
'''

#: ``LOAD`` of each memory column (``MODEL``: the file ``memory_columns`` names for it).
MEMORY_LOADS = {
    "baseline": "run = None",
    "npuflow": "session = npuflow.Session(MODEL, threads=1)\nrun = lambda: session.run(x)",
    "ORT": "session = ort_session(MODEL)\nrun = lambda: session.run(None, x)",
}

#: One thread everywhere, BLAS and OpenMP pools included, so no column pays for idle pool stacks.
_ONE_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

MIB = 1024.0


def run_child(code: str, spec: dict, env: dict[str, str] | None = None) -> dict:
    """What a fresh ``python -c code json(spec)`` prints last, as JSON (``env`` over this one's): the
    one way this benchmark starts a child.  A failing child raises ``RuntimeError`` with its stderr."""
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_memory(load: str, model: str | None = None, input_path: Path | None = None, frames: int = 5) -> dict:
    """Peak and stepwise resident memory, in MiB, of a fresh ``MEMORY_CHILD`` running ``load``.

    Returns ``{"peak": MiB, "rss": {"input", "loaded", ["first_frame"], "end"}, "anon": (the same
    steps' ``RssAnon``)}``.  A fresh
    process per call, so that no column's freed-but-kept allocations (arenas, the allocator's
    free lists) hide or inflate another's.
    """
    spec = {"load": load, "model": model, "input": str(input_path) if input_path else None, "frames": frames}
    out = run_child(MEMORY_CHILD, spec, _ONE_THREAD_ENV)
    return {"peak": out["peak_kib"] / MIB, "rss": {k: v / MIB for k, v in out["rss_kib"].items()},
            "anon": {k: v / MIB for k, v in out["anon_kib"].items()}}


def memory_columns(models: dict[str, tuple[str, Path]], input_path: Path, frames: int, rounds: int = 3) -> dict:
    """Each column's peak memory over the baseline child's, in MiB: the median of ``rounds`` rounds,
    each a fresh baseline child and one fresh child per column, in turn.

    Why rounds: one child's figure depends on the machine's page cache, not only on the model: a
    child whose libraries' and npuflow's files were just evicted (another job's reads, or
    ``posix_fadvise`` on npuflow's ``.pyc`` files) read 1.5-3.5 MiB above the next one on PP-OCR
    cls (issue 19, session 28: the README's "bimodal" 13.7 / 15.0 MiB of cls cpu-int8), and the
    first model child of a case was the one it hit.  ``models`` maps a column label to its
    ``MEMORY_LOADS`` key and model file.  Per column, from the round of its median peak: ``peak``
    (the increase of the child's peak RSS over that round's baseline child's), ``load`` (RSS after
    the load over RSS before it: the resident model), ``first_frame`` (RSS added by the first
    frame: buffers and arena), ``anon`` (anonymous RSS at the end over before the load: what of
    ``load`` and ``first_frame`` is not file pages of code; PP-OCR cls on B4096: npuflow and ONNX
    Runtime touch about the same 9.6-9.8 MiB of code, and npuflow's 1.3 MiB more is anonymous),
    ``peak_abs`` (the child's own peak), ``base`` (that round's baseline), ``rounds`` (every round's ``peak``); ``baseline`` is the baseline children's median.
    """
    bases: list[float] = []
    runs: dict[str, list[dict]] = {label: [] for label in models}
    for _ in range(rounds):
        base = child_memory(MEMORY_LOADS["baseline"], None, input_path, frames)["peak"]
        bases.append(base)
        for label, (kind, model) in models.items():
            m = child_memory(MEMORY_LOADS[kind], str(model), input_path, frames)
            rss, anon = m["rss"], m["anon"]
            runs[label].append({"peak": m["peak"] - base, "peak_abs": m["peak"], "base": base,
                                "load": rss["loaded"] - rss["input"], "first_frame": rss["first_frame"] - rss["loaded"],
                                "anon": anon["end"] - anon["input"]})
    out: dict = {"baseline": sorted(bases)[(len(bases) - 1) // 2]}
    for label, found in runs.items():
        middle = sorted(found, key=lambda r: r["peak"])[(len(found) - 1) // 2]
        out[label] = {**middle, "rounds": [r["peak"] for r in found]}
    return out
