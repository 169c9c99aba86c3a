"""Runtime benchmark: throughput of a compiled model against ONNX Runtime, in one run.

For EfficientNet-Lite0 (3x224x224), YOLOv8n (3x320x320) and PP-OCRv4 det (3x320x320), on the
DPU target (power-of-two scales, half-up activations) and on float-scale targets (cpu-int8:
per-channel weights; bernoulli2: fixed-point multipliers): quantize on a few calibration
samples, compile, and time, on the same input and interleaved round by round (the machine is
shared, so load hits every column alike):

* npuflow ``Session`` on the ``.npuf``, ``threads=1`` and ``threads=2`` (fused integer runs and
  CPU subgraphs on ONNX Runtime with that many intra-op threads);
* ONNX Runtime running the same ``quantized_model.onnx`` (npuflow's QDQ), 1 and 2 threads;
* ONNX Runtime running that quantization exported as plain QDQ (``--plain-qdq``: standard
  ``QuantizeLinear`` steps, which ONNX Runtime fuses into its int8 kernels), 1 and 2 threads, and
  (where this CPU's uint8 x int8 kernels saturate) 1 thread with ``ort_kernels.exact_weights``: the
  exact int8 kernels npuflow's fused runs use, so that the cost of exactness shows apart from npuflow's;
* ONNX Runtime running the FP32 model, 1 and 2 threads;
* with ``--before REV``: the Session whose fused runs are planned by ``runtime/fused.py`` as of
  git revision ``REV`` (loaded beside the current module), 1 thread, so that a change to the
  fused runs is measured against its predecessor in the same interleaved rounds.

With ``--memory`` (the default; ``--no-memory`` skips it), each case's peak memory: one fresh
process per column (``npuflow 1 thread`` on the saved ``.npuf``, ORT plain QDQ and ORT FP32 on
their ``.onnx`` files, one intra-op thread each) loads the model and runs ``--memory-frames``
frames; its peak resident set (``VmHWM``) is reported as the increase over a baseline process
that imports the same libraries and loads the same input but no model (see ``runtime_memory.child_memory``).

With ``--processes N`` (default 1), each case runs in N fresh processes and a row reports each ratio's
median over them and its range (``case_in_processes``): the same row's ratio moves between processes.

The compiled model's outputs are compared with ONNX Runtime's on ``quantized_model.onnx`` first
(power-of-two targets: equal; float scales: the largest difference is reported), with its int8
weights in the form this CPU's integer kernels compute exactly (``ort_kernels.exact_weights``:
uint8 on x86-64 without VNNI, where MLAS' uint8 x int8 kernels saturate, except the convolutions
whose weight pairs cannot saturate a lane).  The timed ORT columns
run the model as a user's ONNX Runtime does, saturating kernels included.

    python benchmarks/bench_runtime.py [--rounds 5] [--runs 5] [--cases effnet:B4096:1,...|BATCH8] [--before REV]
                                       [--clock wall|process] [--[no-]memory] [--memory-frames 5]
                                       [--processes 1] [--out runtime]

Writes ``benchmarks/results/runtime.md`` (and ``runtime.json``; ``--out`` names them) and prints
the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import inspect
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import datasets as D  # noqa: E402
from runtime_memory import memory_columns, run_child  # noqa: E402
import runtime_models  # noqa: E402
from runtime_models import BATCH8_MODELS, CORPUS, MODELS, model  # noqa: E402,F401  (MODELS: the table)

import npuflow  # noqa: E402
from npuflow import ort_kernels  # noqa: E402
from npuflow.errors import NpuflowError  # noqa: E402

RESULTS = HERE / "results"
TARGETS = {"B4096": "DPUCZDX8G_ISA1_B4096", "cpu-int8": "cpu-int8", "bernoulli2": "bernoulli2"}
CASES = ("effnet:B4096:1,yolo:B4096:1,det:B4096:1,rec:B4096:1,cls:B4096:1,mnist:B4096:1,"
         "effnet:cpu-int8:1,yolo:cpu-int8:1,det:cpu-int8:1,rec:cpu-int8:1,cls:cpu-int8:1,mnist:cpu-int8:1,"
         "yolo:bernoulli2:1,det:bernoulli2:1,yolo:B4096:8")
#: Every model at batch 8 (``--cases`` BATCH8): EfficientNet-Lite0's and MNIST's exports fix batch 1,
#: so those rows run their ``batch_model`` copies.
BATCH8 = ",".join(f"{m}:{t}:8" for t in ("B4096", "cpu-int8") for m in BATCH8_MODELS) \
    + ",yolo:bernoulli2:8,det:bernoulli2:8"
def batch_model(path: Path, name: str, batch: int, out_dir: Path) -> Path:
    """The float model at ``batch``, where its export fixed the batch at 1: the input's first
    dimension set to ``batch`` and each ``Reshape`` to a constant ``[1, ...]`` (PyTorch's
    ``x.view(x.size(0), -1)`` traced at batch 1, before the classifier of EfficientNet-Lite0 and
    MNIST) reshaping to ``[batch, ...]``; ``path`` itself where the batch is not fixed.

    Every column of a batch-8 row (npuflow, ORT QDQ, plain QDQ and FP32) runs this same float
    model; ``bench_case`` checks that its frames equal the original model's one by one.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    dims = next(i for i in model.graph.input if i.name == name).type.tensor_type.shape.dim
    if batch == 1 or dims[0].dim_value != 1:
        return path
    dims[0].dim_value = batch
    consts = {n.output[0]: n.attribute[0] for n in model.graph.node if n.op_type == "Constant"}
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Reshape":
            continue
        shape = node.input[1]
        tensor = inits.get(shape) or (consts[shape].t if shape in consts else None)
        if tensor is None:
            continue
        value = numpy_helper.to_array(tensor)
        if value.ndim == 1 and len(value) >= 2 and value[0] == 1:
            tensor.CopyFrom(numpy_helper.from_array(np.array([batch, *value[1:]], value.dtype), tensor.name))
    for v in model.graph.output:
        v.type.tensor_type.shape.dim[0].dim_value = batch
    del model.graph.value_info[:]
    out = out_dir / f"{Path(path).stem}_batch{batch}.onnx"
    onnx.save(model, str(out))
    return out


