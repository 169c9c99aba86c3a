"""EfficientNet-Lite0 label-free QAT with the student on a GPU (``qat_onnx(..., device="cuda")``).

Why: on the project's 2-core CPU QAT of EfficientNet-Lite0 makes about 24 steps a minute, too few
to learn whether issue 18's >= 97 % FP32 top-1 agreement is reachable by QAT on the DPU's
power-of-two numerics.  This driver runs the same ``qat_onnx`` on a machine with a GPU, from a
PTQ start and photos prepared here (no PTQ and no registry access there), in three modes:

* ``prepare`` (here): the AdaRound-500 PTQ start on the B4096 target, calibrated on the first 32
  crops of ``benchmarks/datasets.py``'s calibration split as ``bench_qat.py --onnx`` does, pickled
  without its unused models, and the bundled photos, into ``--gpu-dir``;
* ``train`` (on the GPU machine, or here with ``--device cpu`` to try it): ``--train`` distinct
  random crops of those photos (seed 103; the calibration and evaluation splits use 101 and 102)
  train; the 300 evaluation crops (the evaluation split's seed) are scored for the start and the
  returned model in ONNX Runtime; the returned QDQ model and a JSON of the figures go to ``--out``;
* ``check`` (here): the returned QDQ model scored again on the cached evaluation crops, compiled
  for B4096, and the ``.npuf`` compared with ONNX Runtime on the first ``--compiled-check`` crops.

docs/qat.md "QAT on a GPU" has the command lines and the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import datasets as D  # noqa: E402  (benchmarks/datasets.py)

TARGET = "DPUCZDX8G_ISA1_B4096"
TRAIN_SEED = 103  # distinct from the calibration (101) and evaluation (102) splits' seeds


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


#: The PTQ starts ``prepare --start`` offers: crops of the calibration split by default, and the config.
#: ``adaround``: AdaRound 500 on 32 crops (the README's QAT row until session 37); ``gptq``: GPTQ on 256
#: crops, every one of them fitting it, as ``bench_accuracy.py --methods gptq --calib 256
#: --finetune-samples 256`` measured it (93.00 % on these 300 evaluation crops, session 36), the best
#: all-DPU PTQ of EfficientNet-Lite0.
STARTS = {
    "adaround": (32, {"fast_finetune": {"method": "adaround", "iters": 500}}),
    "gptq": (256, {"fast_finetune": {"method": "gptq", "iters": 500}}),
}


def start_config(start: str, calib: int | None = None) -> tuple[int, dict]:
    """The calibration crop count and the quantize config of PTQ start ``start`` (``calib`` overrides the count).

    The config bounds calibration and fast finetune to those crops (``max_calib_samples``,
    ``finetune_samples``), so that GPTQ fits on all 256 rather than npuflow's default 64."""
    if start not in STARTS:
        raise ValueError(f"--start must be one of {', '.join(STARTS)}, not {start!r}")
    n, config = STARTS[start]
    n = calib or n
    return n, {**config, "max_calib_samples": n, "finetune_samples": n}


def prepare(args: argparse.Namespace) -> None:
    """The PTQ start and the photos, into ``--gpu-dir``."""
    import onnx

    from npuflow.quant.pipeline import quantize
    from tests import fixture_models

    out = Path(args.gpu_dir)
    out.mkdir(parents=True, exist_ok=True)
    pics = D.photos()
    np.savez_compressed(out / "photos.npz", names=np.array([n for n, _ in pics]),
                        **{f"p{i}": im for i, (_, im) in enumerate(pics)})
    calib_n, config = start_config(args.start, args.calib)
    calib, _ = D.efficientnet("calib", calib_n)
    t0 = time.time()
    ptq = quantize(str(fixture_models.efficientnet_lite0()), calib, TARGET, config, warn=False)
    log(f"PTQ start ({args.start}, {calib_n} crops, {json.dumps(config)}): {time.time() - t0:.0f} s")
    slim = dataclasses.replace(ptq, original_model=onnx.ModelProto(), dynamic_model=ptq.model, requantizer=None)
    (out / "ptq.pkl").write_bytes(pickle.dumps(slim))


def _photos_from(gpu_dir: Path) -> None:
    """Make ``datasets.photos`` read the photos prepared here (the GPU machine may lack some)."""
    with np.load(gpu_dir / "photos.npz") as npz:
        pics = [(str(n), npz[f"p{i}"]) for i, n in enumerate(npz["names"])]
    D.photos = lambda: pics


def _agreement(model, xs: list[np.ndarray], labels: np.ndarray) -> float:
    session = D.ort_session(model)
    name = session.get_inputs()[0].name
    got = np.array([int(session.run(None, {name: x})[0].argmax()) for x in xs])
    return float((got == labels).mean() * 100)


