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
