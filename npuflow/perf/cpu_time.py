"""CPU subgraph cost, measured with ONNX Runtime on this host.

The static model cannot know the board's CPU, so CPU parts are timed here and labelled
"measured on host CPU": a faster or slower board CPU changes them, and the report says so.  Each
CPU subgraph is cut out of the model as its own ONNX graph (:func:`npuflow.graph.slice_nodes`: its
outside inputs become graph inputs, fed with random data of the right shape and type) and run
single-threaded.  An integer input that a ``Reshape``/``Expand``/``ConstantOfShape`` reads as its
shape gets the static shape of that node's output (zeros ask for another shape: PP-OCR rec's
attention ``Reshape`` to ``[1, 40, 120]`` fed from another CPU part made 3 parts of every rec cell
"could not be timed alone; counted as 0 ms", targets_sweep_s27).
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np
import onnx

from ..errors import error_text
from ..graph import slice_nodes
from ..operators import SHAPE_OPERAND_INPUT
from ..shape_probe import probe_feeds
from ..ort_session import open_session

log = logging.getLogger(__name__)

#: Runs timed per CPU subgraph (after one warm-up); the median is reported.
RUNS = 5



def _random_feed(inputs: Sequence[tuple[str, Sequence, str]]) -> dict[str, np.ndarray]:
    """Random values per ``(name, shape, type)``; ``type`` an ONNX Runtime type string
    (``tensor(uint8)``) or a numpy dtype name (``uint8``), dynamic dims as 1."""
    rng = np.random.default_rng(0)
    feed = {}
    for name, dims, kind in inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
        if "int64" in kind or "int32" in kind:
            feed[name] = np.zeros(shape, np.int64 if "int64" in kind else np.int32)
        elif "int8" in kind:
            feed[name] = rng.integers(-64, 64, shape).astype(np.uint8 if "uint8" in kind else np.int8)
        elif "bool" in kind:
            feed[name] = np.zeros(shape, bool)
        else:
            feed[name] = rng.standard_normal(shape).astype(np.float16 if "float16" in kind else np.float32)
    return feed


def within_input_ranges(session: Any, feed: dict[str, np.ndarray], seed: int = 0) -> dict[str, np.ndarray]:
    """``feed`` with each float input whose quantize step the compiled model records
    (``Session.input_coverage``) drawn again inside the range that step represents: a normal draw
    with at most 3 sigma to each end, clipped to it.  Timing on random inputs (``perf``, ``bench``)
    with standard-normal draws past a narrow calibrated range (a GIN's node features calibrated at
    -2.2..2.2, round 28b) made the session warn ``NPF_RUNTIME_INPUT_SATURATED`` about inputs the
    user never gave, with a hint to calibrate again.  A session without the method (ONNX Runtime's)
    keeps ``feed`` as it is."""
    ranges = {c.name: (c.low, c.high) for c in session.input_coverage()} if hasattr(session, "input_coverage") else {}
    rng = np.random.default_rng(seed)
    out = dict(feed)
    for name, (lo, hi) in ranges.items():
        a = feed.get(name)
        if a is None or a.dtype.kind != "f":
            continue
        sigma = min(1.0, (hi - lo) / 6)
        centre = min(max(0.0, lo + 3 * sigma), hi - 3 * sigma)
        low, high = np.array(lo, a.dtype), np.array(hi, a.dtype)  # inside the range after the cast too
        low = low if low >= lo else np.nextafter(low, np.array(np.inf, a.dtype))
        high = high if high <= hi else np.nextafter(high, np.array(-np.inf, a.dtype))
        out[name] = np.clip((centre + sigma * rng.standard_normal(a.shape)).astype(a.dtype), low, high)
    return out


def measure_ms(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto], runs: int = RUNS) -> float | None:
    """Median single-thread ONNX Runtime time of ``nodes`` in ms, or ``None`` if they cannot run alone."""
    sub = slice_nodes(model, nodes, name="cpu_part")
    try:
        sess = open_session(sub, threads=1)
        feed = _random_feed([(i.name, i.shape, i.type) for i in sess.get_inputs()])
        # integer inputs that select a branch get the constant the model tests them against (sr=16000)
        feed.update({k: v for k, v in probe_feeds(sub).items() if k in feed and feed[k].dtype.kind in "iub"})
        feed.update({k: v for k, v in _shape_feeds(sub).items() if k in feed and feed[k].dtype == v.dtype})
        return _median_ms(lambda: sess.run(None, feed), runs)
    except Exception as exc:  # ORT raises many types; a part that cannot run alone is reported, not fatal
        log.warning("cannot time CPU part %s alone: %s", nodes[0].name, error_text(exc))
        return None


def _shape_feeds(sub: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Graph inputs of ``sub`` read as a shape operand (:data:`npuflow.operators.SHAPE_OPERAND_INPUT`) whose node's output
    has a fully static declared shape: that shape, as int64."""
    g = sub.graph
    declared = {v.name: v.type.tensor_type.shape.dim for v in [*g.value_info, *g.output]}
    inputs = {i.name for i in g.input}
    found = {}
    for node in g.node:
        k = SHAPE_OPERAND_INPUT.get(node.op_type)
        if k is None or len(node.input) <= k or node.input[k] not in inputs or not node.output:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in declared.get(node.output[0], [])]
        if dims and all(d > 0 for d in dims):
            found[node.input[k]] = np.array(dims, np.int64)
    return found


def time_compiled(compiled: Any, runs: int = RUNS) -> float | None:
    """Median single-thread time in ms of a compiled model in the npuflow runtime on random
    inputs, or ``None`` if it cannot run on them.  On a CPU target the compiled model is what
    deploys, and its integer programs are no ONNX graph ONNX Runtime could time part by part."""
    from ..runtime import Session

    try:
        sess = Session(compiled, threads=1)
        feed = within_input_ranges(sess, _random_feed([(i.name, i.shape, i.dtype) for i in sess.get_inputs()]))
        return _median_ms(lambda: sess.run(feed), runs)
    except Exception as exc:  # a model that cannot run on random inputs is reported, not fatal
        log.warning("cannot time the compiled model on random inputs: %s", error_text(exc))
        return None


def _median_ms(run: Callable[[], object], runs: int) -> float:
    """Median time of ``runs`` calls of ``run`` after one warm-up call."""
    run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
