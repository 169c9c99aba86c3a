"""Does the accuracy check on evaluation samples (``quantize(eval_data=...)``) warn where the calibration samples hide a loss, and stay silent where there is none?

    nice -n 5 python benchmarks/bench_eval_data_check.py TARGET [NCAL] [NEVAL] [MODEL ...]

Per model: one quantize with the defaults (the check reads the first 16 calibration samples, the ranges
were set on them) and one with ``eval_data``: NEVAL inputs calibration never saw (``bench_corpus_accuracy.held_out``).
Models: the five real ones (corpus names) and ``cyclegan``, new-user round 24's CycleGAN-like generator
(``tests/unit/test_eval_data_check.py``: seeded random weights, 8 calibration crops, 24 other crops).  One
JSON line per model: the codes each run warned, the check's figure (worst output, pooled) and its worst
sample on each set, the quantize times.  Results: ``benchmarks/results/honest_s34.md``.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import npuflow  # noqa: E402

MODELS = ("pypi/efficientnet_lite0", "pypi/yolov8n", "pypi/ppocr_det", "pypi/ppocr_rec", "pypi/mnist_cnn", "cyclegan")


def data_for(model: str, ncal: int, neval: int) -> tuple[str, list[dict], list[dict], dict | None]:
    """(model path, calibration samples, evaluation samples, input shapes)."""
    if model == "cyclegan":
        import torch

        from tests.unit.test_eval_data_check import crops, cyclegan_like

        path = Path(tempfile.mkdtemp()) / "cyclegan.onnx"
        torch.onnx.export(cyclegan_like(), torch.zeros(1, 3, 64, 64), str(path), input_names=["x"],
                          output_names=["y"], opset_version=11, dynamo=False)
        px = crops(36, seed=0)
        return str(path), [{"x": a[None]} for a in px[:8]], [{"x": a[None]} for a in px[12:36]], None
    from benchmarks.bench_corpus_accuracy import held_out
    from tests.corpus.registry import ALL, calibration_for
    from tests.fixture_models import CACHE

    entry = next(m for m in ALL if m.name == model)
    path = entry.make(CACHE)
    return str(path), calibration_for(entry, path, ncal), held_out(entry, path, neval), entry.input_shapes


def figures(q, worst: dict, pooled: dict) -> dict:
    """The worst output's pooled cosine and that output's worst sample."""
    if not pooled:
        return {}
    name = min(pooled, key=pooled.get)
    return {"output": name, "pooled": round(pooled[name], 4),
            "worst_sample": round(worst[name][0], 4) if name in worst else None}


def codes(q) -> list[str]:
    return [w.code for w in q.calibration_warnings] + ([q.problem.code] if q.problem is not None else [])


def cell(model: str, target: str, ncal: int, neval: int) -> dict:
    path, calib, evaluation, shapes = data_for(model, ncal, neval)
    start = time.monotonic()
    plain = npuflow.quantize(path, calib, target, input_shapes=shapes, warn=False)
    t_plain = time.monotonic() - start
    start = time.monotonic()
    judged = npuflow.quantize(path, calib, target, input_shapes=shapes, warn=False, eval_data=evaluation)
    t_eval = time.monotonic() - start
    r = judged.report
    return {"model": model, "target": target, "calib": len(calib), "eval": len(evaluation),
            "default": {"codes": codes(plain), **figures(plain, plain.report.worst_samples,
                                                         plain.report.judged_similarity()), "s": round(t_plain, 1)},
            "eval_data": {"codes": codes(judged), **figures(judged, r.worst_samples, r.judged_similarity()),
                          "fitted": figures(judged, r.fitted_worst, r.fitted_outputs), "s": round(t_eval, 1)}}


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.ERROR)
    target = argv[0]
    ncal = int(argv[1]) if len(argv) > 1 else 16
    neval = int(argv[2]) if len(argv) > 2 else 16
    for model in argv[3:] or MODELS:
        print(json.dumps(cell(model, target, ncal, neval)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
