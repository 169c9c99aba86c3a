"""Round 28a of new-user flows: quantize's progress names the entropy (KL) threshold search.

FlowNetC's ``npuflow build`` on bernoulli2 (``calibration_type: default``) took 112 s, 86 of them in the
entropy threshold search over 383 tensors' histograms (``quant/assign.py`` -> ``thresholds.entropy_threshold``),
with ``quantize calibrate 16/16 samples`` repeating on screen; ``npuflow quantize`` of the same model
calibrates the same 16 samples in about 1 s.  The search is now a stage of its own, after calibration and
before export, and only where some tensor uses the entropy method.
"""

from __future__ import annotations

from tests.unit.test_quantize_stages import _stages


def test_the_entropy_threshold_search_is_its_own_stage():
    stages = _stages({"activation": {"method": "entropy"}})
    assert stages.index("calibrate") < stages.index("entropy thresholds") < stages.index("export"), stages


def test_no_such_stage_without_the_entropy_method():
    assert "entropy thresholds" not in _stages({"activation": {"method": "minmax"}})
