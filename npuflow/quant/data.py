"""Calibration data: where samples come from and how each is checked against the model inputs.

Sources (all streamed, one sample at a time, so memory does not depend on the set size):

* an iterable of ``dict[input name -> array]``, or of arrays (single-input models), or of
  tuples/lists of arrays in model-input order (a torch ``DataLoader``; tensors are detached);
* an object with ONNX Runtime's ``CalibrationDataReader`` protocol (``get_next``, optionally
  ``rewind``; :func:`_read_through`);
* a folder of ``.npy`` files (single input), or a folder with one sub-folder per input name;
* a folder of ``.npz`` archives, one per sample, each holding every input by name;
* a folder of raw ``numpy.tofile`` files (Horizon's calibration format) read with the shape and
  dtype given in the config (``calib_shapes``, ``calib_dtype``);
* one ``.npy`` file of stacked samples (single input), or one ``.npz`` with every input stacked
  by name (:func:`_stacked_file`);
* a ``.txt`` list, one sample a line, of ``.npy`` files in model-input order separated by spaces
  (rknn-toolkit2's ``dataset.txt``; :func:`_list_file`).

Every sample is checked: input names, dtype, rank, every dimension the :class:`InputSpec` fixes
(the quantizer fixes the shape the model is quantized at; see ``calib_dynamic_dims``) and
finiteness.  A sample read from a file must have the input's dtype exactly: a float64 ``.npy``
for a float32 input means the preprocessing that wrote it is not the deployed one.  In-memory
float arrays are converted (a Python caller's ``np.random.rand`` is float64).  Problems are
coded errors naming the sample (its file for a folder source).
"""

from __future__ import annotations

import copy
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import NpuflowError

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """What a model input accepts: dtype, and dims with ``None`` where any size is fine."""

    name: str
    dtype: np.dtype
    dims: tuple[int | None, ...]


class CalibrationSource:
    """A re-iterable stream of validated samples (re-iterable unless built from a one-shot iterator)."""

    def __init__(self, data: Any, inputs: Sequence[InputSpec], *, shapes: Mapping[str, Sequence[int]] | None = None,
                 dtype: str = "float32", limit: int | None = None) -> None:
        self.inputs = list(inputs)
        self.limit = limit
        self.description = str(data) if isinstance(data, str | os.PathLike) else type(data).__name__
        data = _read_through(data)
        self._raw = _open(data, self.inputs, dict(shapes or {}), np.dtype(dtype))
        #: False for a one-shot iterator (a generator): it yields its samples only once.
        self.reusable = not isinstance(data, Iterator)

    def __iter__(self) -> Iterator[Sample]:
        count = 0
        for index, raw in enumerate(self._raw()):
            if self.limit is not None and count >= self.limit:
                break
            yield check_sample(raw, self.inputs, self._raw.label(index), exact_dtype=self._raw.files)
            count += 1
        if count == 0:
            raise NpuflowError("NPF_QUANT_CALIB_EMPTY", source=self.description)

    def label(self, index: int) -> str | int:
        """How errors name sample ``index``: its number, and its file for a file source."""
        return self._raw.label(index)

    def __len__(self) -> int:
        n = self._raw.length  # type: ignore[attr-defined]
        if n is None:
            raise TypeError("length unknown")
        return min(n, self.limit) if self.limit is not None else n

    def count(self) -> int:
        """How many samples it yields: its length, or counted by reading it (a reusable source only)."""
        try:
            return len(self)
        except TypeError:
            return sum(1 for _ in self)

    def split_last(self, k: int) -> tuple["CalibrationSource", list[Sample]]:
        """This source without its last ``k`` samples, and those samples: what ``fast_finetune.select_on``
        and the accuracy check hold out of calibration (a reusable source; ``k`` below :meth:`count`)."""
        n = self.count()
        rest = copy.copy(self)
        rest.limit = n - k
        return rest, list(itertools.islice(iter(self), n - k, n))


