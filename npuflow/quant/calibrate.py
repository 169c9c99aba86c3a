"""Streaming calibration: run the float model once over the data and feed the observers.

Statistics are declared first (which tensors need min/max, which need histograms), then
collected in a single ONNX Runtime pass over the samples: every sample is run, its requested
tensors go into fixed-size observers, and the arrays are dropped.  Memory therefore does not grow
with the number of samples, and samples may differ in shape where the model allows it (ONNX
Runtime's own histogram calibrators concatenate batches and fail there).  The first
``keep`` samples are returned for the accuracy report, and the graph outputs of the first
``keep_outputs`` samples are kept as the float reference of bias correction's check (the pass
computes them anyway; a bounded number, so memory still does not grow with the sample count).

With ``workers > 1`` or a Ray address the samples go, in chunks of :data:`CHUNK_SAMPLES`, to
worker processes (:func:`npuflow.scaleout.map_tasks`; the model is sent once per worker) that
each fill observers of their own; the chunks' statistics merge in sample order, exactly
(:mod:`.observers`: min/max, counts and histograms are those of one process on the same
samples, and so are the quantization parameters derived from them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import onnx
import onnxruntime as ort

from .. import scaleout
from ..errors import NpuflowError
from ..ort_session import open_session
from ..value_info import with_outputs
from .data import Sample
from .observers import HistogramObserver, MinMaxObserver

log = logging.getLogger(__name__)

#: ``progress(stage, done, total)``; total is ``None`` when the data source has no length.
Progress = Callable[[str, int, "int | None"], None]

#: Samples per parallel calibration task: a task returns every observer once (PP-OCRv4 rec: 244
#: histograms, 4 MB, against ~3.7 s of model runs); ``2 * workers`` chunks are in flight.
CHUNK_SAMPLES = 16


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

    def merge(self, later: "Statistics") -> None:
        """Fold in the statistics of the samples that follow this shard's (exact, see the module
        docstring); their kept outputs follow these."""
        for name, mm in later.minmax.items():
            self.minmax[name].merge(mm)
        for name, hist in later.hist.items():
            self.hist[name].merge(hist)
        self.samples += later.samples
        self.outputs.extend(later.outputs)

    @classmethod
    def empty(cls, tensors: list[str], histogram: set[str], bins: int) -> "Statistics":
        return cls(minmax={t: MinMaxObserver() for t in tensors},
                   hist={t: HistogramObserver(bins) for t in tensors if t in histogram})

    def observe(self, values: dict[str, np.ndarray], tensors: list[str]) -> None:
        """Feed one sample's tensors (those it has) to the observers."""
        for t in tensors:
            v = values.get(t)
            if v is None:
                continue
            if t in self.hist:
                extremes = self.hist[t].update(v)
                if extremes is not None:
                    self.minmax[t].update_range(*extremes)
            else:
                self.minmax[t].update(v)


def session_for(model: onnx.ModelProto, outputs: Iterable[str], *, spinning: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime session that also returns the given intermediate tensors.

    ``spinning=False``: idle pool threads sleep instead of spinning (worker processes sharing
    the cores; scheduling only, the numbers are the same)."""
    return open_session(with_outputs(model, outputs), level="basic", spinning=spinning, what="run")


def run_sample(sess: ort.InferenceSession, sample: Sample, index: int | str) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, sample)
    except NpuflowError:  # a custom op's own failure (npuflow.custom_ops)
        raise
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
            total: int | None = None, workers: int = 1, ray_address: str | None = None,
            ) -> tuple[Statistics, list[Sample]]:
    """One pass over ``samples``: min/max for every tensor, histograms for those in ``histogram``;
    sharded over ``workers`` processes or Ray tasks (``ray_address``) when asked."""
    if scaleout.parallel(workers, ray_address):
        return _collect_sharded(model, tensors, histogram, samples, bins=bins, keep=keep, keep_outputs=keep_outputs,
                                progress=progress, total=total, workers=workers, ray_address=ray_address)
    inputs = {i.name for i in model.graph.input}
    stats = Statistics.empty(tensors, histogram, bins)
    sess = session_for(model, [t for t in tensors if t not in inputs])
    graph_outputs = [o.name for o in model.graph.output]
    kept: list[Sample] = []
    for index, sample, values in run_ahead(lambda i, x: run_sample(sess, x, i), samples):
        values.update(sample)
        stats.observe(values, tensors)
        if len(kept) < keep:
            kept.append(sample)
        if len(stats.outputs) < keep_outputs:
            stats.outputs.append([values[o] for o in graph_outputs])
        stats.samples += 1
        if progress is not None:
            progress("calibrate", index + 1, total)
    log.info("calibrated %d tensors on %d samples", len(tensors), stats.samples)
    return stats, kept


def _collect_sharded(model: onnx.ModelProto, tensors: list[str], histogram: set[str], samples: Iterable[Sample], *,
                     bins: int, keep: int, keep_outputs: int, progress: Progress | None, total: int | None,
                     workers: int, ray_address: str | None) -> tuple[Statistics, list[Sample]]:
    """:func:`collect` with chunks of samples calibrated by workers and merged in sample order."""
    context = {"model": model.SerializeToString(), "tensors": tensors, "histogram": set(histogram) & set(tensors),
               "bins": bins, "keep_outputs": keep_outputs}
    kept: list[Sample] = []
    done = [0]

    def chunks() -> Iterator[tuple[int, list[Sample]]]:
        chunk: list[Sample] = []
        for index, sample in enumerate(samples):
            if len(kept) < keep:
                kept.append(sample)
            chunk.append(sample)
            if len(chunk) == CHUNK_SAMPLES:
                yield index + 1 - len(chunk), chunk
                chunk = []
        if chunk:
            yield index + 1 - len(chunk), chunk

    def report(item: tuple[int, list[Sample]], _finished: int, _total: int | None) -> None:
        done[0] += len(item[1])
        if progress is not None:
            progress("calibrate", done[0], total)

    stats = Statistics.empty(tensors, histogram, bins)
    for part in scaleout.map_tasks(_calibrate_chunk, chunks(), workers, ray_address, report, context=context):
        stats.merge(part)
    log.info("calibrated %d tensors on %d samples in %s", len(tensors), stats.samples,
             f"Ray tasks ({ray_address})" if ray_address else f"{workers} worker processes")
    return stats, kept


def _calibrate_chunk(context: dict, item: tuple[int, list[Sample]]) -> Statistics:
    """A worker's task: statistics of one chunk (its first sample is sample ``start`` of the set)."""
    start, chunk = item
    tensors = context["tensors"]
    model = scaleout.memo(context, "proto", lambda: onnx.load_from_string(context["model"]))
    inputs = {i.name for i in model.graph.input}
    sess = scaleout.memo(context, "session", lambda: session_for(model, [t for t in tensors if t not in inputs],
                                                                 spinning=False))
    graph_outputs = [o.name for o in model.graph.output]
    stats = Statistics.empty(tensors, context["histogram"], context["bins"])
    for index, sample, values in run_ahead(lambda i, x: run_sample(sess, x, start + i), chunk):
        values.update(sample)
        stats.observe(values, tensors)
        if start + index < context["keep_outputs"]:
            stats.outputs.append([values[o] for o in graph_outputs])
        stats.samples += 1
    return stats
