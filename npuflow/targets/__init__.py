"""Target descriptions: typed specs loaded from one data file per target.

A target is named by its name (``DPUCZDX8G_ISA1_B4096``), its fingerprint (``0x101000016010407``)
or the path of an ``arch.json`` holding ``{"target": NAME}`` or ``{"fingerprint": FP}`` (the file
Vitis AI's compiler takes).  Data files live in ``targets/data``; a file may name a ``base`` file
(a leading underscore marks shared family bases, which are not targets themselves) whose content
it deep-merges over, so a family's limits are written once.
"""

from __future__ import annotations

import os
import re

import json
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from .. import safe_yaml
from ..errors import NpuflowError, did_you_mean
from .spec import Target

DATA_DIR = Path(__file__).parent / "data"

__all__ = ["Target", "load_target", "list_targets", "bundled_fingerprint", "DATA_DIR"]

#: A top-level ``key: value`` line of a target file (a plain or quoted scalar, an optional comment).
_TOP_LINE = r'^{key}:[ \t]*(["\']?)([A-Za-z0-9_.-]+)\1[ \t]*(?:#.*)?$'


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A target file's data merged over its ``base:`` chain (``chain``: the files that named
    this one as their base, to refuse a loop instead of recursing until Python gives up)."""
    text = None
    try:
        text = path.read_text()
        data = safe_yaml.load(text)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise NpuflowError("NPF_TARGET_BAD_FILE", path=str(path), reason=safe_yaml.describe(exc, text)) from None
    if not isinstance(data, dict):
        raise NpuflowError("NPF_TARGET_BAD_FILE", path=str(path), reason="not a mapping")
    base = data.pop("base", None)
    if base:
        base_path = _base_path(path, str(base))
        seen = (*chain, path)
        if any(base_path.resolve() == p.resolve() for p in seen):
            loop = " -> ".join(p.name for p in (*seen, base_path))
            raise NpuflowError("NPF_TARGET_BAD_FILE", path=str(path), reason=f"its base chain is a loop: {loop}")
        data = _deep_merge(_read_yaml(base_path, seen), data)
    return data


def _base_path(path: Path, base: str) -> Path:
    """Where ``path``'s ``base:`` file is: next to it, else the bundled family base of that name,
    so a bundled target file copied elsewhere and edited (``--target my_dpu.yaml``) still finds its
    ``_dpuczdx8g.yaml``; neither is ``NPF_TARGET_BAD_FILE`` naming the ``base`` field."""
    beside = path.parent / base
    if beside.is_file():
        return beside
    bundled = DATA_DIR / base
    if Path(base).name == base and bundled.is_file():
        return bundled
    known = sorted(p.name for p in DATA_DIR.glob("_*.yaml"))
    raise NpuflowError("NPF_TARGET_BAD_FILE", path=str(path),
                       reason=f"base: {base} is neither next to it nor a bundled base ({', '.join(known)})")


def load_target_file(path: str | Path) -> Target:
    """Validate one target file (used for the bundled targets and for user-written ones)."""
    p = Path(path)
    data = _read_yaml(p)
    try:
        return Target.model_validate(data)
    except (ValidationError, ValueError) as exc:
        raise NpuflowError("NPF_TARGET_BAD_FILE", path=str(p), reason=_short(exc)) from None


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        return f"{loc}: {err['msg']}"
    return str(exc)


@lru_cache(maxsize=None)
def _bundled_file(path: Path) -> Target:
    """One bundled target (reading all 30 to find one by name took 0.4 s of every command)."""
    return load_target_file(path)


@lru_cache(maxsize=1)
def _bundled() -> tuple[Target, ...]:
    files = sorted(p for p in DATA_DIR.glob("*.yaml") if not p.name.startswith("_"))
    return tuple(_bundled_file(p) for p in files)  # the same objects as a direct lookup


def bundled_fingerprint(name: str) -> str | None:
    """The fingerprint the bundled target file ``<name>.yaml`` states for the target ``name``,
    read from its own top-level ``name:`` and ``fingerprint:`` lines without parsing or validating
    the file; ``None`` where there is no such file or it does not state both, once each, on lines
    of their own (the caller then loads the target).

    Every ``.npuf`` load checks the file's fingerprint against its bundled target's: the YAML
    parse and validation of the target (and of its family base) cost each process about half a
    MiB of resident memory that a runtime never uses again."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        return None
    path = DATA_DIR / f"{name}.yaml"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    found = {}
    for key in ("name", "fingerprint"):
        lines = re.findall(_TOP_LINE.format(key=key), text, flags=re.M)
        if len(lines) != 1 or len(re.findall(rf"^{key}\s*:", text, flags=re.M)) != 1:
            return None
        found[key] = lines[0][1]
    return found["fingerprint"] if found["name"] == name else None


