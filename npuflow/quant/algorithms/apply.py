"""The quantizer's calls into the accuracy algorithms (config switches -> algorithm runs).

* before calibration: :func:`pre_calibration` runs cross-layer equalisation (``include_cle``);
* after QDQ export: :func:`after_export` runs fast finetune (``fast_finetune``) and then bias
  correction (``include_bias_corr``) on the model with the source's dynamic dimensions (so
  calibration samples of any valid shape work) and copies the changed integer weights and biases
  into the static twin by initializer name (the twins share names).
"""

from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterable

import onnx

from .bias_correction import correct_empirical
from .cle import equalize
from .fast_finetune import FinetuneSettings, fast_finetune
from .graph import Feed

log = logging.getLogger(__name__)

#: Calibration samples used by CLE's clip statistics, fast finetune and bias correction.
CLE_SAMPLES = 16
FINETUNE_SAMPLES = 64


def pre_calibration(float_model: onnx.ModelProto, cfg, calibration: Callable[[], Iterable[Feed]]) -> onnx.ModelProto:
    if not cfg.include_cle:
        return float_model
    feeds = list(itertools.islice(calibration(), CLE_SAMPLES)) if cfg.cle_clip_policy == "calibrated" else None
    out, report = equalize(float_model, feeds, clip_policy=cfg.cle_clip_policy)
    log.info("CLE: %d pairs equalised (%s clip policy)", len(report.pairs), cfg.cle_clip_policy)
    return out


def after_export(
    float_model: onnx.ModelProto, q_dynamic: onnx.ModelProto, q_static: onnx.ModelProto,
    calibration: Callable[[], Iterable[Feed]], cfg,
) -> tuple[onnx.ModelProto, onnx.ModelProto, dict]:
    """``(q_static, q_dynamic, summary)`` after fast finetune and bias correction."""
    summary: dict = {}
    if cfg.fast_finetune is None and not cfg.include_bias_corr:
        return q_static, q_dynamic, summary
    feeds = list(itertools.islice(calibration(), FINETUNE_SAMPLES))
    q = q_dynamic
    if cfg.fast_finetune is not None:
        ff = cfg.fast_finetune
        q, rep = fast_finetune(float_model, q, feeds, FinetuneSettings(
            method=ff.method, iters=ff.iters, lr=ff.lr, batch=ff.batch, backend=ff.backend,
            round_mode=_weight_round_mode(cfg)))
        summary["fast_finetune"] = {"method": ff.method, "layers": len(rep.layers),
                                    "cached": sum(r.cached for r in rep.layers), "seconds": round(rep.seconds, 2)}
    if cfg.include_bias_corr:
        # empirical only: the data-free variant (correct_data_free) estimates the same shift
        # from BN statistics and is for callers without data; applying both would correct twice
        q, names = correct_empirical(float_model, q, feeds)
        summary["bias_correction"] = {"layers": len(names)}
    return _copy_initializers(q, q_static), q, summary


def _weight_round_mode(cfg) -> str:
    mode = getattr(cfg.weight, "round_mode", None) or getattr(cfg.overall, "round_mode", None)
    return getattr(mode, "value", mode) or "std_round"


def _copy_initializers(src: onnx.ModelProto, dst: onnx.ModelProto) -> onnx.ModelProto:
    """``dst`` with every initializer that ``src`` has under the same name and shape replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(dst)
    values = {t.name: t for t in src.graph.initializer}
    for t in out.graph.initializer:
        s = values.get(t.name)
        if s is not None and list(s.dims) == list(t.dims) and s.data_type == t.data_type:
            t.CopyFrom(s)
    return out
