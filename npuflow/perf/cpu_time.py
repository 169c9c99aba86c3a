"""CPU subgraph cost, measured with ONNX Runtime on this host.

The static model cannot know the board's CPU, so CPU parts are timed here and labelled
"measured on host CPU": a faster or slower board CPU changes them, and the report says so.  Each
CPU subgraph is cut out of the model as its own ONNX graph (:func:`npuflow.graph.slice_nodes`: its
outside inputs become graph inputs, fed with random data of the right shape and type) and run
single-threaded.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from ..graph import slice_nodes
from ..shape_probe import probe_feeds
from ..ort_session import open_session

log = logging.getLogger(__name__)

#: Runs timed per CPU subgraph (after one warm-up); the median is reported.
RUNS = 5


def _random_feed(sess: ort.InferenceSession) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for i in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in i.shape]
        if "int64" in i.type or "int32" in i.type:
            dtype = np.int64 if "int64" in i.type else np.int32
            feed[i.name] = np.zeros(shape, dtype)
        elif "int8" in i.type:
            feed[i.name] = rng.integers(-64, 64, shape).astype(np.uint8 if "uint8" in i.type else np.int8)
        elif "bool" in i.type:
            feed[i.name] = np.zeros(shape, bool)
        else:
            feed[i.name] = rng.standard_normal(shape).astype(np.float16 if "float16" in i.type else np.float32)
    return feed


def measure_ms(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], runs: int = RUNS) -> float | None:
    """Median single-thread ONNX Runtime time of ``nodes`` in ms, or ``None`` if they cannot run alone."""
    sub = slice_nodes(model, nodes, name="cpu_part")
    try:
        sess = open_session(sub, threads=1)
        feed = _random_feed(sess)
        # integer inputs that select a branch get the constant the model tests them against (sr=16000)
        feed.update({k: v for k, v in probe_feeds(sub).items() if k in feed and feed[k].dtype.kind in "iub"})
        sess.run(None, feed)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append((time.perf_counter() - t0) * 1e3)
    except Exception as exc:  # ORT raises many types; a part that cannot run alone is reported, not fatal
        log.warning("cannot time CPU part %s alone: %s", nodes[0].name, exc)
        return None
    return statistics.median(times)