def peek(data: Any, inputs: Sequence[InputSpec], *, shapes: Mapping[str, Sequence[int]] | None = None,
         dtype: str = "float32") -> tuple[Sample, Any]:
    """The first sample of ``data``, checked against ``inputs``, and what to read every sample from
    afterwards: ``data`` itself, or for a one-shot iterator one that yields that sample again.

    Why: a model with dynamic dimensions no ``--input-shape`` resolves is quantized at the first
    calibration sample's shape, which must be known before the model is loaded.
    """
    data = _read_through(data)
    if isinstance(data, Iterator):
        head = list(itertools.islice(data, 1))
        if not head:
            raise NpuflowError("NPF_QUANT_CALIB_EMPTY", source=type(data).__name__)
        return check_sample(head[0], inputs, 0), itertools.chain(head, data)
    return next(iter(CalibrationSource(data, inputs, shapes=shapes, dtype=dtype, limit=1))), data


def _stacked_note(shape: tuple[int, ...], dims: Sequence[int | None]) -> str:
    """What to say when a sample looks like several samples stacked along a new or the batch axis
    (``np.stack(samples)`` or ``{"x": [a, b, ...]}``): each array given is one sample."""
    def fits(got: Sequence[int], want: Sequence[int | None]) -> bool:
        return len(got) == len(want) and all(d is None or d == g for d, g in zip(want, got))
    batch = len(shape) == len(dims) and tuple(dims[:1]) == (1,) and shape[0] > 1 and fits(shape[1:], dims[1:])
    if not (batch or (len(shape) == len(dims) + 1 and fits(shape[1:], dims))):
        return ""
    split = "list(x[:, None])" if batch else "list(x)"
    loader = " (a torch DataLoader: batch_size=1)" if batch else ""
    return f" ({shape[0]} samples stacked in one array? Each array is one sample: pass a list of them{loader}, e.g. {split})"


def check_sample(raw: Any, inputs: Sequence[InputSpec], index: int | str, *, exact_dtype: bool = False) -> Sample:
    """Turn one raw sample into ``{name: array}`` and check it against the model inputs.

    ``index``: how errors name the sample (its number, or its file); ``exact_dtype``: refuse
    another float dtype instead of converting it (samples read from files).
    """
    names = [i.name for i in inputs]
    if isinstance(raw, Mapping):
        sample = dict(raw)
    elif isinstance(raw, tuple | list) and (len(inputs) > 1 or all(hasattr(a, "shape") for a in raw)):
        # arrays in model-input order; for one input too: a torch DataLoader yields [x] or [x, label]
        if len(raw) != len(inputs):
            labels = " (a DataLoader's (input, label) pairs? Pass the inputs only, e.g. (x for x, _ in loader))" \
                if len(inputs) == 1 else ""
            raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                               reason=f"{len(raw)} arrays given, the model has {len(inputs)} input(s) "
                                      f"({', '.join(names)}){labels}")
        sample = dict(zip(names, raw))
    elif len(inputs) == 1:
        sample = {names[0]: raw}
    else:
        raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                           reason=f"the model has inputs {', '.join(names)}; give a dict per sample")
    unknown = sorted(set(sample) - set(names))
    missing = [n for n in names if n not in sample]
    if unknown or missing:
        raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                           reason=f"missing inputs {missing}, unknown inputs {unknown}; the model's inputs are {names}")
    out: Sample = {}
    for spec in inputs:
        arr = _as_array(sample[spec.name], spec.name, index)
        if arr.dtype != spec.dtype:
            floats = np.issubdtype(arr.dtype, np.floating) and np.issubdtype(spec.dtype, np.floating)
            if exact_dtype or not floats:
                raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                                   reason=f"input {spec.name!r} has dtype {arr.dtype}, the model wants {spec.dtype}")
            arr = arr.astype(spec.dtype)
        if arr.ndim != len(spec.dims) or any(d is not None and d != a for d, a in zip(spec.dims, arr.shape)):
            want = "x".join("?" if d is None else str(d) for d in spec.dims)
            raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                               reason=f"input {spec.name!r} has shape {'x'.join(map(str, arr.shape))}, the model wants "
                                      f"{want}{_stacked_note(arr.shape, spec.dims)}")
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
            raise NpuflowError("NPF_QUANT_CALIB_NONFINITE", sample=index, input=spec.name)
        out[spec.name] = arr
    return out


