"""Sensitivity analysis (``ana``): how much each channel group can lose on its own.

For every prunable group and every ratio, only that group is pruned (masked, on a copy) and
the model is scored: with the user's evaluation callback when given (accuracy, mAP, ...), or
else by the cosine similarity of the outputs to the unpruned model's on the example inputs.
The table is saved (``.sens`` JSON) so that pruning at several ratios, or a re-run, does not
repeat the analysis; a plot of metric vs ratio per group is written beside it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..model import write_atomic
from .groups import apply_masks, channel_rankings, kept_channels, removed_channels

EvalFn = Callable[[nn.Module], float]

DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class Sensitivity:
    """Metric per group per ratio; ``baseline`` is the unpruned model's metric."""

    baseline: float
    ratios: list[float]
    channel_divisible: int
    groups: dict[str, dict] = field(default_factory=dict)  # name -> {"channels", "members", "metric": [...]}
    metric_name: str = "output cosine similarity"

    def max_ratio(self, name: str, threshold: float) -> float:
        """Largest analysed ratio whose metric loss (relative to baseline) stays within ``threshold``."""
        best = 0.0
        for r, m in zip(self.ratios, self.groups[name]["metric"]):
            if self.baseline - m <= threshold * abs(self.baseline):
                best = r
            else:
                break
        return best

    def save(self, path: Path) -> Path:
        return write_atomic(path, json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "Sensitivity":
        return cls(**json.loads(Path(path).read_text()))


def output_similarity(reference: nn.Module, example_inputs) -> EvalFn:
    """Default metric: mean cosine similarity of outputs to ``reference`` on ``example_inputs``."""
    with torch.no_grad():
        ref = _flat(reference(*_as_tuple(example_inputs)))

    def score(model: nn.Module) -> float:
        model.eval()
        with torch.no_grad():
            out = _flat(model(*_as_tuple(example_inputs)))
        return float(torch.nn.functional.cosine_similarity(ref, out, dim=-1).mean())

    return score


def _as_tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _flat(out) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = torch.cat([o.flatten(1) for o in out], dim=1)
    return out.flatten(1).float()


def cache_key(model: nn.Module, ratios, divisible: int, excludes) -> str:
    """Content hash of weights and settings: a changed model or setting invalidates the cache."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(json.dumps([list(ratios), divisible, sorted(excludes)]).encode())
    return h.hexdigest()[:16]


def analyse(
    model: nn.Module,
    example_inputs,
    eval_fn: EvalFn | None = None,
    *,
    ratios=DEFAULT_RATIOS,
    channel_divisible: int = 1,
    excludes=(),
    progress: Callable[[str], None] | None = None,
) -> Sensitivity:
    """Run the analysis (no caching here; see :class:`npuflow.prune.IterativePruningRunner`)."""
    model.eval()
    score = eval_fn or output_similarity(model, example_inputs)
    rankings = channel_rankings(model, example_inputs, excludes)
    result = Sensitivity(
        baseline=float(score(model)), ratios=[float(r) for r in ratios], channel_divisible=channel_divisible,
        metric_name="user metric" if eval_fn else "output cosine similarity",
    )
    for group, _ in rankings.values():
        metrics = []
        for r in ratios:
            keep = kept_channels(group.channels, r, channel_divisible)
            trial = copy.deepcopy(model)
            apply_masks(trial, example_inputs, removed_channels(rankings, {group.name: keep}))
            metrics.append(float(score(trial)))
            if progress:
                progress(group.name)
        result.groups[group.name] = {"channels": group.channels, "members": list(group.members), "metric": metrics}
    return result


def plot(sens: Sensitivity, path: Path) -> Path:
    """Metric vs pruning ratio, one line per group (PNG via matplotlib's Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, g in sens.groups.items():
        ax.plot(sens.ratios, g["metric"], marker="o", label=f"{name} ({g['channels']} ch)")
    ax.axhline(sens.baseline, color="grey", linestyle="--", linewidth=1, label="unpruned")
    ax.set_xlabel("pruning ratio of the group")
    ax.set_ylabel(sens.metric_name)
    ax.set_title("npuflow pruning sensitivity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
