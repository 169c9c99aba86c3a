"""Run the conformance corpus (``tests/corpus/``) on every target and write the results table.

    python benchmarks/bench_corpus.py [--models PATTERN] [--targets T1,T2] [--jobs N] [--fast]
                                      [--stage-timeout S] [--no-node-cases] [--resume]

Every model x target cell runs all stages through the CLI (``tests/corpus/harness.py``); the ONNX
node cases go through ``check`` (and Q/DQ cases through ``compile`` + ``run``).  Results go to
``benchmarks/results/corpus.md`` and ``corpus.json`` beside it, rewritten after every cell so an
interrupted run keeps what it measured (``--resume`` then skips the cells already there).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.corpus import node_cases  # noqa: E402  (the repo root must be importable first)
from tests.corpus.harness import FAILURES, OPTIONAL, STAGES, Options, run_cell  # noqa: E402
from tests.corpus.registry import ALL  # noqa: E402

TARGETS = ("DPUCZDX8G_ISA1_B4096", "DPUCAHX8L_ISA0", "bernoulli2", "cpu-int8")
RESULTS = ROOT / "benchmarks" / "results"
SHORT = {"ok": "ok", "skipped": "-", "traceback": "**TRACEBACK**", "wrong": "**WRONG**", "timeout": "**TIMEOUT**"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="*", help="glob(s) on corpus names, comma separated (e.g. 'torch/*-op13')")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated target names")
    p.add_argument("--jobs", type=int, default=1, help="cells run at the same time")
    p.add_argument("--fast", action="store_true", help="only the CI subset (entries marked fast)")
    p.add_argument("--stage-timeout", type=float, default=600.0, help="seconds per stage")
    p.add_argument("--analyze-timeout", type=float, default=300.0, help="seconds for analyze sensitivity")
    p.add_argument("--skip", default="", help=f"comma-separated stages not to run, of {', '.join(OPTIONAL)}")
    p.add_argument("--no-node-cases", action="store_true", help="skip the ONNX node cases")
    p.add_argument("--resume", action="store_true", help="keep the cells already in corpus.json")
    p.add_argument("--rerun-failures", action="store_true",
                   help="with --resume: run again only the selected cells that failed (after a fix)")
    p.add_argument("--out", type=Path, default=RESULTS / "corpus.md")
    return p.parse_args(argv)


def selected(pattern: str, fast: bool) -> list:
    globs = [g.strip() for g in pattern.split(",") if g.strip()]
    return [m for m in ALL if (not fast or m.fast) and any(fnmatch.fnmatch(m.name, g) for g in globs)]


# --------------------------------------------------------------------------------------------
# node cases


def run_node_cases(targets: list[str]) -> dict:
    """Counts per target and stage, and every case that crashed or ran wrong."""
    out: dict = {"cases": len(node_cases.cases()), "targets": {}}
    for target in targets:
        counts: dict[str, Counter] = {"check": Counter(), "qdq_run": Counter()}
        problems = []
        for case in node_cases.cases():
            runs = [("check", node_cases.check_case)]
            if case.op_type in node_cases.QDQ_OPS:
                runs.append(("qdq_run", node_cases.run_case))
            for stage_name, fn in runs:
                stage = fn(case, target)
                counts[stage_name][stage.status] += 1
                if stage.status in FAILURES:
                    problems.append({"case": case.name, "stage": stage_name, "status": stage.status,
                                     "detail": stage.detail})
        out["targets"][target] = {"counts": {k: dict(v) for k, v in counts.items()}, "problems": problems}
    return out


# --------------------------------------------------------------------------------------------
# counts and tables


def counts(cells: list[dict]) -> dict:
    """The figures the issue asks for, over cells (model x target)."""
    def statuses(c: dict) -> dict[str, str]:
        return {k: s["status"] for k, s in c["stages"].items()}

    c = Counter()
    codes = Counter()
    for cell in cells:
        st = statuses(cell)
        bad = [k for k, v in st.items() if v in FAILURES]
        refused = [k for k, v in st.items() if v == "refused" and k != "bad_calib"]
        c["cells"] += 1
        c["cells ok (every stage ok)"] += not bad and not refused
        c["cells with a coded refusal"] += bool(refused)
        c["cells with a traceback"] += any(v == "traceback" for v in st.values())
        c["cells with a wrong result"] += any(v == "wrong" for v in st.values())
        c["cells with a timeout"] += any(v == "timeout" for v in st.values())
        c["compile succeeded but run fails"] += st.get("compile") in ("ok", "wrong") and st.get("run") != "ok"
        c["silent collapses (quantize)"] += "silent collapse" in cell["stages"].get("quantize", {}).get("detail", "")
        c["not bit-exact / beyond 1 LSB"] += st.get("exact") == "wrong"
        c["bad calibration not refused with its file name"] += st.get("bad_calib") in FAILURES
        for k in refused:
            codes[cell["stages"][k]["code"]] += 1
    return {"counts": dict(c), "refusal_codes": dict(codes.most_common())}


def _stage_text(s: dict) -> str:
    if s["status"] == "refused":
        return f"refused `{s['code']}`"
    return SHORT.get(s["status"], s["status"])


def _num(x, fmt: str) -> str:
    return "" if x is None else format(x, fmt)


def markdown(doc: dict) -> str:
    cells, summary = doc["cells"], doc["summary"]
    lines = [
        "# Conformance corpus results",
        "",
        f"{len(doc['args'].split('; '))} run(s) of `python benchmarks/bench_corpus.py` (their options: `args` in "
        f"`corpus.json`), last {doc['date']}, {doc['machine']}; "
        f"{len(cells)} cells ({len({c['model'] for c in cells})} models; targets "
        f"{', '.join(sorted({c['target'] for c in cells}))}), "
        f"{sum(s['seconds'] for c in cells for s in c['stages'].values()) / 60:.0f} min of stage time in all.  "
        "Stages, statuses and invariants: `docs/corpus.md`.",
        "",
        "## Counts",
        "",
        "| what | cells |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in summary["counts"].items()],
        "",
        "Refusal codes (stages other than the deliberate bad-calibration case): "
        + (", ".join(f"`{k}` x{v}" for k, v in summary["refusal_codes"].items()) or "none"),
        "",
        "## Failures (traceback, wrong result, timeout)",
        "",
    ]
    failures = sorted(((c, k, s) for c in cells for k, s in c["stages"].items() if s["status"] in FAILURES),
                      key=lambda f: (f[1], f[2]["status"], f[0]["model"], f[0]["target"]))
    lines += [f"- {c['model']} x {c['target']} x {k}: {s['status']} {s['code']} {s['detail']}".replace("|", "/")
              for c, k, s in failures] or ["none"]
    lines += ["", "## Cells", "",
              "| model | target | " + " | ".join(STAGES) + " | quant cos | .npuf cos FP32 | .npuf cos ORT | max LSB |",
              "| --- " * (len(STAGES) + 6) + "|"]
    for c in sorted(cells, key=lambda c: (c["model"], c["target"])):
        stages = [_stage_text(c["stages"][k]) if k in c["stages"] else "" for k in STAGES]
        lines.append(f"| {c['model']} | {c['target']} | " + " | ".join(stages)
                     + f" | {_num(c['quant_cosine'], '.4f')} | {_num(c['output_cosine'], '.4f')} "
                       f"| {_num(c.get('ort_cosine'), '.4f')} | {_num(c['max_lsb'], 'd')} |")
    nc = doc.get("node_cases")
    if nc:
        lines += ["", f"## ONNX node cases ({nc['cases']} cases of onnx {doc['onnx']} that ONNX Runtime "
                      f"{doc['onnxruntime']} loads)", "", "| target | check | Q/DQ compile + run |", "| --- | --- | --- |"]
        for t, r in nc["targets"].items():
            lines.append(f"| {t} | {json.dumps(r['counts']['check'])} | {json.dumps(r['counts']['qdq_run'])} |")
        for t, r in nc["targets"].items():
            lines += [f"- {t}: {p['case']} x {p['stage']}: {p['status']} {p['detail']}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


def write(doc: dict, out: Path) -> None:
    doc["summary"] = counts(doc["cells"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    out.write_text(markdown(doc))


def _failed(cell: dict) -> bool:
    return any(s["status"] in FAILURES for s in cell["stages"].values())


def _previous(out: Path) -> dict:
    """The JSON of an earlier (possibly interrupted) run, or nothing."""
    path = out.with_suffix(".json")
    return json.loads(path.read_text()) if path.exists() else {}


def _result(fut, name: str, target: str) -> dict:
    """The cell's JSON; an exception of the harness itself (fetching or exporting the model, a
    stage's files missing) is recorded under the stage name ``harness``, not fatal."""
    try:
        return fut.result().to_json()
    except Exception as exc:  # noqa: BLE001
        stage = {"status": "traceback", "code": "", "detail": f"{type(exc).__name__}: {exc}"[:300], "seconds": 0.0}
        return {"model": name, "target": target, "stages": {"harness": stage}, "quant_cosine": None,
                "output_cosine": None, "ort_cosine": None, "max_lsb": None, "scale_type": ""}


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime

    args = parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    models = selected(args.models, args.fast)
    opts = Options(stage_timeout=args.stage_timeout, analyze_timeout=args.analyze_timeout)
    old = _previous(args.out) if args.resume else {}
    chosen = {(m.name, t) for m in models for t in targets}
    failed = {(c["model"], c["target"]) for c in old.get("cells", []) if _failed(c)} & chosen
    previous = [c for c in old.get("cells", []) if not (args.rerun_failures and (c["model"], c["target"]) in failed)]
    done = {(c["model"], c["target"]) for c in previous}
    this_run = " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"args": "; ".join(filter(None, [old.get("args", ""), this_run])),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
           "cells": list(previous),
           "seconds": old.get("seconds", 0.0)}
    start = time.monotonic() - doc["seconds"]
    todo = [(m, t) for m in models for t in targets
            if (m.name, t) not in done and (not args.rerun_failures or (m.name, t) in failed)]
    with tempfile.TemporaryDirectory(prefix="npuflow-corpus-") as tmp, ThreadPoolExecutor(args.jobs) as pool:
        skip = tuple(x.strip() for x in args.skip.split(",") if x.strip())
        futures = {pool.submit(run_cell, m, t, Path(tmp) / f"{i:04d}", opts, None, skip): (m.name, t)
                   for i, (m, t) in enumerate(todo)}
        for fut in as_completed(futures):
            name, target = futures[fut]
            cell = _result(fut, name, target)
            doc["cells"].append(cell)
            doc["seconds"] = time.monotonic() - start
            bad = [f"{k}:{s['status']}" for k, s in cell["stages"].items() if s["status"] not in ("ok", "skipped")]
            print(f"[{len(doc['cells'])}/{len(todo) + len(previous)}] {name} x {target}: {' '.join(bad) or 'ok'}",
                  flush=True)
            write(doc, args.out)
    if not args.no_node_cases:
        doc["node_cases"] = run_node_cases(targets)
    elif "node_cases" in old:
        doc["node_cases"] = old["node_cases"]
    doc["seconds"] = time.monotonic() - start
    write(doc, args.out)
    print(json.dumps(doc["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