def _as_array(value: Any, name: str, index: int | str) -> np.ndarray:
    """One input of a sample as a numpy array; a torch tensor is detached and moved to the CPU
    first (``np.asarray`` refuses one that requires grad), found by its methods, so torch is
    never imported.  Nested lists of unequal lengths are a coded error, not numpy's ValueError."""
    if callable(getattr(value, "detach", None)) and callable(getattr(value, "cpu", None)):
        value = value.detach().cpu()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=index,
                           reason=f"input {name!r} is a {type(value).__name__} that is not one array ({exc})") from None


class _Rewound:
    """A ``get_next``/``rewind`` reader as a re-iterable: each pass rewinds it first."""

    def __init__(self, reader: Any) -> None:
        self._reader = reader

    def __iter__(self) -> Iterator[Any]:
        self._reader.rewind()
        return iter(self._reader.get_next, None)


def _read_through(data: Any) -> Any:
    """``data``, or for an object with ONNX Runtime's ``CalibrationDataReader`` protocol
    (``get_next()`` returns a sample dict, then ``None``; ``vai_q_onnx`` takes the same) its
    samples: re-iterable where it has ``rewind()``, else once, as a generator.

    Why: a reader written from ONNX Runtime's documentation, with ``get_next`` only and no
    ``__iter__`` (ONNX Runtime's own base class adds one), was refused as "cannot read
    calibration data Reader"."""
    if isinstance(data, Iterable | str | os.PathLike) or not callable(getattr(data, "get_next", None)):
        return data
    if callable(getattr(data, "rewind", None)):
        return _Rewound(data)
    return iter(data.get_next, None)


class _Reader:
    """A re-iterable wrapper around a function producing raw samples, with an optional length
    and, for files, the name of each sample (what error messages show)."""

    def __init__(self, make: Any, length: int | None, names: Sequence[str] | None = None) -> None:
        self._make = make
        self.length = length
        self._names = names
        #: samples come from files (their dtype must be the model's).
        self.files = names is not None

    def __call__(self) -> Iterator[Any]:
        return iter(self._make())

    def label(self, index: int) -> str | int:
        return f"{index} ({self._names[index]})" if self._names is not None else index


def _open(data: Any, inputs: list[InputSpec], shapes: dict, dtype: np.dtype) -> _Reader:
    if isinstance(data, str | os.PathLike):
        return _open_folder(Path(data), inputs, shapes, dtype)
    if isinstance(data, np.ndarray | Mapping):
        return _Reader(lambda: [data], 1)
    if isinstance(data, Sequence):
        return _Reader(lambda: data, len(data))
    if isinstance(data, Iterable):
        return _Reader(lambda: data, None)
    raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=type(data).__name__,
                       reason="expected a folder path, an array, a dict or an iterable of them")


#: Files a calibration folder may hold by mistake: images (only ``npuflow build`` with
#: ``preprocess_on`` decodes and resizes them), audio files (a keyword or VAD model's clips: their
#: header is no sample, and the model wants their samples as float arrays) and ``.npz`` archives.  Read as raw
#: ``numpy.tofile`` bytes they were refused as "raw file without a shape", or, with
#: ``calib_shapes`` set and a matching byte count, read as garbage samples.
_NOT_RAW_SUFFIXES = {
    ".png": "image", ".jpg": "image", ".jpeg": "image", ".bmp": "image", ".gif": "image",
    ".tif": "image", ".tiff": "image", ".webp": "image", ".npz": "npz",
    ".wav": "audio", ".flac": "audio", ".mp3": "audio", ".ogg": "audio", ".opus": "audio", ".m4a": "audio",
}


