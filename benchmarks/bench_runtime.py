"""Runtime benchmark: batch-1 throughput of a compiled model against ONNX Runtime, in one run.

For EfficientNet-Lite0 (1x3x224x224) and YOLOv8n (1x3x320x320): quantize for the DPU target
(power-of-two, half-up activations) on a few calibration samples, compile, and time, on the same
input and interleaved round by round (the machine is shared, so load hits every column alike):

* npuflow ``Session`` on the ``.npuf`` (integer executor, one BLAS thread);
* ONNX Runtime running the same ``quantized_model.onnx`` (QDQ), 1 and 2 intra-op threads;
* ONNX Runtime running the FP32 model, 1 and 2 intra-op threads.

The compiled model's outputs are checked equal to ONNX Runtime's QDQ outputs first.

    python benchmarks/bench_runtime.py [--rounds 5] [--runs 5] [--models effnet,yolo]

Writes ``benchmarks/results/runtime.md`` (and ``runtime.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
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
from tests import fixture_models  # noqa: E402

import npuflow  # noqa: E402

RESULTS = HERE / "results"
TARGET = "DPUCZDX8G_ISA1_B4096"

MODELS = {
    "effnet": ("EfficientNet-Lite0", fixture_models.efficientnet_lite0, "input", [1, 3, 224, 224],
               lambda n: D.efficientnet("calib", n)[0]),
    "yolo": ("YOLOv8n (320)", fixture_models.yolov8n, "images", [1, 3, 320, 320], lambda n: D.yolo("calib", n)),
}


def _time(fn, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) / runs


def bench_model(key: str, rounds: int, runs: int, calib_n: int) -> dict:
    title, fetch, name, shape, calib = MODELS[key]
    float_path = fetch()
    samples = calib(calib_n)
    t0 = time.perf_counter()
    quantized = npuflow.quantize(str(float_path), samples, target=TARGET, input_shapes={name: shape})
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = npuflow.compile(quantized.model, TARGET)
    t_compile = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.npuf"
        compiled.save(path)
        size = path.stat().st_size
        session = npuflow.Session(path)
        x = samples[0]
        qdq1, qdq2 = D.ort_session(quantized.model, 1), D.ort_session(quantized.model, 2)
        fp1, fp2 = D.ort_session(float_path, 1), D.ort_session(float_path, 2)
        ours = session.run(x)
        ref = dict(zip([o.name for o in qdq1.get_outputs()], qdq1.run(None, x)))
        exact = all(np.array_equal(ours[k], ref[k]) for k in ours)
        runners = {
            "npuflow .npuf": lambda: session.run(x),
            "ORT QDQ 1 thread": lambda: qdq1.run(None, x),
            "ORT QDQ 2 threads": lambda: qdq2.run(None, x),
            "ORT FP32 1 thread": lambda: fp1.run(None, x),
            "ORT FP32 2 threads": lambda: fp2.run(None, x),
        }
        for fn in runners.values():
            fn()
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(rounds):
            for label, fn in runners.items():
                times[label].append(_time(fn, runs))
        del session
    med = {k: statistics.median(v) for k, v in times.items()}
    best_qdq = min(med["ORT QDQ 1 thread"], med["ORT QDQ 2 threads"])
    return {
        "model": title, "input": shape, "subgraphs": len(compiled.subgraphs),
        "accelerator_subgraphs": sum(s.on_accelerator for s in compiled.subgraphs),
        "outputs_equal_ort_qdq": exact, "npuf_bytes": size, "quantize_s": t_quant, "compile_s": t_compile,
        "ms": {k: v * 1000 for k, v in med.items()},
        "fps": {k: 1.0 / v for k, v in med.items()},
        "ratio_vs_best_ort_qdq": best_qdq / med["npuflow .npuf"],
    }


def render(results: list[dict], meta: dict) -> str:
    cols = list(results[0]["ms"])
    lines = [
        "# Runtime benchmark (batch 1)",
        "",
        f"Run {meta['date']} on {meta['machine']} ({meta['cpus']} CPUs, load average at start "
        f"{meta['load']}); target {TARGET}; median of {meta['rounds']} interleaved rounds of {meta['runs']} runs.",
        "Command: `python benchmarks/bench_runtime.py`.  Frames per second (higher is better):",
        "",
        "| model | " + " | ".join(cols) + " | npuflow / best ORT QDQ | outputs equal ORT QDQ | subgraphs (on DPU) |",
        "| --- | " + " | ".join("---:" for _ in cols) + " | ---: | --- | --- |",
    ]
    for r in results:
        fps = " | ".join(f"{r['fps'][c]:.1f}" for c in cols)
        lines.append(f"| {r['model']} | {fps} | {r['ratio_vs_best_ort_qdq']:.2f}x | {r['outputs_equal_ort_qdq']} | "
                     f"{r['subgraphs']} ({r['accelerator_subgraphs']}) |")
    lines += [
        "",
        "Milliseconds per frame:",
        "",
        "| model | " + " | ".join(cols) + " |",
        "| --- | " + " | ".join("---:" for _ in cols) + " |",
    ]
    for r in results:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['ms'][c]:.1f}" for c in cols) + " |")
    lines += [
        "",
        "The npuflow column runs the integer executor (exact integer convolution sums through ONNX "
        "Runtime's float32 Conv in chunks below 2^24, requantisation with `numerics.shift_round`) for the DPU subgraphs and ONNX Runtime (1 thread) "
        "for the CPU subgraphs (YOLOv8n's SiLU sigmoids: the DPU has no sigmoid).  ORT QDQ runs the same "
        "`quantized_model.onnx`, whose half-up quantize steps are `ai.npuflow` functions ORT cannot fuse into "
        "QLinear kernels, so it computes in float32.  The machine is shared with other jobs (see the load average): "
        "absolute times vary from run to run, the interleaved ratios much less.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="effnet,yolo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--calib", type=int, default=8)
    args = ap.parse_args()
    meta = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
            "rounds": args.rounds, "runs": args.runs}
    results = [bench_model(k, args.rounds, args.runs, args.calib) for k in args.models.split(",")]
    text = render(results, meta)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "runtime.md").write_text(text)
    (RESULTS / "runtime.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
