"""Streaming calibration: run the float model once over the data and feed the observers.

Statistics are declared first (which tensors need min/max, which need histograms), then
collected in a single ONNX Runtime pass over the samples: every sample is run, its requested
tensors go into fixed-size observers, and the arrays are dropped.  Memory therefore does not grow
with the number of samples, and samples may differ in shape where the model allows it (ONNX
Runtime's own histogram calibrators concatenate batches and fail there).  The first
``keep`` samples are returned for the accuracy report, and the graph outputs of the first
``keep_outputs`` samples are kept as the float reference of bias correction's check (the pass
computes them anyway; a bounded number, so memory still does not grow with the sample count).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import NpuflowError
from ..model import MAX_IR_VERSION
from .data import Sample
from .observers import HistogramObserver, MinMaxObserver

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; total is ``None`` when the data source has no length.
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class Statistics:
    minmax: dict[str, MinMaxObserver] = field(default_factory=dict)
    hist: dict[str, HistogramObserver] = field(default_factory=dict)
    samples: int = 0
    #: Graph outputs of the first ``keep_outputs`` samples (the float reference of later checks).
    outputs: list[list[np.ndarray]] = field(default_factory=list)

    def state_size(self) -> int:
        """Numbers held by all observers (independent of the sample count)."""
        return sum(o.state_size() for o in self.minmax.values()) + sum(h.state_size() for h in self.hist.values())


def session_for(model: onnx.ModelProto, outputs: Iterable[str]) -> ort.InferenceSession:
    """An ONNX Runtime session that also returns the given intermediate tensors."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.ir_version = min(probe.ir_version, MAX_IR_VERSION)
    existing = {o.name for o in probe.graph.output}
    for name in outputs:
        if name not in existing:
            probe.graph.output.add().name = name
            existing.add(name)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types
        raise NpuflowError("NPF_MODEL_INVALID", reason=f"ONNX Runtime cannot run the model: {exc}") from None


def run_sample(sess: ort.InferenceSession, sample: Sample, index: int) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, sample)
    except Exception as exc:  # a sample ORT rejects (shape the graph cannot take)
        raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index, reason=f"ONNX Runtime rejected it: {exc}") from None
    return dict(zip(names, values))


def run_ahead(run: Callable[[int, Any], dict], samples: Iterable[Any]) -> Iterator[tuple[int, Any, dict]]:
    """``(index, sample, run(index, sample))`` per sample, the next sample's ``run`` (an ONNX
    Runtime call, which releases the GIL) already going in a worker thread while the caller
    works on this one.  At most two samples' tensors are alive, so memory does not grow with the
    sample count."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: tuple[int, Any, Future] | None = None
        for index, sample in enumerate(samples):
            future = pool.submit(run, index, sample)
            if pending is not None:
                yield pending[0], pending[1], pending[2].result()
            pending = (index, sample, future)
        if pending is not None:
            yield pending[0], pending[1], pending[2].result()


def collect(model: onnx.ModelProto, tensors: list[str], histogram: set[str], samples: Iterable[Sample], *,
            bins: int = 2048, keep: int = 0, keep_outputs: int = 0, progress: Progress | None = None,
            total: int | None = None) -> tuple[Statistics, list[Sample]]:
    """One pass over ``samples``: min/max for every tensor, histograms for those in ``histogram``."""
    inputs = {i.name for i in model.graph.input}
    stats = Statistics(minmax={t: MinMaxObserver() for t in tensors},
                       hist={t: HistogramObserver(bins) for t in tensors if t in histogram})
    sess = session_for(model, [t for t in tensors if t not in inputs])
    graph_outputs = [o.name for o in model.graph.output]
    kept: list[Sample] = []
    for index, sample, values in run_ahead(lambda i, x: run_sample(sess, x, i), samples):
        values.update(sample)
        for t in tensors:
            v = values.get(t)
            if v is None:
                continue
            if t in stats.hist:
                extremes = stats.hist[t].update(v)
                if extremes is not None:
                    stats.minmax[t].update_range(*extremes, int(v.size))
            else:
                stats.minmax[t].update(v)
        if len(kept) < keep:
            kept.append(sample)
        if len(stats.outputs) < keep_outputs:
            stats.outputs.append([values[o] for o in graph_outputs])
        stats.samples += 1
        if progress is not None:
            progress("calibrate", index + 1, total)
    log.info("calibrated %d tensors on %d samples", len(tensors), stats.samples)
    return stats, kept
