"""Calibration samples from the folders named in ``cal_data_dir``.

hb_mapper's convention (seed 004 L1259-1335, spec A.6): one file per sample, in the *train*
format (type, layout and shape of the float model's input) with everything except mean/scale
already applied, saved with ``numpy.tofile`` (uint8 for images, float32 for featuremaps); npuflow
also reads ``numpy.save`` files (``.npy``) and ``numpy.savez`` files (``.npz``: the array named as
the input, or its only array), as ``npuflow quantize`` does.  With
``preprocess_on: True`` the folder holds images instead, which are only resized.

The preprocessed model takes the *runtime* format, so each sample is converted with
:func:`~npuflow.passes.preprocess.to_runtime_format` (bgr -> nv12, say): calibration then sees
exactly what the device will feed.  Every file is checked before calibration starts, so a bad
file fails fast with its name; samples are then read one at a time, keeping memory bounded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import NpuflowError
from ..passes.preprocess import InputPreprocess, to_runtime_format
from ..quant.data import not_raw_reason


class CalibrationSet(Sequence):
    """A re-iterable set of feeds ``{input_name: runtime-format array}``; a ``Sequence``, so that
    the quantizer knows how many samples it calibrates on (its progress counts ``k/12``, not
    ``k/?``)."""

    def __init__(self, inputs: Sequence[tuple[InputPreprocess, Path]], *, images: bool,
                 dtypes: Mapping[str, np.dtype] | None = None, raw_dtype: str | None = None) -> None:
        self.inputs = list(inputs)
        self.images = images
        # hb_mapper's cal_data_type: the dtype every raw file must have (None: told by its size)
        self.raw_dtype = np.dtype(raw_dtype) if raw_dtype else None
        # the model's own dtype of each input: a featuremap the model takes as integers (silero-vad's
        # int64 sample rate) is fed as such, not as the float32 of hb_mapper's featuremaps
        self.dtypes = dict(dtypes or {})
        self.files: dict[str, list[Path]] = {}
        for pre, folder in self.inputs:
            self.files[pre.name] = _list_folder(pre.name, folder)
            for f in self.files[pre.name]:
                if images:
                    _check_image(f)
                elif _is_npy(f):
                    _load_npy(f, pre)
                else:
                    _raw_dtype(f, pre, self.raw_dtype, self.dtypes.get(pre.name))
        counts = {name: len(fs) for name, fs in self.files.items()}
        if len(set(counts.values())) > 1:
            raise NpuflowError("NPF_BUILD_CALIB_COUNT_MISMATCH",
                               counts=", ".join(f"{k}: {v}" for k, v in counts.items()))

    def __len__(self) -> int:
        return len(next(iter(self.files.values())))

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {pre.name: self.sample(pre, self.files[pre.name][index]) for pre, _ in self.inputs}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    def sample(self, pre: InputPreprocess, path: Path) -> np.ndarray:
        if self.images:
            return to_runtime_format(read_image(path, pre), pre)
        dtype = self.dtypes.get(pre.name)
        values = _read_values(path, pre, self.raw_dtype, dtype)
        if pre.type_rt == "featuremap" and dtype is not None and dtype.kind in "iub":
            # as stored: integers above 2^24 would not survive float32
            return values.astype(dtype)
        return to_runtime_format(values.astype(np.float32), pre)


def _list_folder(name: str, folder: Path) -> list[Path]:
    """The sample files of input ``name``: those in ``folder``, or, where it holds none, in its
    sub-folder named as the input (the one-sub-folder-per-input layout ``npuflow quantize --calib``
    reads, which users bring here; it was "holds no sample files")."""
    if not folder.is_dir():
        raise NpuflowError("NPF_BUILD_CALIB_DIR_NOT_FOUND", path=str(folder), input=name)
    files = _files(folder)
    if not files and (folder / name).is_dir():
        files = _files(folder / name)
    if not files:
        raise NpuflowError("NPF_BUILD_CALIB_EMPTY", path=str(folder), input=name)
    return files


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _raw_dtype(path: Path, pre: InputPreprocess, declared: np.dtype | None = None,
               model: np.dtype | None = None) -> np.dtype:
    """uint8 when the file has one byte per element, float32 with four (featuremaps: only four, or
    the size of the model's own dtype of the input: a diffusion model's int64 timestep saved with
    ``numpy.tofile`` was refused as "needs 4 (float32)");
    ``declared`` (``cal_data_type``): that dtype, and a file of another size is refused.  An image
    or audio clip is refused as such, whatever its size (``quant.data.not_raw_reason``)."""
    if (reason := not_raw_reason(path)) is not None:
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=reason)
    count = int(np.prod(pre.shape))
    size = path.stat().st_size
    if declared is not None:
        if size != declared.itemsize * count:
            raise NpuflowError("NPF_BUILD_CALIB_FILE_SIZE", path=str(path), size=size, input=pre.name,
                               shape="x".join(map(str, pre.shape)),
                               expected=f"{declared.itemsize * count} ({declared}, cal_data_type)")
        return declared
    if size == 4 * count:
        return np.dtype(np.float32)
    own = model is not None and pre.type_train == "featuremap" and model != np.float32
    if own and size == model.itemsize * count:
        return model
    if size == count and pre.type_train != "featuremap":
        return np.dtype(np.uint8)
    expected = f"{4 * count} (float32)" if pre.type_train == "featuremap" else f"{count} (uint8) or {4 * count} (float32)"
    if own:
        expected += f" or {model.itemsize * count} ({model}, the model's own dtype)"
    raise NpuflowError("NPF_BUILD_CALIB_FILE_SIZE", path=str(path), size=size, input=pre.name,
                       shape="x".join(map(str, pre.shape)), expected=expected)


def _read_values(path: Path, pre: InputPreprocess, declared: np.dtype | None = None,
                 model: np.dtype | None = None) -> np.ndarray:
    """One sample in the train shape, in the dtype it was stored in (``.npy`` or raw)."""
    if _is_npy(path):
        return np.asarray(_load_npy(path, pre)).reshape(pre.shape)
    return np.fromfile(path, dtype=_raw_dtype(path, pre, declared, model)).reshape(pre.shape)


def _is_npy(path: Path) -> bool:
    """A ``numpy.save`` or ``numpy.savez`` file (its magic string, or a zip's for ``.npz``), whatever
    its name: users of ``npuflow quantize``, which reads ``.npy`` and ``.npz`` folders, bring the same
    folders to ``build``; before, an ``.npz`` was read as raw bytes and refused for its size."""
    with open(path, "rb") as f:
        magic = f.read(6)
    return magic == b"\x93NUMPY" or (magic[:4] == b"PK\x03\x04" and path.suffix.lower() == ".npz")


def _load_npy(path: Path, pre: InputPreprocess) -> np.ndarray:
    """The array of a ``.npy`` sample (memory-mapped) or of an ``.npz`` one (the array named as the
    input, or its only array), checked against the input's train shape."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        if isinstance(arr, np.lib.npyio.NpzFile):
            with arr:
                names = arr.files
                arr = arr[pre.name] if pre.name in names else arr[names[0]] if len(names) == 1 else None
            if arr is None:
                raise ValueError(f"arrays {', '.join(names)}, none named {pre.name!r}")
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise NpuflowError("NPF_BUILD_CALIB_NPY", path=str(path), dtype="unreadable", got=str(exc),
                           input=pre.name, shape="x".join(map(str, pre.shape))) from None
    if arr.size != int(np.prod(pre.shape)) or arr.dtype.kind not in "fiub":
        raise NpuflowError("NPF_BUILD_CALIB_NPY", path=str(path), dtype=str(arr.dtype),
                           got="x".join(map(str, arr.shape)), input=pre.name, shape="x".join(map(str, pre.shape)))
    return arr


def _check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NpuflowError("NPF_BUILD_CALIB_IMAGE", path=str(path), reason=str(exc) or type(exc).__name__) from None


def read_image(path: Path, pre: InputPreprocess) -> np.ndarray:
    """An image file resized to the input size, in the train type and layout, as float32."""
    from PIL import Image

    if pre.type_train == "featuremap":
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="calibration_parameters", key="preprocess_on",
                           value=True, reason=f"input {pre.name!r} is a featuremap, not an image")
    _, _, h, w = pre.nchw_shape
    mode = {"gray": "L", "yuv444": "YCbCr"}.get(pre.type_train, "RGB")
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB").convert(mode).resize((w, h), Image.Resampling.BILINEAR))
    hwc = pixels.reshape(h, w, -1).astype(np.float32)
    if pre.type_train == "bgr":
        hwc = hwc[..., ::-1]
    sample = hwc[None] if pre.layout_train == "NHWC" else hwc.transpose(2, 0, 1)[None]
    return np.ascontiguousarray(sample).reshape(pre.shape)