#: why a file of each kind is no raw sample, and what to do instead
_NOT_RAW_REASONS = {
    "image": "an image: calibration reads samples already in the model's input format (one .npy per sample, or raw "
             "numpy.tofile files with calib_shapes); npuflow build with preprocess_on: True reads images",
    "audio": "an audio file: calibration reads samples already in the model's input format; decode each clip (the "
             "wave module, soundfile.read) into the array the model takes, scaled as in training, and save one .npy "
             "per sample",
    "npz": "a .npz archive among other files: a folder holds either one .npz per sample (numpy.savez with every "
           "input by name) or one .npy per sample, one sub-folder per input for a model with several",
}


def not_raw_reason(path: Path) -> str | None:
    """Why ``path``, a calibration file that is no ``.npy``, is no raw ``numpy.tofile`` sample either
    (an image, an audio clip, a stray ``.npz``), or None.  ``quantize --calib`` and ``build``'s
    ``cal_data_dir`` both ask it: ``build`` read a folder of .wav clips as raw float32 and said
    "has 8044 bytes; needs 16000 (float32)" with a numpy.tofile hint (round 23b)."""
    return _NOT_RAW_REASONS.get(_NOT_RAW_SUFFIXES.get(path.suffix.lower(), ""))


def _npz_folder(files: list[Path]) -> _Reader:
    """One sample per ``.npz`` archive, its arrays named by input (``numpy.savez(f, input_ids=...,
    attention_mask=...)``, what ``npuflow run -i`` and ``compare --data`` read): the natural way to
    keep a multi-input sample together.  Before 2026-12-05 such a folder was refused."""

    def read(path: Path) -> Sample:
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError) as exc:
            raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path),
                               reason=f"a .npz archive numpy cannot read: {exc}") from None

    return _Reader(lambda: (read(p) for p in files), len(files), [str(p) for p in files])


def _open_folder(root: Path, inputs: list[InputSpec], shapes: dict, dtype: np.dtype) -> _Reader:
    if root.is_file() and root.suffix.lower() in (".npy", ".npz"):
        return _stacked_file(root, inputs)
    if root.is_file() and root.suffix.lower() == ".txt":
        return _list_file(root, inputs)
    if not root.is_dir():
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(root), reason=(
            "not a folder" if not root.exists() else
            "a file npuflow does not read as calibration data (a folder, a .npy/.npz of stacked samples or a .txt "
            "list of .npy files)"))
    names = [i.name for i in inputs]
    subdirs = {n: root / n for n in names if (root / n).is_dir()}
    archives = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not subdirs and archives and all(p.suffix.lower() == ".npz" for p in archives):
        return _npz_folder(archives)
    if len(inputs) > 1 and len(subdirs) != len(inputs):
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(root),
                           reason=f"a multi-input model needs one sub-folder per input ({', '.join(names)})")
    folders = subdirs if len(inputs) > 1 or subdirs else {names[0]: root}
    listing = {n: sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")) for n, d in folders.items()}
    counts = {len(v) for v in listing.values()}
    if len(counts) != 1:
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(root),
                           reason=f"the input folders hold different numbers of files: {sorted(counts)}")

    def read(name: str, path: Path) -> np.ndarray:
        try:
            if path.suffix == ".npy":
                return np.load(path, allow_pickle=False)
            if (reason := not_raw_reason(path)) is not None:
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=reason)
            if name not in shapes:
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path),
                                   reason=f"raw file without a shape: set calib_shapes: {{{name}: [dims]}} in the config")
            arr = np.fromfile(path, dtype=dtype)
            want = int(np.prod(shapes[name]))
            if arr.size != want:
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path),
                                   reason=f"{arr.size} {dtype} values, calib_shapes[{name!r}] needs {want}")
            return arr.reshape(shapes[name])
        except (OSError, ValueError) as exc:
            raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=str(exc)) from None

    n_files = len(next(iter(listing.values())))

    def samples() -> Iterator[Sample]:
        for i in range(n_files):
            yield {name: read(name, files[i]) for name, files in listing.items()}

    names = [" + ".join(str(files[i]) for files in listing.values()) for i in range(n_files)]
    return _Reader(samples, n_files, names)


