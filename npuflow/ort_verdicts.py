"""The disk cache of ONNX Runtime kernel verdicts: what a probe or a check of this process' kernels
found, kept under a key of what decides it so a later process opens none of their sessions (each
stays in the process' peak memory).

The probes' verdicts (:func:`persistent`, ``ort_kernels``' process-wide questions) live in
``$NPUFLOW_CACHE/ort_kernels/<cache_key>.json`` (``~/.cache/npuflow`` by default); the key is ONNX
Runtime's version and library file, the CPU's flags, npuflow's version and the source of the probes
(``ort_kernels``) and of ``numerics``.  The checks of one operation's kernel with its scales
(:func:`persistent_check`, :func:`keyed_verdict`) keep theirs in a file per check and source
version.  ``NPUFLOW_ENABLE_CACHE=0`` probes in every process.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from . import numerics as nm
from .outputs import CACHE_ENV, cache_enabled, cache_root  # noqa: F401  (CACHE_ENV: the switch, named here too)

log = logging.getLogger(__name__)

#: What the probes' verdicts are computed by, besides ``numerics``: their module's source is in :func:`cache_key`
PROBES = Path(__file__).with_name("ort_kernels.py")

#: A probe's verdict: a weight form name, a yes/no, or ``None`` (no exact form).
Verdict = str | bool | None


def _cpu_flags() -> str:
    """The CPU's feature flags (Linux' ``/proc/cpuinfo``), or the processor's name elsewhere:
    MLAS picks its kernels by them (VNNI or not)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return platform.processor()


@functools.cache
def cache_key() -> str:
    """What the probes' verdicts depend on, hashed: ONNX Runtime's version and its native
    library's size and modification time (another build of one version may pick other kernels),
    the machine and CPU flags, npuflow's version, and the source of this module and of
    ``numerics`` (what the probes compare with)."""
    from . import __version__

    library = Path(ort.capi._pybind_state.__file__)
    natives = sorted(library.parent.glob("onnxruntime_pybind11_state*"))
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in natives]
    h = hashlib.sha256(json.dumps([ort.__version__, stats, platform.machine(), _cpu_flags(), __version__]).encode())
    for source in (PROBES, Path(nm.__file__)):
        h.update(source.read_bytes())
    return h.hexdigest()[:32]


def cache_file(family: str | None = None) -> Path:
    """This process' verdict file: ``$NPUFLOW_CACHE/ort_kernels/<cache_key>.json`` for the process
    probes, ``<cache_key>.<family>.json`` for a check's (``module.name@source``): a load keeps only
    the verdicts its model asks (issue 19: one file of all held 2,300, 0.55 MiB parsed), and
    checkouts of other sources sharing a cache keep their own."""
    return cache_root("ort_kernels") / (f"{cache_key()}.json" if family is None else f"{cache_key()}.{family}.json")


KEEP_VERSIONS = 8  # versions (sources) of a check whose verdict files are kept (:func:`_store`)


def _file_of(entry: str) -> Path:
    """The file of a stored entry: a check's (``module.name@source:key``) is its version's."""
    return cache_file(entry.split(":", 1)[0] if "@" in entry else None)


#: cache file -> (inode, size, mtime when read; its verdicts): read again only once it changed (a
#: store replaces the file, here or in another process).  YOLOv8n cpu-int8's load asks 123 checks.
_READ: dict[Path, tuple[tuple[int, int, int], dict]] = {}


def _stored(path: Path | None = None) -> dict:
    """The verdicts in ``path`` (:func:`cache_file` by default; empty where none can be read); not to
    be changed by the caller (the same dict is returned until the file changes)."""
    path = cache_file() if path is None else path
    try:
        st = path.stat()
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        known = _READ.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    stored = stored if isinstance(stored, dict) else {}
    _READ[path] = (stamp, stored)
    return stored


