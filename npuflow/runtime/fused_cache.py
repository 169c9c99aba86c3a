"""Fused runs on disk: a program whose fused graphs this code has built before is not built again.

Why: the build of a program's fused graphs (:func:`.fused.plan`: each op's tables, bounds and
weights computed in numpy, written as ONNX nodes) leaves memory behind that the loaded runtime
never uses -- the pages of numpy's native code its ufunc and cast loops ran (each dtype's loop is
code of its own), the pools of CPython's allocator its objects took -- and that was most of what
npuflow's load held over ONNX Runtime's on the small models (issue 19; ``docs/runtime-measurements.md``,
"Peak memory").  The graphs are a pure function of the program (its ops, tensors and blobs), the
intra-op threads, npuflow's code (:data:`SOURCES`) and what ONNX Runtime computes exactly on this
machine (``ort_verdicts.cache_key``: its build and the CPU's flags, which the probes' verdicts and so
the graphs' forms depend on).  So each program's plan is kept under ``$NPUFLOW_CACHE/fused/``,
named by the hash of those (a program of a ``.npuf`` read by a ``Session``: by the manifest's verified
SHA-256 and the program's place in it, which cover its ops, tensors and blob checksums, so that a
load whose plan is stored parses no op: ``compiler/lazy_ops.py``), as one file: the serialized
graph and the external weights of each run, then a JSON index (which ops are runs, which run as
kernels and why), then the index's length.
A later load opens each run's ONNX Runtime session from the stored graph and weights, one run at a
time, as the build would have; the ops' own emitters are still what ``FusedRun.graph`` and dump
mode rebuild from.

Only plans in which every op was written or declined without a warning are stored: a refused
graph or an unknown manifest form warns again at every load.  ``NPUFLOW_ENABLE_CACHE=0`` builds at
every load and writes nothing; an unreadable or damaged file, or a directory npuflow cannot write,
falls back to the build.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from .. import ort_verdicts
from ..compiler.lazy_ops import LazyOps
from ..compiler.manifest_verdicts import source_digest
from ..outputs import cache_enabled, cache_root

#: npuflow's sources a fused graph depends on (relative to the package): the runtime's emitters and
#: the modules they import.  Any change of one gives other file names.
SOURCES = ("runtime", "numerics.py", "numerics_softmax.py", "operators.py", "ort_kernels.py", "ort_session.py",
           "custom_ops.py", "errors.py", "outputs.py")

#: The directory is kept under this many bytes: storing a plan removes the least recently used
#: others beyond it (a read touches its file).  A plan's file is about its model's weights as the
#: fused graphs hold them (PP-OCR cls: 1 MB, PP-OCRv4 rec: 11 MB).
MAX_BYTES = 512 << 20

#: Each stored section (a graph, an array) starts at a multiple of this many bytes.
_ALIGN = 64

_TAIL = struct.Struct("<Q")


def key(sg: dict, tensors: dict, blob: Callable[[str], np.ndarray], threads: int) -> str | None:
    """The file name of ``sg``'s plan, or ``None`` where the cache is off."""
    if not cache_enabled():
        return None
    h = hashlib.sha256(json.dumps([source_digest(SOURCES), ort_verdicts.cache_key(), threads]).encode())
    if isinstance(sg["ops"], LazyOps):
        # a program of a verified .npuf whose ops were not parsed: named by the manifest's SHA-256
        # (which covers every op, tensor and blob checksum) and the program's place in it, so that a
        # load whose plan is stored parses no op (``compiler/lazy_ops.py``)
        h.update(b"manifest\0" + sg["ops"].identity.encode())
        return h.hexdigest()[:40]
    used = sorted({t for op in sg["ops"] for t in (*op["inputs"], *op["outputs"])} | set(sg["outputs"]))
    # a JSON text per op and tensor (each a whole value: the texts in turn are unambiguous), not one
    # of them all: that is written as a small string per key and value first, whose pages CPython's
    # allocator keeps after they are freed (issue 19, a load's peak memory)
    h.update(json.dumps(sg["outputs"]).encode())
    for item in (*sg["ops"], *([t, tensors[t]] for t in used)):
        h.update(json.dumps(item, sort_keys=True, default=_plain).encode())
    for name in sorted({b for op in sg["ops"] for b in op["blobs"].values()}):
        value = blob(name)
        if isinstance(value, (bytes, bytearray)):
            h.update(b"bytes\0" + bytes(value))
        else:
            value = np.ascontiguousarray(value)
            h.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
            h.update(value.data)
    return h.hexdigest()[:40]


def _plain(value: object) -> object:
    """JSON of a numpy value that a merged program's ops may hold."""
    return np.asarray(value).tolist()


def path(name: str) -> Path:
    return cache_root("fused") / f"{name}.bin"