def train(args: argparse.Namespace) -> None:
    """``qat_onnx`` on ``--device`` from the prepared start; figures and the model into ``--out``."""
    import torch

    from npuflow.torch.onnx_qat import qat_onnx

    torch.set_num_threads(args.threads)
    gpu_dir, out = Path(args.gpu_dir), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _photos_from(gpu_dir)
    ptq = pickle.loads((gpu_dir / "ptq.pkl").read_bytes())
    t0 = time.time()
    train_set = [{"input": D._effnet_input(c)} for c in D.random_crops(args.train, 224, TRAIN_SEED)]
    evals = [D._effnet_input(c) for c in D.random_crops(args.eval, 224, 100 + D._seed("eval"))]
    fp32 = D.ort_session(ptq.float_model)
    labels = np.array([int(fp32.run(None, {"input": x})[0].argmax()) for x in evals])
    start_pct = _agreement(ptq.model, evals, labels)
    log(f"{len(train_set)} training crops, {len(evals)} evaluation crops ({time.time() - t0:.0f} s); "
        f"PTQ start {start_pct:.1f} % FP32 top-1 agreement")

    def progress(stage, done=0, total=None, detail=""):
        log(f"{args.tag} {stage} {done}/{total} {detail}")

    t1 = time.time()
    result = qat_onnx(ptq.float_model, TARGET, train_set, minutes=args.minutes, ptq=ptq, batch=args.batch,
                      lr=args.lr, quantizer_lr=args.quantizer_lr, augment=args.augment, device=args.device,
                      checks=args.checks, progress=progress, feature_weight=args.feature_weight)
    total = time.time() - t1
    returned_pct = _agreement(result.model, evals, labels)
    r = result.report
    figures = {
        "tag": args.tag, "device": args.device, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "train_crops": args.train, "eval_crops": len(evals), "batch": r["batch"], "lr": args.lr,
        "quantizer_lr": args.quantizer_lr, "augment": args.augment, "feature_weight": args.feature_weight,
        "start": ptq.info.get("algorithms", {}).get("fast_finetune", {}).get("method"),
        "minutes": args.minutes, "steps": r["steps"],
        "epochs": r["epochs"], "train_seconds": r["train_seconds"], "qat_onnx_seconds": round(total, 1),
        "start_agreement_pct": start_pct, "returned_agreement_pct": returned_pct, "kept": r["kept"],
        "guard": {k: r[k] for k in ("measure", "start_score", "trained_score", "start_cosine", "trained_cosine",
                                    "eval_samples")},
        "held_out_curve": r["held_out_curve"],
        "loss_first_last_50": [float(np.mean(r["losses"][:50])), float(np.mean(r["losses"][-50:]))],
    }
    (out / f"qat_{args.tag}.json").write_text(json.dumps(figures, indent=1) + "\n")
    (out / f"qat_{args.tag}.onnx").write_bytes(result.model.SerializeToString())
    log(f"{args.tag}: {r['steps']} steps ({r['epochs']:.1f} epochs) in {r['train_seconds']:.0f} s; 300 crops: "
        f"start {start_pct:.1f} % -> returned {returned_pct:.1f} % ({r['kept']}); guard {r['measure']} "
        f"{r['start_score']:.4f} -> {r['trained_score']:.4f}")


def check(args: argparse.Namespace) -> None:
    """The returned model on the cached evaluation crops (ONNX Runtime) and as a compiled ``.npuf``."""
    import onnx

    import npuflow

    model = onnx.load(args.model)
    xs, labels = D.efficientnet("eval", args.eval)
    feeds = [x["input"] for x in xs]
    log(f"{args.model}: {_agreement(model, feeds, labels):.1f} % FP32 top-1 agreement on {len(feeds)} crops (ORT)")
    session = D.ort_session(model)
    compiled = npuflow.Session(npuflow.compile(model, TARGET))
    out_name = session.get_outputs()[0].name
    diffs = [float(np.abs(compiled.run({"input": x})[out_name] - session.run(None, {"input": x})[0]).max())
             for x in feeds[:args.compiled_check]]
    log(f".npuf vs ONNX Runtime on the first {len(diffs)} crops: max abs difference {max(diffs):g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["prepare", "train", "check"])
    ap.add_argument("--gpu-dir", default=str(REPO / ".gpu"))
    ap.add_argument("--out", default=str(REPO / ".gpu" / "out"))
    ap.add_argument("--start", default="adaround", choices=sorted(STARTS), help="prepare: the PTQ start")
    ap.add_argument("--calib", type=int, help="prepare: calibration crops (default: the start's, 32 / 256)")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--quantizer-lr", type=float, default=0.0)
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--feature-weight", type=float, default=0.0, help="qat_onnx feature_weight (0: outputs only)")
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--eval", type=int, default=300)
    ap.add_argument("--checks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", help="check: the QDQ model to score and compile")
    ap.add_argument("--compiled-check", type=int, default=5)
    args = ap.parse_args()
    {"prepare": prepare, "train": train, "check": check}[args.mode](args)


if __name__ == "__main__":
    main()
