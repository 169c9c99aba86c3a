"""The quantizer's calls into the accuracy algorithms (config switches -> algorithm runs).

* before calibration: :func:`pre_calibration` runs cross-layer equalisation (``include_cle``);
* after QDQ export: :func:`after_export` runs fast finetune (``fast_finetune``) and then bias
  correction (``include_bias_corr``) on the model with the source's dynamic dimensions (so
  calibration samples of any valid shape work) and copies the changed integer weights and biases
  into the static twin by initializer name (the twins share names).

``include_bias_corr: auto`` (the default) keeps the corrected biases only when they lower the
model-output error against the float model on the calibration samples (after GPTQ, which solves
every bias against the quantized inputs, ``auto`` skips it).  Matching each layer's
mean output is right for most networks (EfficientNet-Lite0 82.7 -> 91 % FP32 agreement on
cpu-int8) but not for re-parameterised ones whose large weights cancel across layers (PP-OCRv4
rec 90.7 -> 82 % lines); the calibration-output check told the two apart on every benchmark
model.  ``true`` applies the correction unconditionally.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import replace
from typing import Callable, Iterable

import numpy as np
import onnx

from ...errors import NpuflowError
from ...numerics import RoundMode
from ...targets import Target
from .bias_correction import correct_empirical
from .cle import equalize
from .fast_finetune import FinetuneSettings, FloatPatches, fast_finetune
from .capture import Feed, HeldOutRuns, run_outputs
from .restarts import best_of

log = logging.getLogger(__name__)

#: Calibration samples used by CLE's clip statistics; fast finetune and bias correction read the config's
#: ``finetune_samples`` (bias correction's ``auto`` check runs on all of them: on 8 instead of 32 it picked
#: the wrong side on PP-OCRv4 rec cpu-int8 and YOLOv8n, whose two errors differ by 10-20 %).
CLE_SAMPLES = 16


def hold_out(data, cfg) -> tuple[object, list[Feed]]:
    """``(data, held_out)``: with ``fast_finetune.select_on: K`` the last K samples of the calibration
    data (a :class:`~npuflow.quant.data.CalibrationSource`) are held out of calibration and fast
    finetune, and choose between its restarts (:mod:`.restarts`); without it, ``(data, [])``.

    Held out of calibration too, not only of the reconstruction: the activation ranges then do not
    depend on ``select_on``, so the restarts start from the model the same calibration gives without it.
    """
    k = cfg.fast_finetune.select_on if cfg.fast_finetune is not None else None
    if k is None:
        return data, []
    if not data.reusable:
        raise NpuflowError("NPF_QUANT_BAD_CONFIG",
                           reason="fast_finetune.select_on holds out the last calibration samples, which needs "
                                  "data that can be read twice (a folder, a list or an array), not a one-shot iterator")
    n = data.count()
    if k >= n:
        raise NpuflowError("NPF_QUANT_BAD_CONFIG",
                           reason=f"fast_finetune.select_on: {k} holds out at least as many samples as the "
                                  f"calibration data has ({n}); give more samples or a smaller select_on")
    return data.split_last(k)


def pre_calibration(float_model: onnx.ModelProto, cfg, calibration: Callable[[], Iterable[Feed]]) -> onnx.ModelProto:
    if not cfg.include_cle:
        return float_model
    feeds = list(itertools.islice(calibration(), CLE_SAMPLES)) if cfg.cle_clip_policy == "calibrated" else None
    out, report = equalize(float_model, feeds, clip_policy=cfg.cle_clip_policy)
    log.info("CLE: %d pairs equalised (%s clip policy)", len(report.pairs), cfg.cle_clip_policy)
    return out


def after_export(
    float_model: onnx.ModelProto, quantized: onnx.ModelProto,
    calibration: Callable[[], Iterable[Feed]], cfg, target: Target, reference: list[list[np.ndarray]] | None = None,
    held_out: HeldOutRuns | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """``(quantized, summary)`` after fast finetune and bias correction.

    Weights and biases are re-rounded with the tie rules the config resolves for ``target`` (the
    target's own unless the config says otherwise), the rules the export used.

    ``reference``: the float model's outputs on the first calibration samples, when calibration
    kept them (saves a float run for the ``auto`` check); computed here otherwise.
    ``held_out``: the samples :func:`hold_out` set aside (with the float model that judges on them),
    which choose between fast finetune's restarts.
    """
    summary: dict = {}
    if cfg.fast_finetune is None and not cfg.include_bias_corr:
        return quantized, summary
    feeds = list(itertools.islice(calibration(), cfg.finetune_samples + 1))
    if len(feeds) > cfg.finetune_samples:  # said, not silent: a user who gave 256 crops expects 256 read
        feeds.pop()
        if cfg.fast_finetune is not None:
            log.warning("fast finetune reads the first %d calibration samples, not all of them (config "
                        "`finetune_samples: %d`); more cost time and memory in proportion and can help "
                        "(docs/accuracy.md, \"More calibration samples for fast finetune\")",
                        cfg.finetune_samples, cfg.finetune_samples)
    q = quantized
    if cfg.fast_finetune is not None:
        ff = cfg.fast_finetune
        settings = FinetuneSettings(
            method=ff.method, iters=ff.iters, lr=ff.lr, batch=ff.batch, backend=ff.backend,
            samples=None if ff.columns == "all" else ff.columns,
            round_mode=RoundMode(cfg.resolve(target, "weight").round_mode).value,
            bias_round_mode=RoundMode(cfg.resolve(target, "bias").round_mode).value, drop_prob=ff.drop_prob,
            block_batch=ff.block_batch, block_layers=ff.block_layers, block_loss=ff.block_loss,
            block_accept=ff.block_accept,
            input_drop=ff.input_drop,
            post_activation=ff.post_activation, learn_threshold=ff.learn_threshold, start=ff.start, seed=ff.seed)
        start = q
        if held_out is not None:
            shared = FloatPatches()  # the float side is the same for every seed
            q, rep, runs, chosen = best_of(held_out, list(range(ff.seed, ff.seed + ff.restarts)),
                                           lambda seed: fast_finetune(float_model, start, feeds,
                                                                      replace(settings, seed=seed),
                                                                      float_patches=shared))
        else:
            q, rep = fast_finetune(float_model, start, feeds, settings)
        # the learning rate that ran (the config's null resolves per method; defaults have changed)
        summary["fast_finetune"] = {"method": ff.method, "iters": ff.iters, "lr": settings.learning_rate,
                                    "layers": len(rep.layers), "samples": len(feeds),
                                    "cached": sum(r.cached for r in rep.layers), "seconds": round(rep.seconds, 2)}
        if held_out is not None:  # every run's held-out agreement and time, and which one is kept
            summary["fast_finetune"].update(restarts=[r.to_json() for r in runs], chosen_seed=runs[chosen].seed,
                                            selected_on=len(held_out.feeds))
        if ff.learn_threshold:  # weight fix positions moved: +1 is one step finer
            shifts = [r.fix_shift for r in rep.layers]
            summary["fast_finetune"]["fix_moves"] = {"finer": sum(d > 0 for d in shifts),
                                                     "coarser": sum(d < 0 for d in shifts)}
        if rep.blocks:
            summary["fast_finetune"]["blocks"] = [
                {"layers": b.layers, "error_before": b.error_before, "error_after": b.error_after,
                 "seconds": round(b.seconds, 2)} for b in rep.blocks]
    if cfg.include_bias_corr is True and cfg.fast_finetune is not None and cfg.fast_finetune.method == "adaquant":
        # AdaQuant fitted the biases to the inputs the quantized model feeds each layer; the
        # correction shifts them by (W_q - W) E[x_q], undoing part of that fit
        log.warning("include_bias_corr: true after AdaQuant shifts the biases AdaQuant fitted (PP-OCRv4 rec on "
                    "B4096: 77.0 -> 45.3 %% lines); 'auto' keeps the correction only where it lowers the "
                    "calibration output error")
    if cfg.include_bias_corr == "auto" and cfg.fast_finetune is not None and cfg.fast_finetune.method == "gptq":
        # GPTQ solves each bias as one more column against the quantized model's own inputs
        # (gptq.py): the mean shift the correction would add is already in it, so the check would
        # only spend two runs of the finetune samples to drop it (as it did on every GPTQ model)
        summary["bias_correction"] = {"layers": 0, "kept": False, "skipped": "GPTQ refits every bias"}
        log.info("bias correction skipped: GPTQ refitted every bias")
    elif cfg.include_bias_corr:
        # empirical only: the data-free variant (correct_data_free) estimates the same shift
        # from BN statistics and is for callers without data; applying both would correct twice
        uncorrected: list[list[np.ndarray]] = []
        corrected, names = correct_empirical(float_model, q, feeds, cfg.resolve(target, "bias").round_mode,
                                             on_outputs=uncorrected.append)
        record = {"layers": len(names), "kept": True}
        if cfg.include_bias_corr == "auto" and names:
            if not reference or len(reference) < len(feeds):
                reference = run_outputs(float_model, feeds)
            reference = reference[:len(feeds)]
            before = relative_error(uncorrected, reference)
            after = relative_error(run_outputs(corrected, feeds), reference)
            record.update(kept=after < before, output_error_before=before, output_error_after=after,
                          checked_on=len(feeds))
            log.info("bias correction: calibration output error %.4g -> %.4g (%s)", before, after,
                     "kept" if after < before else "dropped")
        if record["kept"]:
            q = corrected
        summary["bias_correction"] = record
    return q, summary


def relative_error(outputs: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    """Mean over outputs of ``sum(error^2) / sum(float^2)`` pooled over the samples: scale-free,
    so outputs of different magnitudes (boxes and class scores) weigh alike.

    Pooled, not a mean of per-sample ratios: a sample whose float output is almost zero (a
    PP-OCRv4 det probability map of a photo without text, ~1e-10) made its ratio ~1e10 and
    decided the percentile search and bias correction's check on rounding noise alone.

    Integer outputs (NonMaxSuppression's selected indices, TopK's positions) are left out: they
    are not values with an error.  An output whose shape depends on the data (the boxes a
    NonMaxSuppression keeps) and differs from the float model's on a sample counts that sample as
    a complete miss, ``sum(g^2) + sum(r^2)``: a candidate that changes which boxes survive is worse,
    not unmeasured.  Entries where the float output is infinite or NaN (``Exp -> Exp`` of calibration
    data) are left out: before, ``inf - inf`` made the error NaN, with a numpy RuntimeWarning; a
    candidate infinite or NaN where the float output is finite has an infinite error.
    """
    num: dict[int, float] = {}
    den: dict[int, float] = {}
    for got, ref in zip(outputs, reference, strict=True):
        for k, (g, r) in enumerate(zip(got, ref, strict=True)):
            r64 = np.asarray(r)
            if r64.dtype.kind != "f":
                continue
            r64, g64 = r64.astype(np.float64), np.asarray(g, dtype=np.float64)
            if g64.shape == r64.shape:
                finite = np.isfinite(r64)  # the float model's own infinities are not the candidate's error
                g64, r64 = g64[finite], r64[finite]
                err = float(np.sum((g64 - r64) ** 2)) if np.isfinite(g64).all() else np.inf
            else:
                r64, g64 = r64[np.isfinite(r64)], g64[np.isfinite(g64)]
                err = float(np.sum(g64 ** 2) + np.sum(r64 ** 2))
            num[k] = num.get(k, 0.0) + err
            den[k] = den.get(k, 0.0) + float(np.sum(r64 ** 2))
    return float(np.mean([num[k] / max(den[k], 1e-30) for k in num])) if num else 0.0