def list_targets() -> list[Target]:
    """Every bundled target, sorted by name."""
    return sorted(_bundled(), key=lambda t: t.name)


def load_target(spec: str | Path | Target) -> Target:
    """Resolve a target by name (case-insensitive), fingerprint, arch.json or target YAML path.

    ``spec``: ``"DPUCZDX8G_ISA1_B4096"`` (see :func:`list_targets`), ``"0x101000016010407"``, a
    path, or a :class:`Target` (returned as it is)."""
    if isinstance(spec, Target):
        return spec
    if not isinstance(spec, (str, os.PathLike)):  # e.g. calibration samples passed in the target's place
        raise NpuflowError("NPF_TARGET_UNKNOWN", value=f"<{type(spec).__name__}>",
                           suggestion=f"A target is a name, a file path or a Target, not a {type(spec).__name__} "
                                      "(npuflow.quantize takes model, calib_data, target in that order). ")
    text = str(spec).strip()
    path = Path(text)
    if text.endswith((".json", ".yaml", ".yml")) or _is_file(path):
        if not path.is_file():
            raise NpuflowError("NPF_TARGET_BAD_ARCH_JSON", path=text, reason="file not found")
        if path.suffix in (".yaml", ".yml"):
            return load_target_file(path)
        return _from_arch_json(path)
    found = _lookup(text)
    if found is None:
        raise _unknown(text)
    return found


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS cannot look up (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _unknown(key: str) -> NpuflowError:
    """``NPF_TARGET_UNKNOWN`` with the nearest bundled name (``DPUCZDX8G_ISA1_B409`` -> ``..._B4096``)."""
    shown = key if len(key) <= 80 else key[:77] + "..."
    return NpuflowError("NPF_TARGET_UNKNOWN", value=shown, suggestion=did_you_mean(key, [t.name for t in _bundled()]))


def _lookup(key: str) -> Target | None:
    low = key.lower()
    direct = DATA_DIR / f"{key}.yaml"  # the usual case: a bundled name, as its file is named
    if not key.startswith("_") and "/" not in key and "\\" not in key and _is_file(direct):
        t = _bundled_file(direct)
        if t.name.lower() == low:
            return t
    for t in _bundled():
        if t.name.lower() == low or same_fingerprint(t.fingerprint, key):
            return t
    return None


def same_fingerprint(a: str, b: str) -> bool:
    """Whether two DPU fingerprints (hex strings, any case or leading zeros) name the same target."""
    try:
        return int(a, 16) == int(b, 16)
    except ValueError:
        return False


def _from_arch_json(path: Path) -> Target:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NpuflowError("NPF_TARGET_BAD_ARCH_JSON", path=str(path), reason=str(exc)) from None
    if not isinstance(data, dict) or not ({"target", "fingerprint"} & data.keys()):
        raise NpuflowError(
            "NPF_TARGET_BAD_ARCH_JSON", path=str(path),
            reason="expected an object with a \"target\" or \"fingerprint\" key",
        )
    key = str(data.get("target") or data.get("fingerprint"))
    found = _lookup(key)
    if found is None:
        raise _unknown(key)
    return found
