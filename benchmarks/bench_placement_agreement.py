"""Offline run of the placement-agreement generator (``tests/unit/test_placement_agreement.py``)
over many seeds: every node whose side (CPU / accelerator) differs between ``check`` of the float
model, ``check`` of the quantized model and ``compile``, grouped by pattern (the node's op type
with its producers' and readers' op types), with the first seeds that show it.

    python benchmarks/bench_placement_agreement.py --seeds 2000 [--start 0] [--targets cpu-int8,...] [--jsonl OUT]

Results: ``benchmarks/results/placement_agreement.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.test_placement_agreement import TARGETS, disagreements, random_model  # noqa: E402
from npuflow.errors import error_text  # noqa: E402


def _context(model, name: str) -> str:
    """``producers > op > readers`` by op type, the pattern a disagreement is grouped under."""
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == name)
    before = ",".join(sorted({producer.get(i, "input") for i in node.input if i and i in producer or i == "x"}))
    after = ",".join(sorted({c.op_type for c in model.graph.node for o in node.output if o in c.input})) or "output"
    return f"{before or 'input'} > {node.op_type} > {after}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=1000, help="number of seeds per target")
    ap.add_argument("--start", type=int, default=0, help="first seed")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    ap.add_argument("--max-ops", type=int, default=7, help="most ops per generated model")
    ap.add_argument("--jsonl", default=None, help="write one line per disagreement or error here")
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    patterns: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    errors: dict[tuple[str, str], list[int]] = defaultdict(list)
    out = open(args.jsonl, "w") if args.jsonl else None
    t0 = time.time()
    cases = 0
    for seed in range(args.start, args.start + args.seeds):
        model = random_model(seed, args.max_ops)
        for target in args.targets.split(","):
            cases += 1
            try:
                found = disagreements(model, target)
            except Exception as e:  # noqa: BLE001 - a failure to quantize/compile/run is a finding too
                key = (target, f"{type(e).__name__}: {error_text(e)[:160]}")  # a coded error without its hint line
                errors[key].append(seed)
                if out:
                    out.write(json.dumps({"seed": seed, "target": target, "error": key[1]}) + "\n")
                continue
            for name, op, f, q, c in found:
                key = (target, _context(model, name), f"{f} / {q} / {c}")
                patterns[key].append(seed)
                if out:
                    out.write(json.dumps({"seed": seed, "target": target, "node": name, "pattern": key[1],
                                          "sides": key[2]}) + "\n")
        if out:
            out.flush()
    print(f"{cases} cases ({args.seeds} seeds x {len(args.targets.split(','))} targets) in {time.time() - t0:.0f} s")
    print("\n| pattern (producers > op > readers) | target | check float / check quantized / compile | cases | seeds |")
    print("| --- | --- | --- | --- | --- |")
    for (target, pattern, sides), seeds in sorted(patterns.items(), key=lambda kv: -len(kv[1])):
        print(f"| `{pattern}` | {target} | {sides} | {len(seeds)} | {', '.join(map(str, seeds[:4]))} |")
    if errors:
        print("\n| error | target | cases | seeds |\n| --- | --- | --- | --- |")
        for (target, err), seeds in sorted(errors.items(), key=lambda kv: -len(kv[1])):
            print(f"| {err} | {target} | {len(seeds)} | {', '.join(map(str, seeds[:4]))} |")
    return 1 if patterns or errors else 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
