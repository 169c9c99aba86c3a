"""The joined session (``npuflow/runtime/joined.py``) against the same ``.npuf`` with every step on
its own session, in one process, interleaved: blocks of frames alternate between the two Sessions
(the order swapped every block), each block timed by this process's CPU time, so that the load of a
shared machine falls on both alike.  Prints each Session's steps, the median ms per frame, the ratio
apart / joined of the medians and in how many blocks the joined Session was faster.

    python benchmarks/bench_joined.py --model yolo --blocks 40            # input fixed at 1x3x320x320
    python benchmarks/bench_joined.py --model yolo --free-batch           # the batch left free
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import npuflow  # noqa: E402
from npuflow.runtime import joined  # noqa: E402
from tests import fixture_models  # noqa: E402

import datasets as D  # noqa: E402

MODELS = {"yolo": (fixture_models.yolov8n, "images", [1, 3, 320, 320], lambda n: D.yolo("calib", n))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="yolo")
    parser.add_argument("--target", default="cpu-int8")
    parser.add_argument("--blocks", type=int, default=40)
    parser.add_argument("--frames", type=int, default=10, help="frames per block")
    parser.add_argument("--free-batch", action="store_true", help="quantize without fixing the input's shape")
    args = parser.parse_args()
    fetch, name, shape, calib = MODELS[args.model]
    samples = calib(8)
    quantized = npuflow.quantize(str(fetch()), samples, target=args.target,
                                 input_shapes=None if args.free_batch else {name: shape})
    compiled = npuflow.compile(quantized.model, args.target)
    together = npuflow.Session(compiled)
    real = joined.steps
    joined.steps = lambda steps, *rest: steps
    try:
        apart = npuflow.Session(compiled)
    finally:
        joined.steps = real
    for label, s in (("joined", together), ("apart", apart)):
        print(label, [(type(st.executor).__name__, st.indices) for st in s._live()[0].steps])
    x = samples[0]
    a, b = together.run(x), apart.run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a), "outputs differ"
    for s in (together, apart):
        for _ in range(5):
            s.run(x)
    times: dict[str, list[float]] = {"joined": [], "apart": []}
    for block in range(args.blocks):
        order = (("joined", together), ("apart", apart)) if block % 2 else (("apart", apart), ("joined", together))
        for label, s in order:
            t0 = time.process_time()
            for _ in range(args.frames):
                s.run(x)
            times[label].append((time.process_time() - t0) / args.frames)
    j, p = np.array(times["joined"]), np.array(times["apart"])
    print(f"joined {np.median(j) * 1e3:.3f} ms, apart {np.median(p) * 1e3:.3f} ms per frame; "
          f"apart / joined {np.median(p) / np.median(j):.4f}; joined faster in {int((j < p).sum())} of {args.blocks} blocks")


if __name__ == "__main__":
    main()