def _store(name: str, verdict: Verdict) -> None:
    """Add ``name``'s verdict to its file (:func:`_file_of`), written whole and renamed (no reader
    sees half a file; an unwritable directory keeps none).  A check's first verdict at a new source
    removes its least recently written versions' files beyond :data:`KEEP_VERSIONS`."""
    path = _file_of(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        verdicts = {**_stored(path), name: verdict}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdicts-")
        with os.fdopen(fd, "w") as f:
            json.dump(verdicts, f)
        os.replace(tmp, path)
        if new and "@" in name:
            versions = sorted(path.parent.glob(f"{cache_key()}.{name.split('@', 1)[0]}@*.json"),
                              key=lambda f: f.stat().st_mtime_ns)
            for old in versions[:-KEEP_VERSIONS]:
                old.unlink(missing_ok=True)
    except OSError as exc:
        log.debug("ONNX Runtime kernel verdicts not stored in %s: %s", path, exc)


def _recall(entry: str, run: Callable[[], Verdict]) -> Verdict:
    """``entry``'s verdict from its file, else ``run()`` stored (a check's must be a bool)."""
    stored = _stored(_file_of(entry))
    if entry in stored and ("@" not in entry or isinstance(stored[entry], bool)):
        return stored[entry]
    found = run()
    _store(entry, found)
    return found


def persistent(probe: Callable[[], Verdict]) -> Callable[[], Verdict]:
    """``probe`` run once per process, and once per :func:`cache_key` where the disk cache is on:
    its verdict is read from :func:`cache_file` when there, else probed and stored.  The result
    caches like ``functools.cache`` (``cache_clear``); ``__wrapped__`` is the probe itself."""
    name = probe.__name__

    def verdict() -> Verdict:
        return _recall(name, probe) if cache_enabled() else probe()

    cached = functools.cache(functools.wraps(probe)(verdict))
    cached.__wrapped__ = probe
    return cached


def persistent_check(check: Callable[..., bool]) -> Callable[..., bool]:
    """``check(*args)``, a check of one operation's ONNX Runtime kernel with that operation's
    constants (scales, zero points; ``bytes`` for a table, keyed by its SHA-256), run once per
    arguments in a process and, where the disk cache is on, once per :func:`cache_key`: its
    verdict is kept in its own :func:`cache_file` (``family``: the check's name), under the check's name,
    the SHA-256 of its module's source and the arguments.  A load of a model whose checks were
    made before opens none of their sessions (each stays in the load's peak memory)."""
    @functools.wraps(check)
    def verdict(*args) -> bool:
        if not cache_enabled():
            return check(*args)
        parts = [hashlib.sha256(a).hexdigest() if isinstance(a, bytes) else a for a in args]
        return keyed_verdict(check, hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32], *args)

    cached = functools.lru_cache(maxsize=1024)(verdict)
    cached.__wrapped__ = check
    return cached


def keyed_verdict(check: Callable[..., bool], key: str, *args) -> bool:
    """``check(*args)``, its verdict kept as :func:`persistent_check`'s under ``key``: a digest of
    what decides it, for arguments that cannot be the key themselves (models and their weights)."""
    if not cache_enabled():
        return bool(check(*args))
    source = _source_digest(Path(inspect.getfile(check)))
    return _recall(f"{check.__module__}.{check.__qualname__}@{source}:{key}", lambda: bool(check(*args)))


@functools.cache
def _source_digest(path: Path) -> str:
    """The SHA-256 of the sources of a check's package folder (its module and every ``*.py``
    beside it): a changed check gives other entries, and so does a changed helper it calls there
    (the runtime's checks run their pairs through ``fused_pairs``; keyed by the check's module
    alone, a verdict stored by another checkout with an edited helper was read as this one's)."""
    h = hashlib.sha256()
    for source in sorted(path.parent.glob("*.py")):
        h.update(source.name.encode() + b"\0" + source.read_bytes())
    return h.hexdigest()[:16]