def _stacked_file(path: Path, inputs: list[InputSpec]) -> _Reader:
    """Samples stacked along a leading axis in one ``.npy`` (single-input model) or one ``.npz``
    (each input by name, as ``numpy.savez(f, x=batch)``): what a user with the data already in
    memory saves in one call.  An array of the input's rank is cut along its first axis into
    pieces of the input's batch size (1 where the batch is dynamic); one of rank + 1 gives a
    sample per leading index.  Memory-mapped (``.npy``), so the set is read a sample at a time."""
    try:
        if path.suffix.lower() == ".npy":
            if len(inputs) != 1:
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=(
                    f"one .npy for a model with {len(inputs)} inputs: save a .npz with every input by name"))
            arrays = {inputs[0].name: np.load(path, mmap_mode="r", allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as exc:
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=f"numpy cannot read it: {exc}") from None
    missing = [i.name for i in inputs if i.name not in arrays]
    if missing:
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path),
                           reason=f"no array for input(s) {', '.join(missing)} (it holds {', '.join(arrays) or 'none'})")
    pieces: dict[str, tuple[np.ndarray, int, bool]] = {}
    for spec in inputs:
        a = arrays[spec.name]
        if a.ndim == len(spec.dims) + 1:
            pieces[spec.name] = (a, 1, True)
        elif a.ndim == len(spec.dims) and a.ndim > 0:
            step = spec.dims[0] or 1
            if a.shape[0] % step:
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=(
                    f"{spec.name}: {a.shape[0]} rows are not a whole number of batches of {step}"))
            pieces[spec.name] = (a, step, False)
        else:
            raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path), reason=(
                f"{spec.name}: an array of rank {a.ndim} for an input of rank {len(spec.dims)} (stack samples along "
                "a new first axis, or along the batch axis)"))
    counts = {n: a.shape[0] // step for n, (a, step, _) in pieces.items()}
    if len(set(counts.values())) != 1:
        raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(path),
                           reason=f"the inputs hold different numbers of samples: {counts}")
    n = next(iter(counts.values()))

    def sample(i: int) -> Sample:
        return {name: np.array(a[i] if new_axis else a[i * step:(i + 1) * step])
                for name, (a, step, new_axis) in pieces.items()}

    return _Reader(lambda: (sample(i) for i in range(n)), n, [f"{path}[{i}]" for i in range(n)])


def _list_file(path: Path, inputs: list[InputSpec]) -> _Reader:
    """rknn-toolkit2's ``dataset.txt``: one sample a line, its ``.npy`` files in model-input order
    separated by spaces, relative to the list's folder; blank lines and ``#`` comments skipped.
    Images (which rknn decodes itself) are refused as in a folder: quantize reads samples already in
    the model's input format."""
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for k, files in enumerate(lines, 1):
        if len(files) != len(inputs):
            raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=f"{path}:{k}", reason=(
                f"{len(files)} file(s) on the line, the model has {len(inputs)} input(s) "
                f"({', '.join(i.name for i in inputs)})"))
        for f in files:
            if not f.lower().endswith(".npy"):
                raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=f"{path}:{k}", reason=(
                    f"{f}: the list names .npy files only (quantize reads samples already in the model's input "
                    "format; npuflow build with preprocess_on: True reads images)"))

    def read(f: str) -> np.ndarray:
        p = Path(f) if Path(f).is_absolute() else path.parent / f
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise NpuflowError("NPF_QUANT_CALIB_SOURCE", source=str(p), reason=str(exc)) from None

    return _Reader(lambda: ({i.name: read(f) for i, f in zip(inputs, files)} for files in lines), len(lines),
                   [" + ".join(files) for files in lines])
