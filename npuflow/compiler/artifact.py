"""The ``.npuf`` file: one self-describing, integrity-checked file per compiled model.

Layout (little endian)::

    0   header (96 bytes)
          magic "NPUFLOW\\0" | u16 major | u16 minor | u32 header size
          u64 manifest offset | u64 manifest length | u64 data offset | u64 data length
          u64 file length | sha256 of the manifest (32 bytes) | 8 reserved zero bytes
    96  manifest: UTF-8 JSON (sorted keys): inputs/outputs, target, subgraphs, integer programs,
        memory plans, build configuration, and a table of blobs {offset, nbytes, dtype, shape, sha256}
    ..  data: raw little-endian arrays (packed integer weights, tables, the epilogues' long
        per-channel arrays from format 2.0 on, embedded ONNX of CPU subgraphs), each starting on
        a 64-byte boundary
    end sha256 of everything before it (32 bytes)

Reading checks, in order: magic, format version, recorded length against the real length
(truncation), the whole-file checksum, the manifest checksum, the reserved bytes, the manifest
schema (:mod:`.manifest_schema`: types, ranges, references, the memory plan, the target's
fingerprint), then every blob's own checksum; any failure is a coded :class:`NpuflowError`
(``NPF_COMPILE_CORRUPT`` naming the field) and nothing is executed.  Checksums prove who sealed a
file, the schema that its content is something this reader can execute: a manifest from a buggy
writer, another version or a crafted file fails there, before ``Session``, ``run`` or ``info``
build anything from it.  Loading runs no code from the file (JSON and raw arrays only, no
pickle).  Blobs are ``numpy.frombuffer`` views of a read-only memory map: weights are not copied.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
import threading
from pathlib import Path

import numpy as np

from ..errors import NpuflowError
from ..model import NPUF_MAGIC as MAGIC, write_atomic
from . import lazy_ops, manifest_arrays, manifest_check, manifest_schema, manifest_verdicts

FORMAT_MAJOR, FORMAT_MINOR = manifest_schema.SCHEMA_VERSION
_HEADER = struct.Struct("<8sHHIQQQQQ32s8s")
HEADER_SIZE = _HEADER.size  # 96
TRAILER_SIZE = 32
ALIGN = 64


#: A program's ops key in the manifest's text: in valid JSON a ``"`` after ``{`` or ``,`` outside a
#: string opens a key, and inside one it would be escaped.
_OPS_KEY = re.compile(r'(?<=[{,])"ops":\[')


def _no_constant(name: str) -> None:
    """JSON's NaN/Infinity extensions: never written (``allow_nan=False``), so never read."""
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _pad(n: int) -> int:
    return (-n) % ALIGN


def _dumps(manifest: dict) -> bytes:
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False, default=_as_list).encode()


def _as_list(value: object) -> list:
    """JSON of a loaded program's ops that nothing read yet (:class:`.lazy_ops.LazyOps`)."""
    if isinstance(value, lazy_ops.LazyOps):
        return value.ops
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def serialize(manifest: dict, blobs: dict[str, np.ndarray | bytes]) -> bytes:
    """The complete file as bytes (deterministic: same manifest and blobs, same bytes); the
    epilogues' long per-channel arrays go to blobs of their own (:mod:`.manifest_arrays`)."""
    manifest, arrays = manifest_arrays.to_blobs(manifest)
    blobs = {**blobs, **arrays}
    table = {}
    chunks = []
    offset = 0
    for name in sorted(blobs):
        value = blobs[name]
        if isinstance(value, (bytes, bytearray)):
            raw, dtype, shape = bytes(value), "uint8", [len(value)]
        else:
            arr = np.ascontiguousarray(value)
            raw, dtype, shape = arr.astype(arr.dtype.newbyteorder("<")).tobytes(), arr.dtype.name, list(arr.shape)
        table[name] = {"offset": offset, "nbytes": len(raw), "dtype": dtype, "shape": shape,
                       "sha256": hashlib.sha256(raw).hexdigest()}
        chunks.append(raw + b"\x00" * _pad(len(raw)))
        offset += len(raw) + _pad(len(raw))
    data = b"".join(chunks)
    body = _dumps({**manifest, "blobs": table})
    manifest_off = HEADER_SIZE
    data_off = manifest_off + len(body) + _pad(manifest_off + len(body))
    file_len = data_off + len(data) + TRAILER_SIZE
    major, minor = manifest_schema.format_version(manifest)
    header = _HEADER.pack(MAGIC, major, minor, HEADER_SIZE, manifest_off, len(body),
                          data_off, len(data), file_len, hashlib.sha256(body).digest(), b"\x00" * 8)
    content = header + body + b"\x00" * (data_off - manifest_off - len(body)) + data
    return content + hashlib.sha256(content).digest()


