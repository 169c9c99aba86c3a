"""The peer rows of the accuracy benchmark (``bench_accuracy.py``): the int8-weights-only reference,
ONNX Runtime's and NNCF's quantizers (per-channel, float scales: references, not DPU-deployable) and
AMD Quark's power-of-two XINT8 configurations with and without its fast finetune, each scored by the
benchmark's own evaluation of the same model and calibration samples."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench_quant as BQ  # noqa: E402
import datasets as D  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402

import npuflow  # noqa: E402
from npuflow.graph import attr  # noqa: E402
from npuflow.model import load as npuflow_load  # noqa: E402
from npuflow.numerics import ONNX_ROUND_MODE, fake_quantize, float_scale  # noqa: E402
from npuflow.passes.fold_constants import fold_constants  # noqa: E402


#: the reference row of weight rounding alone
WEIGHTS_ONLY = "reference: int8 weights only (per-channel float scales, nearest), float activations"


def weights_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every Conv/Gemm/MatMul weight initializer rounded to symmetric per-channel
    int8 codes with float scales (the finest int8 weight grid a per-channel target offers) and
    activations left in float: how far weight rounding alone moves the metric, a yardstick for
    rows that quantize everything on a coarser, power-of-two per-tensor grid."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    for node in out.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            init = inits[node.input[1]]
            w = onnx.numpy_helper.to_array(init)
            if w.ndim < 2:
                continue
            axis = 1 if node.op_type == "MatMul" or (node.op_type == "Gemm" and not attr(node, "transB", 0)) else 0
            amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
            q = fake_quantize(w, float_scale(amax), round_mode=ONNX_ROUND_MODE, axis=axis, narrow=True)
            init.CopyFrom(onnx.numpy_helper.from_array(q.astype(w.dtype), init.name))
    return out


def peer_rows(bench: BQ.Bench, rows: dict, on_row: Callable[[dict], None] = lambda rows: None) -> None:
    """The weight-rounding reference row (:func:`weights_only`), ONNX Runtime (best of its
    calibration methods on the evaluation set, as in bench_quant) and NNCF defaults, both
    per-channel with float scales: references, not DPU-deployable."""
    with tempfile.TemporaryDirectory() as tmp:
        # the float model prepared as bench_quant prepares it for every tool (frozen shapes, folded
        # constants: ONNX Runtime's quantizer rejects PP-OCR's graph otherwise)
        float_path = Path(tmp) / "float.onnx"
        folded = fold_constants(npuflow_load(bench.path, bench.input_shapes))
        npuflow.model.save(folded, float_path)
        rows[WEIGHTS_ONLY] = {"scores": bench.evaluate(D.ort_session(weights_only(folded))), "seconds": None}
        on_row(rows)
        best = None
        for method in BQ.ORT_METHODS:
            try:
                path, seconds = BQ.quantize_ort(float_path, bench.calib, method, Path(tmp), stride=2)
                scores = bench.evaluate(D.ort_session(path))
                if best is None or scores[bench.metric] > best[1][bench.metric]:
                    best = (method, scores, seconds)
            except Exception as exc:  # noqa: BLE001
                rows[f"ONNX Runtime {method}"] = {"error": f"{type(exc).__name__}: {exc}"}
        if best is not None:
            rows[f"ONNX Runtime {best[0]} (best of {'/'.join(BQ.ORT_METHODS)}; per-channel, float scales)"] = {
                "scores": best[1], "seconds": best[2]}
        on_row(rows)
        try:
            path, seconds = BQ.quantize_nncf(float_path, bench.calib, Path(tmp))
            rows["NNCF (defaults; per-channel, float scales)"] = {"scores": bench.evaluate(D.ort_session(path)),
                                                                  "seconds": seconds}
        except Exception as exc:  # noqa: BLE001
            rows["NNCF (defaults; per-channel, float scales)"] = {"error": f"{type(exc).__name__}: {exc}"}
        on_row(rows)


#: Quark rows: (row label, Quark default-config name, iterations argument index or None)
QUARK_CONFIGS = (("AMD Quark XINT8", "XINT8", None),
                 ("AMD Quark XINT8 + AdaRound", "XINT8_ADAROUND", 0),
                 ("AMD Quark XINT8 + AdaQuant", "XINT8_ADAQUANT", 1))


def quark_quantize(float_path: Path, calib: list[dict], config_name: str, iters: int | None, out: Path,
                   data_size: int | None = None) -> object:
    """Quantize with AMD Quark's default config ``config_name`` (legacy ``QuantizationConfig``:
    power-of-two MinMSE scales, symmetric activations, per-tensor, NPU-CNN graph rules), fast
    finetune ``iters`` iterations when the config has one (on the first ``data_size`` calibration
    samples when given: Quark runs the whole float and quantized models over them once per layer, which
    at 640x640 costs about a minute a layer with 32 samples here), and return the model ONNX Runtime
    loads.

    Quark's saved model keeps the float model's value_info, whose shapes its graph rewrites made
    stale (ONNX Runtime refuses it: "inferred shape and existing shape differ"); they are dropped
    (the issue author had to do the same), which changes nothing that runs."""
    import contextlib
    import copy
    import io

    import onnx
    from onnxruntime.quantization import CalibrationDataReader
    from quark.onnx import ModelQuantizer
    from quark.onnx.quantization.config.config import QConfig

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    config = copy.deepcopy(QConfig.get_default_config(config_name))
    finetune = config.global_quant_config.extra_options.get("FastFinetune")
    if finetune is not None and iters is not None:
        finetune["NumIterations"] = iters
    if finetune is not None and data_size is not None:
        finetune["DataSize"] = data_size
    # Quark prints rich tables of every op (the benchmark log keeps only the rows) and appends its
    # timings to ./quantized_info.csv (a fixed relative path): run it in the scratch folder
    with contextlib.redirect_stdout(io.StringIO()), contextlib.chdir(out.parent):
        ModelQuantizer(config).quantize_model(str(float_path), str(out), Reader())
    model = onnx.load(str(out))
    del model.graph.value_info[:]
    return model


def quark_rows(bench: BQ.Bench, rows: dict, iters: tuple[int, int],
               on_row: Callable[[dict], None] = lambda rows: None, data_size: int | None = None) -> None:
    """AMD Quark (``amd-quark``, the benchmark extra) XINT8 plain, + AdaRound, + AdaQuant on the same
    calibration samples; a failing row records a coded note (``QUARK_*``) and the run goes on."""
    # Quark logs every layer it finetunes at INFO (thousands of lines); read when quark is imported
    os.environ.setdefault("QUARK_LOG_LEVEL", "warning")
    try:
        import quark
        version = getattr(quark, "__version__", "?")
    except ImportError as exc:
        for label, _, _ in QUARK_CONFIGS:
            rows[label] = {"error": f"QUARK_MISSING: {exc}; install the benchmark extra (pip install "
                                    "'.[bench]' --no-deps amd-quark==0.13)"}
        on_row(rows)
        return
    with tempfile.TemporaryDirectory() as tmp:
        float_path = Path(tmp) / "float.onnx"
        npuflow.model.save(fold_constants(npuflow_load(bench.path, bench.input_shapes)), float_path)
        for label, config_name, index in QUARK_CONFIGS:
            n = None if index is None else iters[index]
            name = label if n is None else f"{label} ({n} it{f', {data_size} samples' if data_size else ''})"
            if n == 0:
                continue
            logging.info("%s: %s", bench.name, name)
            t0 = time.perf_counter()
            try:
                model = quark_quantize(float_path, bench.calib, config_name, n, Path(tmp) / f"{config_name}.onnx",
                                       data_size)
            except Exception as exc:  # noqa: BLE001  (one failing peer row must not lose the others)
                traceback.print_exc()
                rows[name] = {"error": f"QUARK_QUANTIZE_FAILED: {type(exc).__name__}: {exc}"}
                on_row(rows)
                continue
            seconds = time.perf_counter() - t0
            try:
                scores = bench.evaluate(D.ort_session(model))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                rows[name] = {"error": f"QUARK_ORT_FAILED: {type(exc).__name__}: {exc}", "seconds": seconds}
                on_row(rows)
                continue
            rows[name] = {"scores": scores, "seconds": seconds, "quark": f"amd-quark {version}, {config_name}",
                          "finetune_samples": data_size or len(bench.calib)}
            logging.info("%s: %s -> %s (%.1f s)", bench.name, name, scores, seconds)
            on_row(rows)


def _quark_version() -> str:
    try:
        import quark
    except ImportError:
        return "(not installed)"
    return str(getattr(quark, "__version__", "?"))
