"""CPU subgraph cost, measured with ONNX Runtime on this host.

The static model cannot know the board's CPU, so CPU parts are timed here and labelled
"measured on host CPU": a faster or slower board CPU changes them, and the report says so.  Each
CPU subgraph is cut out of the model as its own ONNX graph (its outside inputs become graph
inputs fed with random data of the right shape and type) and run single-threaded.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..graph import node_reads
from ..model import probe_feeds, tensor_elem_types, tensor_shapes
from ..ort_session import open_session

log = logging.getLogger(__name__)

#: Runs timed per CPU subgraph (after one warm-up); the median is reported.
RUNS = 5


def cut_subgraph(model: onnx.ModelProto, nodes: Sequence[onnx.NodeProto]) -> onnx.ModelProto:
    """A standalone model of ``nodes``: outside inputs become graph inputs, used outputs outputs."""
    inits = {t.name: t for t in model.graph.initializer}
    shapes, types = tensor_shapes(model), tensor_elem_types(model)
    produced = {o for n in nodes for o in n.output if o}
    inside = {id(n) for n in nodes}
    consumed_outside = {i for n in model.graph.node if id(n) not in inside for i in node_reads(n)}
    consumed_outside |= {o.name for o in model.graph.output}
    inputs, used_inits, seen = [], [], set()
    for n in nodes:
        for i in node_reads(n):  # If/Loop bodies read outer tensors without listing them as inputs
            if i in produced or i in seen:
                continue
            seen.add(i)
            if i in inits:
                used_inits.append(inits[i])
            else:
                inputs.append(helper.make_tensor_value_info(i, types.get(i, onnx.TensorProto.FLOAT), shapes.get(i)))
    outputs = [
        helper.make_tensor_value_info(o, types.get(o, onnx.TensorProto.FLOAT), shapes.get(o))
        for n in nodes for o in n.output if o and o in consumed_outside
    ] or [helper.make_tensor_value_info(nodes[-1].output[0], types.get(nodes[-1].output[0], 1), None)]
    graph = helper.make_graph(list(nodes), "cpu_part", inputs, outputs, used_inits)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = min(model.ir_version, 10)
    sub.functions.extend(model.functions)
    return sub


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
    sub = cut_subgraph(model, nodes)
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
