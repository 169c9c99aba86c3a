"""Does a label-free score on held-out training-side samples pick the better fast-finetune seeds?
(issue 18; ``fast_finetune: {restarts, select_on}``, npuflow/quant/algorithms/restarts.py)

``--seeds 0,1,2``: one ``npuflow.quantize`` per seed (DPUCZDX8G_ISA1_B4096; PP-OCRv4 rec: AdaQuant 500
with learned weight thresholds, EfficientNet-Lite0: AdaRound 500, both on 32 calibration samples as
``bench_accuracy.py``), each scored on the benchmark's evaluation set and, without labels, against
FP32 on 512 held-out samples: output MSE, output cosine and task agreement (rec: greedy-decoded line
equal to FP32's, as class sequences and as text with border spaces stripped; EffNet: argmax equal),
the same on the 32 calibration samples for contrast.
``--restarts N``: one ``npuflow.quantize`` with ``restarts: N, select_on: 512`` (the held-out samples
appended to the calibration data), its evaluation score and every restart's held-out score.
``--set FIELD=JSON`` (repeatable) overrides one ``fast_finetune`` field of those configs (e.g.
``--set iters=2000``, ``--set lr=0.0015``); ``--eval-only`` skips the held-out and calibration scores.
``--calib N`` (default 32): calibration samples, all of them read by fast finetune (the config's
``finetune_samples`` set to N); rec's first 32 lines are the default run's, so 32 and 256 share a prefix.
Every row records the process' peak resident memory so far (``peak_rss_mb``: one run per process for a
clean figure).
``--summary FILE``: from the ``--seeds`` rows of a JSON-lines file, the seed that ``restarts: N`` (seeds
0..N-1) keeps for every N (the option's rule: the highest held-out task agreement, then output cosine, then
the earlier seed) against the mean of those seeds' evaluation scores, as a markdown table.

Held-out samples: rec, the last 512 of ``bench_qat.py``'s 768 training lines (its guard set);
EffNet, 512 crops of another seed (calibration crops use 101, evaluation 102, these 103).  Neither
set meets the evaluation samples.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_accuracy as BA  # noqa: E402
import datasets as D  # noqa: E402
import numpy as np  # noqa: E402

import npuflow  # noqa: E402
from npuflow.quant.output_kinds import ctc_greedy_sequences  # noqa: E402

HELD = 512
#: rec's held-out lines are the calibration stream's lines TRAIN - HELD .. TRAIN - 1
TRAIN = 768


def setup(kind: str, n_calib: int = 32):
    """``(bench, held-out samples, fast_finetune config)`` of one model on ``n_calib`` calibration samples.

    rec's calibration lines are the first ``n_calib`` of the stream whose last ``HELD`` of ``TRAIN`` are
    the held-out lines, so more than ``TRAIN - HELD`` would score on lines they were fitted to: refused."""
    if kind == "rec":
        if n_calib > TRAIN - HELD:
            raise ValueError(f"--calib {n_calib}: rec's held-out lines start at calibration line {TRAIN - HELD}; "
                             f"use at most {TRAIN - HELD}")
        bench = BA.benches(["ppocr"], n_calib, 300, 24)[0]
        train, _ = D.ocr_lines("calib", TRAIN)
        return bench, train[TRAIN - HELD:], {"method": "adaquant", "iters": 500, "learn_threshold": True}
    bench = BA.benches(["effnet"], n_calib, 300, 24)[0]
    held = [{"input": D._effnet_input(c)} for c in D.random_crops(HELD, 224, 103)]
    return bench, held, {"method": "adaround", "iters": 500}


def scores(float_session, q_session, samples: list, kind: str) -> dict:
    """Label-free scores of the quantized model against FP32 on ``samples``."""
    name = float_session.get_inputs()[0].name
    f = [float_session.run(None, {name: s[name]})[0] for s in samples]
    q = [q_session.run(None, {name: s[name]})[0] for s in samples]
    cos = [float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)) for a, b in zip(f, q)]
    out = {"mse": float(np.mean([np.mean((a - b) ** 2) for a, b in zip(f, q)])), "cos": float(np.mean(cos)),
           "n": len(samples)}
    if kind == "rec":  # the option's class sequence, and the text the evaluation reads (border spaces stripped)
        out["agree"] = float(np.mean([ctc_greedy_sequences(a) == ctc_greedy_sequences(b) for a, b in zip(f, q)]))
        out["agree_text"] = float(np.mean([D.ctc_greedy_decode(a) == D.ctc_greedy_decode(b) for a, b in zip(f, q)]))
    else:
        out["agree"] = float(np.mean([a.argmax() == b.argmax() for a, b in zip(f, q)]))
    return out


def quantize_row(model, bench, cfg: dict, calib: list, kind: str) -> tuple[dict, object]:
    """One ``npuflow.quantize`` with fast finetune ``cfg`` on ``calib``, scored on the evaluation set:
    ``(row, quantized)``.  Fast finetune reads every one of the bench's calibration samples
    (``finetune_samples``: before it was a config field, it read at most 64 whatever ``--calib`` gave)."""
    t0 = time.time()
    q = npuflow.quantize(model, calib, target=BA.TARGET,
                         config={"fast_finetune": cfg, "finetune_samples": len(bench.calib)})
    row = {"model": kind, "calib": len(bench.calib), "fast_finetune": cfg, "quantize_s": round(time.time() - t0, 1),
           "eval": bench.evaluate(D.ort_session(q.model)), "algorithms": q.info["algorithms"].get("fast_finetune")}
    return row, q


def summary(path: str) -> str:
    """The ``--summary`` table of the seed rows in ``path`` (module docstring)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_seed = {r["fast_finetune"]["seed"]: r for r in rows if "restarts" not in r["fast_finetune"]}
    key = "line" if "line" in next(iter(by_seed.values()))["eval"] else "top1_agree"
    out = ["| seed | eval % | held-out agreement (the option's) | held-out text agreement | held-out cosine |",
           "| ---: | ---: | ---: | ---: | ---: |"]
    for seed in sorted(by_seed):
        r = by_seed[seed]
        out.append(f"| {seed} | {r['eval'][key]:.2f} | {r['held']['agree']:.4f} | "
                   f"{r['held'].get('agree_text', float('nan')):.4f} | {r['held']['cos']:.5f} |")
    out += ["", "| restarts N (seeds 0..N-1) | kept seed | its eval % | mean eval % of those seeds |",
            "| ---: | ---: | ---: | ---: |"]
    seeds = sorted(by_seed)
    for n in range(1, len(seeds) + 1):
        if seeds[:n] != list(range(n)):
            break
        kept = max(seeds[:n], key=lambda s: (by_seed[s]["held"]["agree"], by_seed[s]["held"]["cos"], -s))
        mean = float(np.mean([by_seed[s]["eval"][key] for s in seeds[:n]]))
        out.append(f"| {n} | {kept} | {by_seed[kept]['eval'][key]:.2f} | {mean:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", choices=["rec", "effnet"])
    ap.add_argument("--seeds", default=None, help="comma-separated seeds, one quantize each")
    ap.add_argument("--restarts", type=int, default=None, help="one quantize with this many restarts")
    ap.add_argument("--out", default=None, help="JSON lines appended here")
    ap.add_argument("--summary", default=None, help="print the restarts table of this JSON-lines file and exit")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=JSON",
                    help="override a fast_finetune field of the model's config, e.g. --set iters=2000 (repeatable)")
    ap.add_argument("--calib", type=int, default=32,
                    help="calibration samples, every one read by fast finetune (finetune_samples = this)")
    ap.add_argument("--eval-only", action="store_true",
                    help="--seeds: score the evaluation set only (no held-out or calibration agreement runs)")
    args = ap.parse_args()
    if args.summary:
        print(summary(args.summary))
        return
    bench, held, ff = setup(args.model, args.calib)
    for item in args.set:
        field, _, value = item.partition("=")
        try:
            ff[field] = json.loads(value)
        except json.JSONDecodeError:
            ap.error(f"--set {item!r}: expected FIELD=JSON, e.g. iters=2000")
    model = BA.npuflow_load(bench.path, bench.input_shapes)
    fp32 = D.ort_session(model)
    runs = [({**ff, "seed": int(s)}, list(bench.calib)) for s in (args.seeds or "").split(",") if s]
    if args.restarts:
        runs.append(({**ff, "seed": 0, "restarts": args.restarts, "select_on": HELD}, list(bench.calib) + held))
    for cfg, calib in runs:
        row, q = quantize_row(model, bench, cfg, calib, args.model)
        if "restarts" not in cfg and not args.eval_only:
            qs = D.ort_session(q.model)
            row.update(held=scores(fp32, qs, held, args.model), calib=scores(fp32, qs, list(bench.calib), args.model))
        row.update(peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   load=os.getloadavg()[0], end=time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()))
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