class Writer:
    """A plan's file while it is built: each run's graph and weights appended as its session opens
    (so no run's weights outlive its session here), the index and its length at :meth:`finish`."""

    def __init__(self, name: str) -> None:
        self._final = path(name)
        self._final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._final.parent, suffix=".tmp")
        self._tmp = Path(tmp)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        self.runs: list[dict] = []

    def _section(self, data: memoryview | bytes) -> list[int]:
        at = self._file.tell()
        pad = -at % _ALIGN
        self._file.write(b"\0" * pad)
        self._file.write(data)
        return [at + pad, len(data)]

    def add(self, model: onnx.ModelProto, arrays: dict[str, np.ndarray], small: bool) -> None:
        """Store one run's graph (``model``), external weights and memory-pattern flag."""
        graph = self._section(model.SerializeToString())
        stored = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            stored[name] = [a.dtype.str, list(a.shape), *self._section(a.data.cast("B"))]
        self.runs.append({"model": graph, "arrays": stored, "small": small})

    def finish(self, items: list, reasons: dict[int, str]) -> None:
        """Write the index (``items``: op index, or ``[start, stop, inputs, outputs]`` of run k in
        order of :meth:`add`) and move the file to its name."""
        index = json.dumps({"items": items, "reasons": {str(k): v for k, v in reasons.items()},
                            "runs": self.runs}).encode()
        self._file.write(index)
        self._file.write(_TAIL.pack(len(index)))
        self._file.close()
        os.replace(self._tmp, self._final)
        _trim(self._final.parent, keep=self._final)

    def finish_plan(self, items: list, reasons: dict[int, str]) -> None:
        """:meth:`finish` with a plan's items (an op index or a fused run, whose graph was stored as
        its session opened), or :meth:`abandon` where the disk refuses."""
        try:
            self.finish([i if isinstance(i, int) else [i.span.start, i.span.stop, i.inputs, i.outputs] for i in items],
                        reasons)
        except OSError:
            self.abandon()

    def abandon(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)


class Reader:
    """A stored plan: its index, and each run's graph and weights read when its session opens."""

    def __init__(self, name: str) -> None:
        self._file: BinaryIO = open(path(name), "rb")
        try:
            self._file.seek(-_TAIL.size, os.SEEK_END)
            (n,) = _TAIL.unpack(self._file.read(_TAIL.size))
            self._file.seek(-_TAIL.size - n, os.SEEK_END)
            index = json.loads(self._file.read(n))
        except (OSError, ValueError, struct.error):
            self._file.close()
            raise
        try:
            os.utime(self._file.fileno())  # recently used (:data:`MAX_BYTES`)
        except OSError:  # a read-only cache is still read
            pass
        self.items: list = index["items"]
        self.reasons = {int(k): v for k, v in index["reasons"].items()}
        self._runs: list[dict] = index["runs"]

    def run(self, k: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
        """Run ``k``'s graph, external weights (fresh arrays) and memory-pattern flag."""
        spec = self._runs[k]
        try:
            model = onnx.load_from_string(bytes(self._read(*spec["model"])))
        except DecodeError as exc:
            raise ValueError(f"damaged fused-run cache file: {exc}") from None
        arrays = {name: np.frombuffer(self._read(at, n), np.dtype(dtype)).reshape(shape)
                  for name, (dtype, shape, at, n) in spec["arrays"].items()}
        return model, arrays, bool(spec["small"])

    def _read(self, at: int, n: int) -> bytearray:
        data = bytearray(n)
        self._file.seek(at)
        if self._file.readinto(data) != n:
            raise ValueError("truncated fused-run cache file")
        return data

    def close(self) -> None:
        self._file.close()


def _trim(folder: Path, keep: Path) -> None:
    """Remove the least recently used plans beyond :data:`MAX_BYTES` (never ``keep``, just stored)."""
    files = []
    for f in folder.glob("*.bin"):
        try:
            st = f.stat()
        except OSError:
            continue
        files.append((st.st_mtime_ns, st.st_size, f))
    total = sum(size for _, size, _ in files)
    for _, size, f in sorted(files):
        if total <= MAX_BYTES:
            break
        if f != keep:
            f.unlink(missing_ok=True)
            total -= size


def read_run(name: str, k: int) -> tuple[onnx.ModelProto, dict[str, np.ndarray], bool]:
    """Run ``k`` of the stored plan ``name`` (:meth:`Reader.run`), read after its load: a caller
    that needs a loaded run's graph (``runtime/joined.py``, a deferred run's session) without
    building it.  A damaged file is removed (the caller builds the run; the next load, the plan)."""
    reader = open_reader(name)
    if reader is None:
        raise OSError(f"no stored fused plan {name}")
    try:
        return reader.run(k)
    except (ValueError, KeyError, IndexError):
        path(name).unlink(missing_ok=True)
        raise
    finally:
        reader.close()


def open_reader(name: str | None) -> Reader | None:
    """The stored plan of that name, or ``None`` (none stored, or a file that cannot be read)."""
    if name is None:
        return None
    try:
        return Reader(name)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def open_writer(name: str | None) -> Writer | None:
    """A writer for that plan, or ``None`` (cache off, or a directory npuflow cannot write)."""
    if name is None:
        return None
    try:
        return Writer(name)
    except OSError:
        return None