def _check_batch_model(original: Path, batched: Path, x: dict) -> None:
    """Stop unless the batched float model's frames equal the original's, one frame at a time."""
    if batched == original:
        return
    one, many = D.ort_session(original, 1), D.ort_session(batched, 1)
    name = one.get_inputs()[0].name
    stacked = many.run(None, x)
    for k in range(len(x[name])):
        frame = one.run(None, {name: x[name][k:k + 1]})
        if not all(np.allclose(a, b[k:k + 1], rtol=1e-5, atol=1e-5) for a, b in zip(frame, stacked)):
            raise SystemExit(f"{batched.name}: frame {k} differs from {Path(original).name}")


def fused_planner(rev: str):
    """``runtime/fused.py``'s ``plan`` as of git revision ``rev``, building today's ``FusedRun``
    (whose interface it shares, so the executors run its runs unchanged) with that revision's
    ``_session``, which reads that revision's graphs."""
    from npuflow.runtime import fused

    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:npuflow/runtime/fused.py"], check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "fused_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("npuflow.runtime._fused_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    if module.FusedRun is fused.FusedRun:  # a revision whose runs are runtime/fused_run.py's: today's
        return module.plan
    session = module.FusedRun._session
    if "g" not in inspect.signature(session).parameters:
        session = _session_reading_graph(module, session)

    def init(self, g, outputs, produced, threads, rebuild=None, release=None):  # a revision's plan may not pass them
        self._setup(list(g.inputs), outputs, produced, threads, rebuild, release, None)
        self._open(session(self, g, outputs))

    module.FusedRun = type("FusedRunBefore", (fused.FusedRun,), {"__init__": init, "_session": session})
    return module.plan


def _session_reading_graph(module, session):
    """A revision's ``FusedRun._session(self, outputs)`` from before the fused runs handed their
    large constants to ONNX Runtime as external initialisers (git 313aedf): it read the graph
    from ``self._graph`` and opened the session without them, so both are given here (the graph
    is today's ``fused_graph.Graph``, whose large constants are external)."""
    from npuflow.ort_session import open_session

    def with_graph(self, g, outputs):
        arrays = g.arrays
        module.open_session = lambda model, **kw: open_session(
            model, external={t.name: arrays[t.name] for t in model.graph.initializer if t.name in arrays}, **kw)
        self._graph = g
        try:
            return session(self, outputs)
        finally:
            self._graph = None
    return with_graph


def _session_with_planner(path: Path, planner, **kwargs):
    """A Session whose integer executors were planned by ``planner``, built with the caches off: a
    revision's ``plan`` looks its plan up under today's sources' key (``runtime/fused_cache.py``),
    so with them on it opened the plan today's Session had just stored, and the column timed
    today's graphs twice (session 37: PP-OCR cls "0.95x" its own code)."""
    from npuflow.outputs import CACHE_ENV
    from npuflow.runtime import fused

    current, cache = fused.plan, os.environ.get(CACHE_ENV)
    fused.plan, os.environ[CACHE_ENV] = planner, "0"
    try:
        return npuflow.Session(path, **kwargs)
    finally:
        fused.plan = current
        if cache is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = cache


#: ``--clock``: wall time, or the CPU time of this process (all its threads), which on a machine
#: shared with other jobs leaves out the waits for a core that wall time counts.
CLOCKS = {"wall": time.perf_counter, "process": time.process_time}


#: The column of ORT on the plain QDQ model with ``ort_kernels.exact_weights`` (uint8 weights where
#: this CPU's uint8 x int8 kernels saturate): the int8 kernels npuflow may use, at ORT's speed.  Its
#: name starts with neither "ORT plain QDQ " nor "ORT QDQ ", the prefixes ``best_of`` takes.
EXACT_PLAIN = "ORT exact-weight plain QDQ 1 thread"

#: Seconds of idle before each timed column (see ``bench_case``).
IDLE_S = 0.3


def _time(fn, runs: int, clock=time.perf_counter) -> tuple[float, float]:
    """Seconds per run by ``clock``, and by the wall clock over the same runs (the 2-thread
    columns' wall-clock scaling is reported beside ``clock``'s)."""
    wall, start = time.perf_counter(), clock()
    for _ in range(runs):
        fn()
    return (clock() - start) / runs, (time.perf_counter() - wall) / runs


def _batched(samples: list[dict], name: str, batch: int) -> list[dict]:
    """Calibration samples stacked ``batch`` at a time (the compiled model's batch is fixed)."""
    if batch == 1:
        return samples
    xs = np.concatenate([s[name] for s in samples])
    reps = -(-batch * 2 // len(xs))
    xs = np.concatenate([xs] * reps)
    return [{name: xs[k * batch:(k + 1) * batch]} for k in range(2)]


def bench_case(key: str, target_key: str, batch: int, rounds: int, runs: int, calib_n: int,
               before: tuple[str, object] | None = None, clock=time.perf_counter,
               memory_frames: int | None = 5) -> dict:
    """One row: outputs checked, columns timed interleaved and, unless ``memory_frames`` is None,
    each memory column's peak (``memory_columns``, that many frames per child)."""
    import onnx
    from npuflow.quant.export import to_plain_qdq

    title, fetch, name, chw, calib, extra_shapes = model(key)
    target = TARGETS[target_key]
    shape = [batch, *chw]
    if batch > 1 and extra_shapes:
        raise SystemExit(f"{key}: batch {batch} of a model with several inputs ({name}, {', '.join(extra_shapes)})")
    samples = _batched(calib(calib_n), name, batch)
    float_path = batch_model(fetch(), name, batch, Path(tempfile.mkdtemp()))
    _check_batch_model(fetch(), float_path, samples[0])
    t0 = time.perf_counter()
    quantized = npuflow.quantize(str(float_path), samples, target=target,
                                 input_shapes={name: shape, **extra_shapes})
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = npuflow.compile(quantized.model, target)
    t_compile = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.npuf"
        compiled.save(path)
        size = path.stat().st_size
        sessions = {"1": npuflow.Session(path, threads=1), "2": npuflow.Session(path, threads=2),
                    "before": npuflow.Session(path, fuse=False)}  # closed before the folder goes
        if before is not None:
            sessions["rev"] = _session_with_planner(path, before[1], threads=1)
        x = samples[0]
        plain = to_plain_qdq(quantized.model)
        qdq1, qdq2 = D.ort_session(quantized.model, 1), D.ort_session(quantized.model, 2)
        plain1, plain2 = D.ort_session(plain, 1), D.ort_session(plain, 2)
        # the plain QDQ model on the kernels npuflow's fused runs use: where this CPU's uint8 x int8
        # kernels saturate, ORT's speed on the exact weight form (the same as plain QDQ elsewhere)
        exact_plain = (D.ort_session(ort_kernels.exact_weights(onnx.ModelProto.FromString(plain.SerializeToString())), 1)
                       if ort_kernels.weight_form() == "u8" else None)
        fp1, fp2 = D.ort_session(float_path, 1), D.ort_session(float_path, 2)
        ours = sessions["1"].run(x)
        if before is not None:
            previous = sessions["rev"].run(x)
            if not all(np.array_equal(ours[k], previous[k]) for k in ours):
                raise SystemExit(f"{key} on {target}: outputs differ from fused.py at {before[0]}")
        reference = D.ort_session(ort_kernels.exact_weights(quantized.model), 1)  # see the module docstring
        ref = dict(zip([o.name for o in reference.get_outputs()], reference.run(None, x)))
        exact = all(np.array_equal(ours[k], ref[k]) for k in ours)
        max_diff = max(float(np.abs(ours[k].astype(np.float64) - ref[k]).max()) for k in ours)
        runners = {
            "npuflow 1 thread": lambda: sessions["1"].run(x),
            "npuflow 2 threads": lambda: sessions["2"].run(x),
            "npuflow op-by-op (before)": lambda: sessions["before"].run(x),
            **({f"npuflow fused.py at {before[0]} 1 thread": lambda: sessions["rev"].run(x)} if before else {}),
            "ORT QDQ 1 thread": lambda: qdq1.run(None, x),
            "ORT QDQ 2 threads": lambda: qdq2.run(None, x),
            "ORT plain QDQ 1 thread": lambda: plain1.run(None, x),
            "ORT plain QDQ 2 threads": lambda: plain2.run(None, x),
            **({EXACT_PLAIN: lambda: exact_plain.run(None, x)} if exact_plain is not None else {}),
            "ORT FP32 1 thread": lambda: fp1.run(None, x),
            "ORT FP32 2 threads": lambda: fp2.run(None, x),
        }
        for fn in runners.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runners}
        walls: dict[str, list[float]] = {k: [] for k in runners}
        order = list(runners.items())
        for r in range(rounds):
            # every other round backwards, so no column always follows the same neighbour (a
            # column's place in the round is not in its ratio)
            for label, fn in (order if r % 2 == 0 else order[::-1]):
                fn()  # untimed warm-up
                # idle until the pool threads of the column before (ORT's 2-thread sessions) stop
                # spinning: their spin would otherwise count as this column's CPU time (measured:
                # PP-OCR cls 6.3-8.0 ms per frame right after ORT's 2-thread session, 3.4-3.9 ms
                # after 0.5 s idle)
                time.sleep(IDLE_S)
                t, wall = _time(fn, runs, clock)
                times[label].append(t)
                walls[label].append(wall)
        sessions.clear()
        memory = None
        if memory_frames is not None:
            plain_path, input_path = Path(d) / "plain_qdq.onnx", Path(d) / "input.npz"
            onnx.save(plain, plain_path)
            np.savez(input_path, **x)
            models = {"npuflow 1 thread": ("npuflow", path), "ORT plain QDQ 1 thread": ("ORT", plain_path),
                      "ORT FP32 1 thread": ("ORT", Path(float_path))}
            memory = memory_columns(models, input_path, memory_frames)
    med = {k: statistics.median(v) / batch for k, v in times.items()}  # per frame
    med_wall = {k: statistics.median(v) / batch for k, v in walls.items()}
    ours_best = best_of(med, "npuflow")
    return {
        "model": title, "target": target, "batch": batch, "input": shape, "subgraphs": len(compiled.subgraphs),
        "accelerator_subgraphs": sum(s.on_accelerator for s in compiled.subgraphs),
        "outputs_equal_ort_qdq": exact, "max_output_diff_vs_ort_qdq": max_diff, "npuf_bytes": size,
        "quantize_s": t_quant, "compile_s": t_compile,
        "ms": {k: v * 1000 for k, v in med.items()},
        "wall_ms": {k: v * 1000 for k, v in med_wall.items()},
        "two_thread_scaling": {side: {"clock": med[f"{side} 1 thread"] / med[f"{side} 2 threads"],
                                      "wall": med_wall[f"{side} 1 thread"] / med_wall[f"{side} 2 threads"]}
                               for side in ("npuflow", "ORT plain QDQ")},
        "fps": {k: 1.0 / v for k, v in med.items()},
        "speedup_vs_op_by_op": med["npuflow op-by-op (before)"] / ours_best,
        "speedup_vs_rev_1_thread": (med[f"npuflow fused.py at {before[0]} 1 thread"] / med["npuflow 1 thread"]
                                    if before else None),
        "ratio_vs_best_ort_plain_qdq": best_of(med, "ORT plain QDQ") / ours_best,
        "ratio_vs_ort_exact_weight_plain_qdq": med[EXACT_PLAIN] / ours_best if EXACT_PLAIN in med else None,
        "ratio_vs_best_ort_qdq": best_of(med, "ORT QDQ") / ours_best,
        "ratio_vs_best_ort_fp32": best_of(med, "ORT FP32") / ours_best,
        "memory_mib": memory,
    }


def best_of(med: dict[str, float], prefix: str) -> float:
    """The least time per frame among the thread-count columns of ``prefix`` ("npuflow", "ORT plain
    QDQ", ...): the columns named ``prefix`` + `` N thread(s)``, not a ``--before`` revision's, nor
    another column whose name starts with the same words (the exact-weight column is its own)."""
    return min(v for k, v in med.items()
               if k.startswith(prefix + " ") and k[len(prefix) + 1:].split(" ")[0].isdigit() and " at " not in k)


#: The program of a ``--processes`` child: one ``bench_case`` (``case_from_spec``), its row as JSON.
CASE_CHILD = r'''
import json, sys
from benchmarks import bench_runtime as B
print(json.dumps(B.case_from_spec(json.loads(sys.argv[1]))))
'''

#: The ratios of a row that ``--processes`` reports as a median over the processes and its spread.
RATIOS = ("ratio_vs_best_ort_plain_qdq", "ratio_vs_ort_exact_weight_plain_qdq", "ratio_vs_best_ort_qdq",
          "ratio_vs_best_ort_fp32", "speedup_vs_op_by_op", "speedup_vs_rev_1_thread")


def case_from_spec(spec: dict) -> dict:
    """``bench_case`` from JSON options (``main`` builds them; a ``CASE_CHILD`` reads them)."""
    before = (spec["before"], fused_planner(spec["before"])) if spec["before"] else None
    return bench_case(*spec["case"], spec["rounds"], spec["runs"], spec["calib"], before, CLOCKS[spec["clock"]],
                      spec["memory_frames"])


def case_in_processes(spec: dict, processes: int) -> dict:
    """One row from ``processes`` fresh children, each running the whole case as one process does.
    A ratio moves between processes by more than the gaps it is read for (docs/compiler-runtime.md),
    so each ratio is the median of the processes' ratios, ``spread`` its [min, max], each time the
    median of their medians; ``processes`` keeps every row; memory is the first child's alone."""
    runs = [run_child(CASE_CHILD, {**spec, "memory_frames": None if k else spec["memory_frames"]}) for k in range(processes)]
    med = statistics.median
    row = {**runs[0], "processes": runs, "spread": {},
           "outputs_equal_ort_qdq": all(r["outputs_equal_ort_qdq"] for r in runs),
           "max_output_diff_vs_ort_qdq": max(r["max_output_diff_vs_ort_qdq"] for r in runs),
           **{k: med(r[k] for r in runs) for k in ("quantize_s", "compile_s")},
           **{k: {c: med(r[k][c] for r in runs) for c in runs[0][k]} for k in ("ms", "wall_ms")}}
    row["fps"] = {c: 1000.0 / v for c, v in row["ms"].items()}
    row["two_thread_scaling"] = {side: {c: med(r["two_thread_scaling"][side][c] for r in runs) for c in clocks}
                                 for side, clocks in runs[0]["two_thread_scaling"].items()}
    for key in (k for k in RATIOS if runs[0][k] is not None):  # the same columns in every process
        values = [r[key] for r in runs]
        row[key], row["spread"][key] = med(values), [min(values), max(values)]
    return row


def _ratio(v) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


def _ratio_cell(r: dict, key: str) -> str:
    """A row's ratio, with its spread over the processes (``--processes``) in brackets."""
    lo_hi = r.get("spread", {}).get(key)
    return _ratio(r.get(key)) + (f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else "")


def _scaling(r: dict, side: str) -> str:
    """``side``'s 2-thread over 1-thread throughput, by the table's clock / the wall clock (CPU time: 1.0
    is a second thread costing nothing beyond its share of the work; wall clock: up to 2.0 on two idle cores)."""
    s = r.get("two_thread_scaling", {}).get(side)
    return "n/a" if s is None else f"{s['clock']:.2f} / {s['wall']:.2f}"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(results: list[dict], meta: dict) -> str:
    """The tables of ``results``: timed rows, then the rows a target refused with a coded error."""
    refused = [r for r in results if "refused" in r]
    results = [r for r in results if "refused" not in r]
    cols = list(dict.fromkeys(c for r in results for c in r["ms"]))
    rev = meta.get("before")
    lines = [
        "# Runtime benchmark",
        "",
        f"Run {meta['date']} on {meta['machine']} ({meta.get('cpu', '')}, {meta['cpus']} CPUs, load average at start "
        f"{meta['load']}); median of {meta['rounds']} interleaved rounds of {meta['runs']} runs"
        + (f"; each case in {meta['processes']} fresh processes (`--processes`), every ratio the median of the "
           "processes' ratios with their range (min-max) in brackets, every time the median of the processes' "
           "medians." if meta.get("processes", 1) > 1 else "."),
        {"s8": "ONNX Runtime's uint8 x int8 kernels are exact on this CPU (VNNI): npuflow's integer kernels use int8 weights.",
         "u8": "ONNX Runtime's uint8 x int8 kernels saturate on this CPU (no VNNI): npuflow's integer kernels use uint8 "
               "weights (exact, about half the speed) except on convolutions whose weight pairs cannot saturate a "
               "16-bit lane (`ort_kernels.conv_weight_form`: int8, exact); the ORT QDQ columns run the saturating "
               "kernels, and outputs are compared with ORT on the exact weight form.",
         None: "ONNX Runtime's integer kernels are not exact on this CPU: npuflow's fused runs use float forms."}.get(
            meta.get("weight_form"), ""),
        f"Command: `{meta['command']}`.  Frames per "
        + ("CPU second of the benchmark process (`--clock process`: each column's work, all its threads, "
           "without the waits for a core that wall time counts on a shared machine; 2-thread columns "
           "include their pool threads' spinning)" if meta.get("clock") == "process" else "second")
        + " (higher is better; batch 8 rows: frames, not batches):",
        "",
        "| model | target | batch | " + " | ".join(cols) + " | npuflow / best ORT plain QDQ"
        " | npuflow / ORT exact-weight plain QDQ | npuflow / best ORT QDQ"
        " | npuflow / best ORT FP32 | fused / op-by-op |" + (f" 1 thread / fused.py at {rev} |" if rev else "")
        + " npuflow 2 / 1 threads | ORT plain QDQ 2 / 1 threads | outputs equal ORT QDQ | subgraphs (on accelerator) |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: | ---: | ---: | ---: |"
        + (" ---: |" if rev else "") + " ---: | ---: | --- | --- |",
    ]
    for r in results:
        fps = " | ".join(f"{r['fps'][c]:.1f}" if c in r["fps"] else "" for c in cols)
        equal = "True" if r["outputs_equal_ort_qdq"] else f"False (max diff {r['max_output_diff_vs_ort_qdq']:.3g})"
        lines.append(f"| {r['model']} | {r['target']} | {r['batch']} | {fps} | "
                     + "".join(f"{_ratio_cell(r, k)} | " for k in RATIOS[:6 if rev else 5])
                     + f"{_scaling(r, 'npuflow')} | {_scaling(r, 'ORT plain QDQ')} | {equal} | "
                     f"{r['subgraphs']} ({r['accelerator_subgraphs']}) |")
    lines += [
        "",
        "CPU milliseconds per frame:" if meta.get("clock") == "process" else "Milliseconds per frame:",
        "",
        "| model | target | batch | " + " | ".join(cols) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for r in results:
        lines.append(f"| {r['model']} | {r['target']} | {r['batch']} | "
                     + " | ".join(f"{r['ms'][c]:.1f}" if c in r["ms"] else "" for c in cols) + " |")
    lines += [
        "",
        "`npuflow op-by-op (before)` is `Session(fuse=False)`: every accelerator op as its kernel, the "
        "runtime before the fused runs (one ORT Conv session per convolution, int64 epilogues in numpy); "
        "the ratios compare the better of npuflow's 1- and 2-thread columns with the better of ORT's.  "
        "`2 / 1 threads`: the 2-thread column's frames per second over the 1-thread column's, by the table's "
        "clock / by the wall clock over the same runs (CPU time: 1.0 when the second thread adds no work; "
        "wall clock: at most 2.0, and only on idle cores).  "
        "The npuflow columns run the fused integer runs (`npuflow/runtime/fused.py`: each accelerator "
        "subgraph's integer program as ONNX Runtime graphs of exact float operations, requantisation "
        "by the rounding recipes of `numerics.py`) and ONNX Runtime for the CPU subgraphs (YOLOv8n on the "
        "DPU: the SiLU sigmoids, which the DPU lacks, and C2f's splits; one whose outputs are each an elementwise "
        "function of one 8-bit input, or a split of it, as the tables its ORT session computes for every code), with "
        "1 or 2 intra-op threads.  `npuflow fused.py at REV` "
        "(`--before REV`) plans the same Session's fused runs with `runtime/fused.py` as of git revision REV: the "
        "fused runs before a change, timed in the same rounds (its outputs are checked equal first).  ORT QDQ runs the same "
        "`quantized_model.onnx`; on the DPU target its half-up quantize steps are `ai.npuflow` functions ORT "
        "cannot fuse into QLinear kernels, so it computes in float32.  ORT plain QDQ runs the same quantization "
        "with standard `QuantizeLinear` steps (`npuflow quantize --plain-qdq`; ties to even, so not the "
        "DPU's arithmetic), which ORT fuses into its int8 kernels: the int8 speed reference.  ORT exact-weight "
        "plain QDQ runs that model with `ort_kernels.exact_weights` (where this CPU's uint8 x int8 kernels "
        "saturate: uint8 weights except on convolutions that cannot saturate a lane), the kernels npuflow's "
        "outputs are compared on: what ORT's own int8 speed is when it must be exact.  A model whose "
        "export fixes batch 1 (EfficientNet-Lite0, MNIST: a `Reshape` to `[1, -1]` before the classifier) "
        "runs its batch-8 rows as `batch_model`'s copy (that `Reshape` and the input at batch 8; its frames "
        "checked equal to the original's), in every column.  The machine is shared with "
        "other jobs (see the load average): absolute times vary from run to run, the interleaved ratios "
        "much less.",
        "",
    ]
    return "\n".join(lines + render_refused(refused) + render_processes(results) + render_memory(results, meta))


def render_refused(rows: list[dict]) -> list[str]:
    """The rows a target refused with a coded error (``NpuflowError``): not timed, not failures."""
    if not rows:
        return []
    return ["Refused by the target (a coded error at quantize or compile; not timed):", "",
            "| model | target | batch | code | message |", "| --- | --- | ---: | --- | --- |"] + [
        f"| {r['model']} | {r['target']} | {r['batch']} | `{r['refused']}` | {r['refusal'].replace('|', '/')} |"
        for r in rows] + [""]


def render_processes(results: list[dict]) -> list[str]:
    """Each process's ratios (``--processes``; empty without it)."""
    rows = [r for r in results if r.get("processes")]
    if not rows:
        return []
    return ["Each process's ratios (`--processes`: in the order they ran):", "",
            "| model | target | batch | npuflow / best ORT plain QDQ | npuflow / best ORT FP32 |",
            "| --- | --- | ---: | --- | --- |"] + [
        f"| {r['model']} | {r['target']} | {r['batch']} | " + " | ".join(
            ", ".join(_ratio(p[k]) for p in r["processes"]) for k in ("ratio_vs_best_ort_plain_qdq",
                                                                      "ratio_vs_best_ort_fp32")) + " |"
        for r in rows] + [""]


def render_memory(results: list[dict], meta: dict) -> list[str]:
    """The peak-memory table (empty without ``--memory``)."""
    rows = [r for r in results if r.get("memory_mib")]
    if not rows:
        return []
    cols = list(dict.fromkeys(c for r in rows for c in r["memory_mib"] if c != "baseline"))
    lines = [
        f"Peak memory, MiB over a baseline process (`--memory`, {meta.get('memory_frames')} frames per process): "
        "each column in a fresh process that imports numpy, ONNX Runtime and npuflow, loads the input, loads "
        "the model (the saved `.npuf`; the plain QDQ and FP32 `.onnx` files) with one intra-op thread and runs "
        "the frames; the figure is its peak resident set (`VmHWM`) minus that of a process that does the same "
        "without a model (its peak: the last column); the median of 3 rounds of such processes "
        "(`runtime_memory.memory_columns`).  In brackets: resident after the load / added by the "
        "first frame.  Lower is better; the target is npuflow <= ORT plain QDQ.",
        "",
        "| model | target | batch | " + " | ".join(cols) + " | npuflow / ORT plain QDQ | baseline |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " | ---: | ---: |",
    ]
    for r in rows:
        m = r["memory_mib"]
        cells = " | ".join(f"{m[c]['peak']:.1f} ({m[c]['load']:.1f} / {m[c]['first_frame']:.1f})" if c in m else ""
                           for c in cols)
        ours, plain = m.get("npuflow 1 thread"), m.get("ORT plain QDQ 1 thread")
        ratio = f"{ours['peak'] / plain['peak']:.2f}x" if ours and plain and plain["peak"] > 0 else "n/a"
        lines.append(f"| {r['model']} | {r['target']} | {r['batch']} | {cells} | {ratio} | {m['baseline']:.0f} |")
    return lines + [""]


def _processes(value: str) -> int:
    """``--processes``: a whole number, at least 1 (argparse names a bad value, no traceback)."""
    if not value.strip().isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes (a whole number, at least 1)")
    return int(value)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default=CASES, help="model:target:batch, comma-separated, or BATCH8 (the first six "
                    "models at batch 8) or CORPUS (every other corpus model on B4096 and cpu-int8, batch 1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calib", type=int, default=8)
    ap.add_argument("--before", metavar="REV", help="also time the fused runs as runtime/fused.py at git revision REV")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="time by the wall clock, or by this process's CPU time (a machine shared with other jobs)")
    ap.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                    help="measure each column's peak memory in fresh processes (a few seconds per case)")
    ap.add_argument("--memory-frames", type=int, default=5, help="frames each memory process runs")
    ap.add_argument("--processes", type=_processes, default=1, metavar="N",
                    help="each case in N fresh processes, each ratio's median and range over them (default 1)")
    ap.add_argument("--out", default="runtime", help="results/<OUT>.md and .json")
    args = ap.parse_args()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
            "rounds": args.rounds, "runs": args.runs, "before": args.before, "clock": args.clock,
            "command": " ".join(["python benchmarks/bench_runtime.py", *sys.argv[1:]]),
            "weight_form": ort_kernels.weight_form(), "cpu": _cpu_name(),
            "memory_frames": args.memory_frames if args.memory else None, "processes": args.processes}
    results = []
    for case in {"BATCH8": BATCH8, "CORPUS": CORPUS}.get(args.cases, args.cases).split(","):
        key, target_key, batch = case.split(":")
        spec = {"case": [key, target_key, int(batch)], "rounds": args.rounds, "runs": args.runs, "calib": args.calib,
                "before": args.before, "clock": args.clock, "memory_frames": meta["memory_frames"]}
        try:
            results.append(case_from_spec(spec) if args.processes == 1 else case_in_processes(spec, args.processes))
        except NpuflowError as e:  # the target's coded refusal: a row of its own, not a failure
            results.append({"model": model(key).title, "target": TARGETS[target_key], "batch": int(batch),
                            "refused": e.code, "refusal": e.message})
            sys.stderr.write(f"{case}: refused [{e.code}]\n")
            continue
        sys.stderr.write(f"{case}: {results[-1]['ratio_vs_best_ort_plain_qdq']:.2f}x best ORT plain QDQ\n")
        _save(results, meta, args.out)  # a long run keeps its rows if it stops
    sys.stdout.write(_save(results, meta, args.out))


def _save(results: list[dict], meta: dict, out: str) -> str:
    """Write ``results/<out>.md`` and ``.json``; the table's text."""
    text = render(results, meta)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{out}.md").write_text(text)
    (RESULTS / f"{out}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    return text


if __name__ == "__main__":
    main()
