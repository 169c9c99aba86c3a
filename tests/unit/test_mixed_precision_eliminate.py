"""The mixed-precision search's elimination (:func:`npuflow.analyze.mixed_precision._eliminate`):
basic-pitch's binary search kept a 116-layer prefix of which 9 layers were needed, and removing
one layer at a time cost 116 evaluations (~6 min at load 15).  Blocks first, then single layers:
the same kind of answer (every kept layer needed) in fewer evaluations."""

from __future__ import annotations

import pytest

from npuflow.analyze.mixed_precision import _eliminate, _trials_at_most


def _run(layers: list[str], needed: set[str], spent_after: int | None = None):
    asked: list[tuple[str, ...]] = []
    steps: list[tuple[int, int]] = []

    def meets(trial: list[str]) -> bool:
        asked.append(tuple(trial))
        return needed <= set(trial)

    def spent() -> bool:
        return spent_after is not None and len(asked) >= spent_after

    kept, stopped = _eliminate(list(layers), meets, lambda trials: None, 1, spent, lambda k, r: steps.append((k, r)))
    return kept, stopped, asked, steps


@pytest.mark.parametrize("n, needed", [(116, [3, 17, 40, 41, 60, 77, 90, 101, 115]), (8, [0]), (8, [7]), (1, [0]),
                                       (5, [0, 1, 2, 3, 4]), (33, [32])])
def test_keeps_exactly_the_needed_layers_in_ranking_order(n, needed):
    layers = [f"l{i}" for i in range(n)]
    want = [layers[i] for i in needed]
    kept, stopped, asked, steps = _run(layers, set(want))
    assert kept == want and not stopped
    assert len(asked) <= _trials_at_most(n, max(n // 2, 1))
    assert all(t for t in asked)  # never an empty plan (the unraised model fails the target)
    assert all(r >= 0 for _, r in steps) and len(steps) == len(asked)


def test_sparse_needed_layers_cost_fewer_trials_than_one_at_a_time():
    layers = [f"l{i}" for i in range(116)]
    needed = {layers[i] for i in (3, 17, 40, 41, 60, 77, 90, 101, 115)}
    _, _, asked, _ = _run(layers, needed)
    assert len(asked) < 116 * 0.8


def test_a_spent_budget_stops_with_a_plan_that_meets():
    layers = [f"l{i}" for i in range(40)]
    needed = {"l5", "l30"}
    kept, stopped, asked, _ = _run(layers, needed, spent_after=3)
    assert stopped and len(asked) == 3 and needed <= set(kept)
