"""The manifest validation's verdicts on disk: a ``.npuf`` whose manifest this code has validated
before is not validated again at its next load.

Why: the validation (:func:`.manifest_check.validate`: pydantic models of every tensor, blob and
subgraph, then the checks across them) leaves memory behind that a loaded runtime never uses --
the pools of CPython's allocator its objects took and the pages of pydantic's and numpy's native
code it ran -- and that was a large part of what npuflow's load held over ONNX Runtime's on the
small models (issue 19; ``docs/runtime-measurements.md``, "Peak memory").  The validation is a pure
function of the manifest's bytes, the ``newer_minor`` flag and npuflow's code, so its verdict is
kept as one empty file per passed manifest under ``$NPUFLOW_CACHE/manifests/``, named by the hash
of the three (the compiled-model cache's and ``ort_kernels``' root; ``NPUFLOW_ENABLE_CACHE=0``
validates at every load and writes nothing).  What the file holds is still checked at every load:
the reader verifies the whole file's and the manifest's SHA-256 before it asks, and every blob's
checksum after it, so a damaged file never reaches a stored verdict.  Only failures were ever
reported by the validation, and only passes are stored.

Only a manifest whose target is a bundled one is remembered: a target given by another name is
looked up where the process runs (``targets.load_target``), which the hash does not cover.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from ..outputs import cache_enabled, cache_root
from ..targets import bundled_fingerprint

#: npuflow's sources the validation's verdict depends on (relative to the package): its code, the
#: bundled targets and the modules they import.  Any change of one gives other verdict names.
SOURCES = ("compiler", "targets", "numerics.py", "operators.py", "model.py", "safe_yaml.py", "errors.py")


@functools.cache
def source_digest(sources: tuple[str, ...]) -> str:
    """The SHA-256 of npuflow's version and ``sources`` (paths relative to the package, each a file
    or a directory of them: their paths and bytes), once per process and tuple."""
    from .. import __version__

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(__version__.encode())
    for name in sources:
        path = root / name
        files = sorted(f for f in path.rglob("*") if f.suffix in (".py", ".yaml", ".json")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def code_digest() -> str:
    """:func:`source_digest` of :data:`SOURCES`: what the validation's verdicts depend on."""
    return source_digest(SOURCES)


def _verdict_file(manifest_sha256: bytes, newer_minor: bool) -> Path:
    key = hashlib.sha256(code_digest().encode() + manifest_sha256 + bytes([newer_minor])).hexdigest()[:40]
    return cache_root("manifests") / key


def rememberable(manifest: object) -> bool:
    """Whether a verdict on ``manifest`` (the parsed JSON) may be stored and read: a single model
    (not a packed file) whose target names a bundled one."""
    if not isinstance(manifest, dict) or "packed" in manifest or not cache_enabled():
        return False
    target = manifest.get("target")
    name = target.get("name") if isinstance(target, dict) else None
    return isinstance(name, str) and bundled_fingerprint(name) is not None


def validated_before(manifest_sha256: bytes, newer_minor: bool) -> bool:
    """Whether this code has validated a manifest of that SHA-256 (and flag) before."""
    try:
        return _verdict_file(manifest_sha256, newer_minor).is_file()
    except OSError:
        return False


def remember(manifest_sha256: bytes, newer_minor: bool) -> None:
    """Store that a manifest of that SHA-256 passed; a cache directory npuflow cannot write keeps
    none (the next load validates again)."""
    path = _verdict_file(manifest_sha256, newer_minor)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except OSError:
        pass
