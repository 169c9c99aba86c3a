"""Fast finetune: AdaRound or AdaQuant over every weight layer of a QDQ model.

One streaming pass over the calibration data per model collects, for each layer, input patches
at sampled output positions: from the QDQ model (what the quantized layer really sees) and from
the float model (to compute the float layer's outputs, the targets).  Each layer is then solved
on its own; layers are independent, so a failure or a cache hit for one never affects another.

Results are cached on disk per layer under a content hash of the layer's float weights, weight
scale, calibration inputs, settings and the solver version, so a re-run with other settings (another method for
other models, bias correction on or off, a changed activation config) skips the layers whose
problem did not change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx

from ...errors import NpuflowError
from ...model import write_atomic
from .adaquant import adaquant
from .adaround import adaround
from .graph import Feed, capture, layer_bias, layer_weight, weight_layers
from .layer_problem import LayerProblem, forward, torch_available
from .patches import PatchSampler, grouped_weight
from .qdq_weights import read_bias, read_codes, scale_rows, quantized_layers, write_bias, write_codes

log = logging.getLogger(__name__)

METHODS = ("adaround", "adaquant")


@dataclass
class FinetuneSettings:
    """``fast_finetune`` settings of the quantizer config (Vitis AI's ``fast_finetune``)."""

    method: str = "adaround"
    iters: int = 300
    lr: float | None = None      # None: 1e-2 for AdaRound, 1e-4 for AdaQuant
    batch: int = 256             # patch columns per iteration
    samples: int = 2048          # patch columns kept per layer (over the whole calibration set)
    backend: str = "auto"        # auto | numpy | torch
    round_mode: str = "std_round"
    seed: int = 0

    def key(self) -> dict:
        return {"method": self.method, "iters": self.iters, "lr": self.learning_rate, "batch": self.batch,
                "seed": self.seed, "round_mode": self.round_mode, "v": 1}

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-2 if self.method == "adaround" else 1e-4


@dataclass
class LayerResult:
    name: str
    error_before: float
    error_after: float
    cached: bool
    seconds: float


@dataclass
class FinetuneReport:
    layers: list[LayerResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def default_cache_dir() -> Path:
    return Path(os.environ.get("NPUFLOW_CACHE", Path.home() / ".cache" / "npuflow")) / "fast_finetune"


def resolve_backend(backend: str) -> str:
    """``auto`` picks numpy: the per-layer problems are small matrix products, where numpy is
    as fast as torch on CPU and has no start-up cost; ``torch`` must be asked for."""
    if backend == "auto":
        return "numpy"
    if backend == "torch" and not torch_available():
        log.warning("torch is not installed; fast finetune uses numpy")
        return "numpy"
    return backend


def fast_finetune(
    float_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    calibration: Iterable[Feed],
    settings: FinetuneSettings | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[onnx.ModelProto, FinetuneReport]:
    """A copy of ``qmodel`` whose weight codes (and, for AdaQuant, biases) were finetuned."""
    st = settings or FinetuneSettings()
    if st.method not in METHODS:
        raise ValueError(f"fast_finetune method must be one of {METHODS}, not {st.method!r}")
    backend = resolve_backend(st.backend)
    t0 = time.time()
    out = onnx.ModelProto()
    out.CopyFrom(qmodel)
    report = FinetuneReport()
    floats = {l.name: l for l in weight_layers(float_model)}
    feeds = list(calibration)
    per_batch = max(1, st.samples // max(len(feeds), 1))
    jobs = []
    for ql in quantized_layers(out):
        fl = floats.get(ql.name)
        if fl is None:
            report.skipped.append(ql.name)
            continue
        w = layer_weight(float_model, fl)
        sampler = PatchSampler(ql.node, w.shape, per_batch)
        if not sampler.supported or w.shape != read_codes(out, ql).shape:
            report.skipped.append(ql.name)
            continue
        jobs.append((ql, fl, w, sampler))
    qx = _collect(out, feeds, {ql.name: (ql.node.input[0], s) for ql, _, _, s in jobs})
    fx = _collect(float_model, feeds, {ql.name: (fl.node.input[0], s) for ql, fl, _, s in jobs})
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    for k, (ql, fl, w, sampler) in enumerate(jobs):
        if progress:
            progress(ql.name, k, len(jobs))
        t1 = time.time()
        g = sampler.groups
        b = layer_bias(float_model, fl, w.shape[0])
        wg = grouped_weight(w, g)
        bg = b.reshape(g, -1, 1)
        y = forward(wg.astype(np.float32), fx[ql.name]) + bg
        s = grouped_weight(scale_rows(ql, w.shape) * np.ones_like(w), g)[:, :, :1]
        lo, hi = ql.qlimits()
        if lo == -(2 ** (ql.bits - 1)) and read_codes(out, ql).min() > lo:
            lo += 1  # narrow range: keep the most negative code unused, as the quantizer did
        prob = LayerProblem(wg, s, read_bias(out, ql, w.shape[0]).reshape(g, -1, 1), qx[ql.name], y, lo, hi,
                            st.round_mode)
        nearest = grouped_weight(read_codes(out, ql, st.round_mode), g)
        before = prob.error(nearest)
        key = _cache_key(prob, st)
        path = cache / key[:2] / f"{key}.npz"
        cached = path.exists()
        if cached:
            data = np.load(path)
            codes, bias = data["codes"], data["bias"]
        else:
            if st.method == "adaround":
                codes, bias = adaround(prob, st.iters, st.learning_rate, st.batch, backend=backend, seed=st.seed), prob.b
            else:
                codes, bias = adaquant(prob, st.iters, st.learning_rate, st.batch, backend=backend, seed=st.seed)
            after = prob.error(codes, bias)
            if after > before:  # never make a layer worse than nearest rounding
                codes, bias = nearest, prob.b
            _save(path, codes, bias)
        after = prob.error(codes, bias)
        write_codes(out, ql, codes.reshape(w.shape))
        if st.method == "adaquant":
            write_bias(out, ql, np.asarray(bias).reshape(-1))
        report.layers.append(LayerResult(ql.name, before, after, cached, time.time() - t1))
        log.debug("%s %s: error %.3g -> %.3g (%s, %.1f s)", st.method, ql.name, before, after,
                  "cached" if cached else "solved", time.time() - t1)
    report.seconds = time.time() - t0
    log.info("fast finetune (%s): %d layers, %d cached, %.1f s", st.method, len(report.layers),
             sum(r.cached for r in report.layers), report.seconds)
    return out, report


def _collect(model, feeds, wanted: dict[str, tuple[str, PatchSampler]]) -> dict[str, np.ndarray]:
    """``{layer: (g, K, m)}`` patches of each layer's input tensor over all feeds."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in wanted}
    tensors = sorted({t for t, _ in wanted.values()})

    def keep(batch: int, values: dict[str, np.ndarray]) -> None:
        for name, (tensor, sampler) in wanted.items():
            parts[name].append(sampler.sample(values[tensor], batch))

    if tensors:
        capture(model, feeds, tensors, keep)
    return {n: np.concatenate(p, axis=2) for n, p in parts.items() if p}


#: Part of every cache key: raise it when an algorithm's results change for the same inputs.
SOLVER_VERSION = 2  # 2: AdaRound's reconstruction term is a mean over outputs (was a sum over channels)


def _cache_key(p: LayerProblem, st: FinetuneSettings) -> str:
    h = hashlib.sha256()
    h.update(f"solver {SOLVER_VERSION}".encode())
    for a in (p.w, p.s, p.b, p.x, p.y):
        h.update(np.ascontiguousarray(a).tobytes())
        h.update(str(a.shape).encode())
    h.update(f"{p.qmin},{p.qmax}".encode())
    h.update(json.dumps(st.key(), sort_keys=True).encode())
    return h.hexdigest()


def _save(path: Path, codes: np.ndarray, bias: np.ndarray) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, codes=codes.astype(np.int32), bias=np.asarray(bias, np.float32))
    try:
        write_atomic(path, buf.getvalue())
    except NpuflowError as exc:  # a read-only cache must not stop quantization
        log.warning("cannot write fast-finetune cache %s: %s", path, exc)
