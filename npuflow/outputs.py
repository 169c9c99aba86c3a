"""Result sets users can trust: plain output names, staged writing, one swap on success.

A stage that writes several files (``build``: six artefacts, ``quantize``: five) writes them into
a hidden staging folder inside the output folder and renames them into place only when all of
them exist (:class:`StagedOutputs`).  A failure or Ctrl-C before that leaves the previous good
result untouched; the renames themselves run with Ctrl-C deferred, so an interrupt never leaves
a set mixing two runs.  Staging folders and temporary files carry the writer's process id, so a
later run removes those a killed run left behind without touching those of a run still going.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .errors import NpuflowError

#: ``NPUFLOW_ENABLE_CACHE=0`` (or false/no/off): nothing read from or written to npuflow's caches
#: (compiled models, fast-finetune results, kernel-probe verdicts); the Vitis AI EP's switch.
CACHE_ENV = "NPUFLOW_ENABLE_CACHE"


def cache_enabled() -> bool:
    """Whether npuflow's on-disk caches are on (:data:`CACHE_ENV`, read at each call)."""
    return os.environ.get(CACHE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_root(kind: str) -> Path:
    """``$NPUFLOW_CACHE/<kind>`` (``~/.cache/npuflow/<kind>`` by default): one root for every cache."""
    return Path(os.environ.get("NPUFLOW_CACHE", Path.home() / ".cache" / "npuflow")) / kind

#: Longest output name accepted: file systems allow 255 bytes, and suffixes are appended.
MAX_NAME_BYTES = 200
#: ``{pid}-{8 characters}``: what this module and ``model.write_atomic`` append to a hidden name;
#: ``{8 characters}`` alone is what ``tempfile`` appended before (a stale leftover of an old version).
_OWNED = re.compile(r"(?:(\d+)-)?[a-z0-9_]{8}")


def plain_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an output file name inside a folder (``None``: it can).

    A name must stay in its folder and be visible: no separator, no leading dot (``..``, hidden
    files), no control characters, not empty and not longer than :data:`MAX_NAME_BYTES`.
    """
    if not name:
        return "it is empty"
    if name.startswith("."):
        return "it starts with a dot (a hidden file, or '..' leaving the output folder)"
    if "/" in name or "\\" in name:
        return "it contains a path separator; use working_dir for the folder"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "it contains control characters"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes"
    return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def owner_gone(token: str) -> bool:
    """Whether the writer that put ``token`` into a hidden name is gone (an old-style token
    without a process id counts as gone: no current version writes one)."""
    m = _OWNED.fullmatch(token)
    return bool(m) and (m.group(1) is None or not pid_alive(int(m.group(1))))


def owner_token() -> str:
    """``{pid}-{random}``: the token a new hidden staging folder or temporary file carries."""
    return f"{os.getpid()}-{os.urandom(4).hex()}"


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run a short block that must not be cut in half by Ctrl-C (SIGINT/SIGTERM arrive after it).

    Only the main thread can change signal handlers; elsewhere the block runs as it is.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    saved = {s: signal.signal(s, lambda num, _frame: received.append(num)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


def ensure_folder(folder: str | os.PathLike) -> Path:
    """``folder``, created if needed; a file in the way or a missing permission is a coded error."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(folder), reason="it, or a folder above it, is a file") from None
    except OSError as exc:
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(folder), reason=exc.strerror or str(exc)) from None
    return folder


class StagedOutputs:
    """One result set of files ``names``: written into ``folder/.{tag}.{pid}-{random}/``, swapped
    in by :meth:`publish`; stale staging folders of ``tag`` and temporaries of ``names`` go first.

    Use it as a context manager (entering it makes the staging folder): leaving the block removes the
    staging folder, published or not.
    """

    def __init__(self, folder: str | os.PathLike, tag: str, names: Sequence[str]) -> None:
        for name in names:
            problem = plain_name_problem(name)
            if problem:
                raise ValueError(f"output name {name!r}: {problem}")  # callers validate user-given names first
        self.folder = ensure_folder(folder)
        self.tag = tag
        self.names = tuple(names)
        self._remove_stale()
        remove_stale_temporaries(self.folder, self.names)
        self.staging = self.folder / f".{tag}.{owner_token()}"

    def __enter__(self) -> "StagedOutputs":
        """Create the staging folder here, not in ``__init__``: a Ctrl-C between the constructor and
        the ``with`` block would leave a folder no ``__exit__`` removes."""
        try:
            self.staging.mkdir()
        except OSError as exc:
            raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(self.folder), reason=exc.strerror or str(exc)) from None
        except BaseException:  # Ctrl-C right after the folder was made: __exit__ will not run
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def path(self, name: str) -> Path:
        """Where to write the file that will be published as ``folder/name``."""
        if name not in self.names:
            raise KeyError(f"{name!r} is not one of this result set's files {self.names}")
        return self.staging / name

    def publish(self, retire: Sequence[str] = ()) -> dict[str, Path]:
        """Rename every staged file into place, in the order of ``names`` (the last one marks a
        complete set), Ctrl-C deferred; the staging folder is then removed.  Nothing is renamed
        unless every file can be.  ``retire``: files of an earlier set that this set has no
        counterpart for, removed in the same deferred block."""
        names = self.names
        for name in names:
            if not self.path(name).is_file():
                raise FileNotFoundError(f"{self.path(name)} was not written")  # a programming error
            if (self.folder / name).is_dir():
                raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(self.folder / name), reason="a folder is in the way")
        with interrupts_deferred():
            try:
                for name in names:
                    os.replace(self.path(name), self.folder / name)
                for name in retire:
                    if name not in names and not plain_name_problem(name):
                        (self.folder / name).unlink(missing_ok=True)
            except OSError as exc:
                raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(self.folder), reason=exc.strerror or str(exc)) from None
        self.discard()
        return {name: self.folder / name for name in names}

    def discard(self) -> None:
        """Remove the staging folder and whatever is still in it (Ctrl-C deferred)."""
        with interrupts_deferred():
            shutil.rmtree(self.staging, ignore_errors=True)

    def _remove_stale(self) -> None:
        """Staging folders of this tag whose run is gone (killed, or an older version's)."""
        lead = f".{self.tag}."
        for entry in self.folder.glob(f"{glob.escape(lead)}*"):
            if entry.is_dir() and not entry.is_symlink() and owner_gone(entry.name[len(lead):]):
                shutil.rmtree(entry, ignore_errors=True)


def remove_stale_temporaries(folder: Path, names: Sequence[str]) -> None:
    """Hidden ``.{name}.{token}.tmp`` files next to ``names`` whose writer is gone."""
    for name in names:
        lead = f".{name}."
        for entry in folder.glob(f"{glob.escape(lead)}*.tmp"):
            if entry.is_file() and owner_gone(entry.name[len(lead):-len(".tmp")]):
                entry.unlink(missing_ok=True)