def write(path: str | os.PathLike, manifest: dict, blobs: dict[str, np.ndarray | bytes]) -> Path:
    """Write atomically: a failed write never leaves a file that looks complete."""
    return write_atomic(path, serialize(manifest, blobs))


def share_strings(value: object) -> None:
    """Make the equal strings of a parsed manifest one object each, in place.

    Why: JSON's parser shares a dict's keys but makes a new ``str`` for every string value, and a
    manifest names each tensor many times (an op's output, the next ops' inputs, memory plans,
    blob names), all of it kept for a runtime ``Session``'s life: PP-OCR cls on B4096 held
    139 KB of strings where 46 KB are distinct, PP-OCRv4 rec on cpu-int8 357 KB for 144 KB
    (issue 19, peak memory).  Only ``str`` values are shared: they are immutable, so no reader
    can tell."""
    seen: dict[str, str] = {}
    stack = [value]
    while stack:
        node = stack.pop()
        items = node.items() if type(node) is dict else enumerate(node)
        for key, item in items:
            if type(key) is str:
                seen.setdefault(key, key)
            if type(item) is str:
                node[key] = seen.setdefault(item, item)
            elif type(item) is dict or type(item) is list:
                stack.append(item)


class NpufFile:
    """A verified ``.npuf``: ``manifest`` (dict) and ``blob(name)`` (read-only array views).

    ``lazy_ops``: where this code validated the manifest before (:mod:`.manifest_verdicts`), its
    integer programs' ops are parsed only when read (:mod:`.lazy_ops`; a runtime ``Session``)."""

    def __init__(self, path: str | os.PathLike, lazy_ops: bool = False) -> None:
        self.path = Path(path)
        self._lazy = lazy_ops
        self._whole: dict | None = None
        self._whole_lock = threading.Lock()
        #: where each ``"ops":[`` key's list starts in the manifest's text, and how many lists were hidden
        self._ops_at: list[int] | None = None
        self._hidden_lists = 0
        if not self.path.is_file():
            raise NpuflowError("NPF_COMPILE_FILE_NOT_FOUND", path=str(self.path))
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise NpuflowError("NPF_COMPILE_NOT_NPUF", path=str(self.path), reason="the file is empty")
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.manifest = self._verify(size)
        except NpuflowError:
            self._map.close()
            raise
        self.release_pages()

    @classmethod
    def in_memory(cls, content: bytes, label: str) -> "NpufFile":
        """``content`` (what :func:`serialize` made) verified exactly as a reader verifies a file:
        ``compile`` checks every program it makes this way before anything is written or run."""
        self = cls.__new__(cls)
        self.path = Path(label)
        self._lazy = False
        self._map = content
        self.manifest = self._verify(len(content))
        return self

    def release_pages(self) -> None:
        """Drop the file's pages from this process' resident set (``MADV_DONTNEED``; where the
        system has no ``madvise``, nothing).  The checksums read every byte, and a loaded runtime
        holds its weights in ONNX Runtime: the mapped copies would stay resident beside them
        (PP-OCRv4 rec: 5.4 MB).  The mapping is read-only and backed by the file, so a blob read
        later reads the same bytes again."""
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self._map.madvise(mmap.MADV_DONTNEED)

    def _corrupt(self, reason: str) -> NpuflowError:
        return NpuflowError("NPF_COMPILE_CORRUPT", path=str(self.path), reason=reason)

    def _verify(self, size: int) -> dict:
        m = self._map
        head = m[:min(size, len(MAGIC))]
        if head != MAGIC[:len(head)]:
            reason = "no NPUFLOW signature"
            if self.path.suffix.lower() == ".onnx":  # Session("quantized_model.onnx"), as onnxruntime takes it
                reason += ("; it is an ONNX model, compiled first: npuflow.Session(npuflow.compile(path, target)), "
                           "or npuflow.ort.InferenceSession(path, target=...) compiles a quantized one at start")
            raise NpuflowError("NPF_COMPILE_NOT_NPUF", path=str(self.path), reason=reason)
        if size < HEADER_SIZE + TRAILER_SIZE:
            raise self._corrupt(f"only {size} bytes, shorter than the header")
        (_, major, minor, hsize, moff, mlen, doff, dlen, flen, msha, reserved) = _HEADER.unpack_from(m, 0)
        if major not in manifest_schema.READABLE:
            raise NpuflowError("NPF_COMPILE_VERSION", path=str(self.path), found=f"{major}.{minor}",
                               supported=" or ".join(f"{v}.x" for v in manifest_schema.READABLE))
        if flen != size:
            raise self._corrupt(f"the header records {flen} bytes but the file has {size}")
        digest = hashlib.sha256(memoryview(m)[:size - TRAILER_SIZE]).digest()
        if digest != m[size - TRAILER_SIZE:size]:
            raise self._corrupt("file checksum mismatch")
        if hsize != HEADER_SIZE or moff != HEADER_SIZE or moff + mlen > doff or doff + dlen + TRAILER_SIZE != size:
            raise self._corrupt("inconsistent section table")
        body = m[moff:moff + mlen]
        if hashlib.sha256(body).digest() != msha:
            raise self._corrupt("manifest checksum mismatch")
        newer = minor > manifest_schema.READABLE[major]  # a newer minor version may use the reserved bytes and add fields
        if reserved != b"\x00" * len(reserved) and not newer:
            raise self._corrupt("the reserved header bytes are not zero")
        self._data_off, self._data_len = doff, dlen
        self._manifest_span = (moff, mlen)
        manifest = self._without_ops(body, newer, msha) if self._lazy else None
        if manifest is None:
            try:
                manifest = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise self._corrupt(f"manifest is not JSON: {exc}") from None
            share_strings(manifest)
            self._validate(manifest, newer, msha)
            if self._lazy and isinstance(manifest, dict) and "packed" not in manifest:
                lazy_ops.install(self._programs(manifest), self._read_ops, msha.hex())
        for name, b in manifest["blobs"].items():
            self._check_blob(name, b)
        return manifest

    def _without_ops(self, body: bytes, newer_minor: bool, manifest_sha256: bytes) -> dict | None:
        """The manifest with each integer program's ops to be parsed when read (:mod:`.lazy_ops`),
        where this code validated it before; else ``None`` (the caller parses and validates it)."""
        try:
            manifest = json.loads(body.decode("utf-8"), parse_constant=_no_constant, object_hook=lazy_ops.hide_op)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return None
        if not (manifest_verdicts.rememberable(manifest)
                and manifest_verdicts.validated_before(manifest_sha256, newer_minor)):
            return None
        if not lazy_ops.install(self._programs(manifest), self._read_ops, manifest_sha256.hex()):
            return None
        self._hidden_lists = sum(isinstance(sg.get("ops"), lazy_ops.LazyOps) and not sg["ops"].parsed
                                 for _, program in self._programs(manifest) for sg in program.get("subgraphs", []))
        share_strings(manifest)
        return manifest

    @staticmethod
    def _programs(manifest: dict) -> list[tuple[tuple, dict]]:
        """Each program of a single model's manifest (its own, its variants') and its path in it."""
        variants = manifest.get("variants")
        variants = variants if type(variants) is list else []
        return [((), manifest), *((("variants", k), v) for k, v in enumerate(variants))]

    def _read_ops(self, k: int, count: int, path: tuple) -> list[dict]:
        """The ``k``-th hidden ops list (``count`` ops, at ``path``) parsed from the manifest's text
        alone: the writer sorts keys, so the ``k``-th ``"ops":[`` key of the text is that list where
        every such key is a program's (checked: as many keys as hidden lists, ``count`` ops);
        else the manifest parsed whole (:mod:`.lazy_ops`)."""
        moff, mlen = self._manifest_span
        text = self._map[moff:moff + mlen].decode("utf-8")
        with self._whole_lock:
            if self._ops_at is None:
                self._ops_at = [m.end() - 1 for m in _OPS_KEY.finditer(text)]
            at = self._ops_at
        ops = None
        if len(at) == self._hidden_lists:
            ops, _ = _DECODER.raw_decode(text, at[k])
            if type(ops) is not list or len(ops) != count or not all(type(op) is dict and "op" in op for op in ops):
                ops = None
        if ops is None:
            node = self._whole_manifest()
            for key in path:
                node = node[key]
            return node
        share_strings(ops)
        manifest_arrays.resolve({"subgraphs": [{"engine": "integer", "ops": ops}]}, self.blob)
        return ops

    def _whole_manifest(self) -> dict:
        """The manifest parsed whole, its epilogue arrays resolved (once; :mod:`.lazy_ops`)."""
        with self._whole_lock:
            if self._whole is None:
                moff, mlen = self._manifest_span
                whole = json.loads(self._map[moff:moff + mlen].decode("utf-8"), parse_constant=_no_constant)
                share_strings(whole)
                manifest_arrays.resolve(whole, self.blob)
                self._whole = whole
            return self._whole

    def _validate(self, manifest: object, newer_minor: bool, manifest_sha256: bytes) -> None:
        """The manifest schema; the embedded ONNX blobs it parses are verified before reading.  A
        manifest of those (verified) bytes that this code passed before is not validated again
        (:mod:`.manifest_verdicts`)."""
        remembered = manifest_verdicts.rememberable(manifest)
        if remembered and manifest_verdicts.validated_before(manifest_sha256, newer_minor):
            return

        def verified_bytes(name: str) -> bytes:
            self._check_blob(name, manifest["blobs"][name])
            return self._bytes(manifest["blobs"][name])

        try:
            manifest_check.validate(manifest, verified_bytes, newer_minor=newer_minor)
        except manifest_schema.SchemaError as exc:
            raise self._corrupt(f"manifest field {exc.field}: {exc.reason}") from None
        except RecursionError:
            raise self._corrupt("the manifest nests too deeply") from None
        if remembered:
            manifest_verdicts.remember(manifest_sha256, newer_minor)

    def _check_blob(self, name: str, b: dict) -> None:
        try:
            off, nbytes, dtype, shape = int(b["offset"]), int(b["nbytes"]), str(b["dtype"]), list(b["shape"])
            ok = (dtype in manifest_schema.BLOB_DTYPES and off >= 0 and off % ALIGN == 0
                  and off + nbytes <= self._data_len
                  and int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize == nbytes)
            start = self._data_off + off
            ok = ok and hashlib.sha256(memoryview(self._map)[start:start + nbytes]).hexdigest() == b["sha256"]
        except (KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(f"blob {name!r} is malformed: {exc}") from None
        if not ok:
            raise self._corrupt(f"blob {name!r} does not match its checksum or size")

    def blob(self, name: str) -> np.ndarray:
        b = self.manifest["blobs"][name]
        dtype = np.dtype(b["dtype"]).newbyteorder("<")
        count = int(np.prod(b["shape"], dtype=np.int64))
        arr = np.frombuffer(self._map, dtype=dtype, count=count, offset=self._data_off + b["offset"])
        return arr.reshape(b["shape"])

    def blob_bytes(self, name: str) -> bytes:
        return self._bytes(self.manifest["blobs"][name])

    def _bytes(self, b: dict) -> bytes:
        start = self._data_off + b["offset"]
        return bytes(self._map[start:start + b["nbytes"]])
