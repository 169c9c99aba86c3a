"""Where a small model's frame goes in ``Session.run``, at this tree and at a git revision, interleaved.

``bench_runtime.py --before REV`` swaps only ``runtime/fused.py``; a change to ``session.py`` or
the executors needs the whole package of the other revision, so each revision runs in its own
worker process (this tree; ``--before REV`` checked out in a temporary git worktree) and the
parent interleaves them block by block on the same ``.npuf``, built once here.  Per case and
revision:

* ``frame``: CPU milliseconds of this process per ``Session.run`` (one thread), the median of the
  interleaved blocks, beside ONNX Runtime on the plain QDQ model (``npuflow quantize --plain-qdq``)
  and on that model with ``ort_kernels.exact_weights`` (the exact int8 kernels npuflow's fused runs
  use where this CPU's uint8 x int8 kernels saturate), timed in this tree's worker;
* ``ort calls``: ONNX Runtime runs per frame, and the CPU microseconds spent inside them
  (``_sess.run``, the compiled session, which the Python ``InferenceSession.run`` calls);
* ``python``: the microseconds per frame outside ONNX Runtime's compiled runs, measured with every
  such run replaced by returning the outputs it gave once (input checks, dictionaries, executor
  dispatch, ONNX Runtime's own Python wrapper where it is called): deterministic, unlike the
  frame's few-percent share of it on a loaded machine.

    python benchmarks/bench_session_overhead.py [--cases mnist:cpu-int8:1,cls:cpu-int8:1] [--before REV]
                                                [--rounds 15] [--frames 0.3] [--idle 0.3]

``--frames`` is the CPU seconds each timed block aims at.  ``--idle S`` times each block as
``bench_runtime.py`` times its columns instead: an untimed frame, S seconds idle, 3 timed frames
(a frame after an idle, as a server's request meets it: caches taken by other processes, where
every C function and object a frame touches costs misses; the Python around ONNX Runtime's run
costs several times its hot-loop figure there).  Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def worker(root: str, folder: str, reference: bool) -> None:
    """Serve timing requests on stdin for the Session of ``folder/model.npuf`` run by the npuflow
    package in ``root`` (and, with ``reference``, ONNX Runtime on the plain QDQ models)."""
    sys.path.insert(0, root)
    import time

    import numpy as np
    import onnx
    import onnxruntime as ort

    import npuflow
    from npuflow import ort_kernels

    folder_path = Path(folder)
    x = dict(np.load(folder_path / "input.npz"))
    session = npuflow.Session(folder_path / "model.npuf", threads=1)
    columns = {"npuflow": lambda: session.run(x)}
    if reference:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
        plain = onnx.load(folder_path / "plain.onnx")
        sessions = {"ORT plain QDQ": plain.SerializeToString(),
                    "ORT plain QDQ exact weights": ort_kernels.exact_weights(plain).SerializeToString()}
        for label, data in sessions.items():
            s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
            columns[label] = lambda s=s: s.run(None, x)
    for fn in columns.values():
        fn()
    out = sys.stdout
    out.write(json.dumps({"columns": list(columns), "root": npuflow.__file__}) + "\n")
    out.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request["do"] == "time":
            fn, n = columns[request["column"]], request["frames"]
            fn()
            if request.get("idle"):
                time.sleep(request["idle"])
            t0 = time.process_time()
            for _ in range(n):
                fn()
            out.write(json.dumps({"ms": (time.process_time() - t0) / n * 1e3}) + "\n")
        elif request["do"] == "profile":
            out.write(json.dumps(_profile(session, x, request["frames"])) + "\n")
        out.flush()


def _profile(session, x: dict, frames: int) -> dict:
    """ONNX Runtime calls per frame and the CPU time inside them; then the Python work per frame
    with every compiled run answered from a cache (the last measurement: it leaves the cache in)."""
    import time

    from onnxruntime.capi.onnxruntime_pybind11_state import InferenceSession as Compiled

    real = Compiled.run
    stats = {"calls": 0, "inside": 0.0}

    def counted(self, names, feeds, options=None):
        t0 = time.process_time()
        try:
            return real(self, names, feeds, options)
        finally:
            stats["inside"] += time.process_time() - t0
            stats["calls"] += 1

    cache: dict = {}

    def cached(self, names, feeds, options=None):
        key = (id(self), tuple(names))
        if key not in cache:
            cache[key] = real(self, names, feeds, options)
        return cache[key]

    result = {}
    for label, patch in (("inside", counted), ("python", cached)):
        Compiled.run = patch
        _rebind(session)
        session.run(x)
        stats["calls"], stats["inside"] = 0, 0.0
        n = frames if label == "inside" else frames * 20
        t0 = time.process_time()
        for _ in range(n):
            session.run(x)
        total = (time.process_time() - t0) / n
        if label == "inside":
            result["ort_calls"] = stats["calls"] / n
            result["inside_us"] = stats["inside"] / n * 1e6
            result["frame_us"] = total * 1e6
        else:
            result["python_us"] = total * 1e6
    return result


def _rebind(session) -> None:
    """Make executors that bound the compiled run at load (``fused.direct_run``) look it up again,
    so that the patched class method is the one called."""
    from npuflow.runtime import fused

    for program in session._programs:
        for step in program.steps:
            executor = step.executor
            items = getattr(getattr(executor, "plan", None), "items", [])
            for obj in [executor, *items]:
                if getattr(obj, "_direct", None) is not None:
                    obj._direct = (None, None)
                if getattr(obj, "_run", None) is not None and getattr(obj, "session", None) is not None:
                    obj._run = fused.direct_run(obj.session)


def _build(case: str, folder: Path) -> str:
    """Quantize and compile ``case`` (model:target:batch, as ``bench_runtime.py``) into ``folder``."""
    for p in (str(ROOT), str(HERE)):
        if p not in sys.path:
            sys.path.insert(0, p)
    import numpy as np
    import onnx

    import bench_runtime as B
    import npuflow
    from npuflow.quant.export import to_plain_qdq

    key, target_key, batch = case.split(":")
    title, fetch, name, chw, calib, extra_shapes = B.model(key)
    target = B.TARGETS[target_key]
    samples = B._batched(calib(8), name, int(batch))
    quantized = npuflow.quantize(str(fetch()), samples, target=target,
                                 input_shapes={name: [int(batch), *chw], **extra_shapes})
    npuflow.compile(quantized.model, target).save(folder / "model.npuf")
    onnx.save(to_plain_qdq(quantized.model), folder / "plain.onnx")
    np.savez(folder / "input.npz", **samples[0])
    return f"{title} | {target} | {batch}"


class _Worker:
    def __init__(self, root: Path, folder: Path, reference: bool) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(root), str(folder)]
                                     + (["--reference"] if reference else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        self.hello = json.loads(self.proc.stdout.readline())

    def ask(self, **request) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="mnist:cpu-int8:1,cls:cpu-int8:1")
    ap.add_argument("--before", metavar="REV", help="also run the npuflow package as of git revision REV")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=float, default=0.3, help="CPU seconds each timed block aims at")
    ap.add_argument("--idle", type=float, default=0.0, metavar="S",
                    help="time each block as bench_runtime.py does: a frame, S seconds idle, 3 timed frames")
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(*args.worker, args.reference)
        return
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"this tree": ROOT}
        if args.before:
            wt = Path(tmp) / "before"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(wt), args.before],
                           check=True, capture_output=True)
            roots[f"at {args.before}"] = wt
        try:
            rows = [_case(case, Path(tmp), roots, args) for case in args.cases.split(",")]
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(roots[f"at {args.before}"])],
                               check=False, capture_output=True)
    sys.stdout.write("\n".join(_render(rows, roots, args)) + "\n")


def _case(case: str, tmp: Path, roots: dict, args) -> dict:
    folder = tmp / case.replace(":", "_")
    folder.mkdir()
    title = _build(case, folder)
    workers = {label: _Worker(root, folder, reference=k == 0) for k, (label, root) in enumerate(roots.items())}
    try:
        columns = [(label, column) for label, w in workers.items() for column in w.hello["columns"]]
        first = workers["this tree"]
        per_frame = first.ask(do="time", column="npuflow", frames=3)["ms"]
        frames = max(3, int(args.frames * 1e3 / max(per_frame, 1e-3)))
        block = dict(frames=3, idle=args.idle) if args.idle else dict(frames=frames)
        times: dict = {c: [] for c in columns}
        for r in range(args.rounds):  # every other round backwards, as bench_runtime's rounds
            for label, column in (columns if r % 2 == 0 else columns[::-1]):
                times[(label, column)].append(workers[label].ask(do="time", column=column, **block)["ms"])
        profiles = {label: w.ask(do="profile", frames=frames) for label, w in workers.items()}
    finally:
        for w in workers.values():
            w.close()
    sys.stderr.write(f"{case} done\n")
    return {"title": title, "frames": frames, "ms": {c: statistics.median(v) for c, v in times.items()},
            "profiles": profiles}


def _render(rows: list[dict], roots: dict, args) -> list[str]:
    labels = list(roots)
    blocks = (f"blocks of an untimed frame, {args.idle} s idle and 3 timed frames" if args.idle
              else "blocks")
    lines = [f"Median of {args.rounds} interleaved {blocks} (CPU ms per frame, one thread); "
             "`python`: microseconds per frame outside ONNX Runtime's compiled runs.", "",
             "| model | target | batch | " + " | ".join(f"npuflow {lb}" for lb in labels)
             + " | ORT plain QDQ | ORT plain QDQ exact weights | "
             + " | ".join(f"ORT calls, inside, python ({lb})" for lb in labels)
             + " | " + " | ".join(f"ORT plain QDQ / npuflow {lb}" for lb in labels)
             + " | ORT plain QDQ exact weights / npuflow this tree |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in range(len(labels) * 3 + 3)) + " |"]
    for r in rows:
        ms, prof = r["ms"], r["profiles"]
        plain, exact = ms[("this tree", "ORT plain QDQ")], ms[("this tree", "ORT plain QDQ exact weights")]
        ours = [ms[(lb, "npuflow")] for lb in labels]
        lines.append(f"| {r['title']} | " + " | ".join(f"{v:.3f}" for v in ours) + f" | {plain:.3f} | {exact:.3f} | "
                     + " | ".join(f"{prof[lb]['ort_calls']:.0f}, {prof[lb]['inside_us']:.0f} us, "
                                  f"{prof[lb]['python_us']:.1f} us" for lb in labels)
                     + " | " + " | ".join(f"{plain / v:.2f}x" for v in ours) + f" | {exact / ours[0]:.2f}x |")
    return lines


if __name__ == "__main__":
    main()
