"""Round 11 of new-user flows: ``npuflow quantize --min-similarity 0.99999`` on a MobileNet-style net
printed "Accuracy target: output cosine >= 0.99999 (NOT met: 0.999990)" and every step's cosine as
0.999990: six decimals rounded the best score (0.9999897) up to the target, so the table read as if
the target held and each step gained nothing.  A score below the target now prints with the
digits that show it."""

from __future__ import annotations

from npuflow.analyze.auto_quant import AutoResult, Step
from npuflow.cli import quantize_cmd


def _result(score: float, target: float) -> AutoResult:
    step = Step(name="target defaults", description="the configuration given", score=score, seconds=1.0, kept=True)
    return AutoResult(quantized=None, config=None, score=score, target=target, met=score >= target, steps=[step])


def test_a_score_just_below_the_target_prints_below_it(capsys):
    auto = _result(0.9999897, 0.99999)
    assert auto.text() == "0.9999897"
    quantize_cmd._print_steps(auto, allow_cpu_fallback=False)
    out = capsys.readouterr()
    text = out.out + out.err
    assert "NOT met: 0.9999897" in text and "best 0.9999897" in text, text
    assert "0.999990 " not in text


def test_other_scores_keep_six_decimals():
    assert _result(0.99999, 0.99999).text() == "0.999990"
    assert _result(0.99125, 0.99).text() == "0.991250"
    assert _result(0.981, 0.99).text() == "0.981000"
