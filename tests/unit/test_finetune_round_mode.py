"""Fast finetune re-rounds weights with the tie rule the export used (issue 17: rounding in one
place, no default that picks the wrong rule): the target's own, or the config's.  It fell back to
the DPU's ``std_round`` on every target whose config did not name a rule (cpu-int8: ties to even)."""

from __future__ import annotations

import pytest

from npuflow.quant.algorithms import apply
from npuflow.quant.config import QuantConfig
from npuflow.targets import load_target


@pytest.mark.parametrize("target, config, expected", [
    ("cpu-int8", {}, "half_even"),
    ("bernoulli2", {}, "half_even"),
    ("DPUCZDX8G_ISA1_B4096", {}, "std_round"),
    ("cpu-int8", {"weight": {"round_mode": "half_up"}}, "half_up"),
])
def test_fast_finetune_rounds_as_the_export(monkeypatch, target, config, expected):
    seen = {}

    def fake_finetune(float_model, q, feeds, settings):
        seen["round_mode"] = settings.round_mode
        raise StopIteration  # nothing else of after_export matters here

    monkeypatch.setattr(apply, "fast_finetune", fake_finetune)
    cfg = QuantConfig.from_dict({**config, "fast_finetune": {"method": "adaround", "iters": 1},
                                 "include_bias_corr": False})
    with pytest.raises(StopIteration):
        apply.after_export(None, None, lambda: iter([{}]), cfg, load_target(target))
    assert seen["round_mode"] == expected
