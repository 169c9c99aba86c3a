"""Would a held-out *judge* model make the accuracy check honest at a small cost?

    nice -n 5 python benchmarks/bench_heldout_judge.py MODEL@TARGET [MODEL@TARGET ...]

Per corpus cell: quantize with the defaults on the corpus' 32 calibration samples (the model shipped),
quantize again on the first 24 (the judge) and measure the judge's output cosine on the last 8, which
its ranges never saw; beside it the shipped model's check figure (its first 16 calibration samples)
and its cosine on the 16 unseen inputs of ``bench_corpus_accuracy.py``.  Times: both quantize runs
and the judge's measure (one JSON line per cell).  Results: ``benchmarks/results/accuracy_check_s26.md``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import npuflow  # noqa: E402
from benchmarks.bench_corpus_accuracy import held_out  # noqa: E402
from npuflow.quant.report import QuantReport, measure_outputs  # noqa: E402
from tests.corpus.registry import ALL, calibration_for  # noqa: E402
from tests.fixture_models import CACHE  # noqa: E402

#: samples held out of the judge's calibration
HELD = 8


def judge(name: str, target: str) -> dict:
    entry = next(m for m in ALL if m.name == name)
    path = entry.make(CACHE)
    calib = calibration_for(entry, path, 32)
    start = time.monotonic()
    shipped = npuflow.quantize(str(path), calib, target, input_shapes=entry.input_shapes, warn=False)
    t_all = time.monotonic() - start
    start = time.monotonic()
    model = npuflow.quantize(str(path), calib[:-HELD], target, {"min_output_cosine": 0.0},
                             input_shapes=entry.input_shapes, warn=False)
    t_judge = time.monotonic() - start
    start = time.monotonic()
    judged = QuantReport()
    measure_outputs(judged, model.float_model, model.model, calib[-HELD:], held_out=True)
    t_measure = time.monotonic() - start
    unseen = QuantReport()
    measure_outputs(unseen, shipped.float_model, shipped.model, held_out(entry, path, 16))
    figures = lambda r: {k: round(v, 4) for k, v in r.judged_similarity().items()}  # noqa: E731
    return {"cell": f"{name} x {target}", "judged_on_held_out": figures(judged),
            "shipped_calib": figures(shipped.report), "shipped_unseen": figures(unseen),
            "shipped_problem": shipped.problem and shipped.problem.code, "t_quantize_all": round(t_all, 1),
            "t_judge_quantize": round(t_judge, 1), "t_measure": round(t_measure, 1)}


def main(argv: list[str]) -> int:
    logging.disable(logging.WARNING)
    for cell in argv:
        name, target = cell.split("@")
        sys.stdout.write(json.dumps(judge(name, target)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
