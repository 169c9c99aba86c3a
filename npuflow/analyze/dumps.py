"""Tensor-by-tensor comparison of two dump folders (``Session.run(..., dump_dir=)``, or a golden
dump written by another tool in the same layout): the bit-exactness check that ``npuflow compare
GOLDEN_DIR DUMP_DIR`` runs.  Kept apart from :mod:`npuflow.analyze.compare`, which measures a model
against its float model, because nothing here runs a model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NpuflowError


# --- dump folders --------------------------------------------------------------------------------

@dataclass
class TensorDiff:
    name: str
    ok: bool
    reason: str  # "" when equal within tolerance
    max_abs_diff: float | None = None
    mismatches: int = 0
    size: int = 0


@dataclass
class DumpComparison:
    golden: str
    dump: str
    atol: float
    rtol: float
    tensors: list[TensorDiff] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    def mismatched(self) -> list[TensorDiff]:
        return [t for t in self.tensors if not t.ok]

    def to_json(self) -> dict:
        return {"golden": self.golden, "dump": self.dump, "atol": self.atol, "rtol": self.rtol, "ok": self.ok,
                "tensors": [asdict(t) for t in self.tensors]}


def read_dump_index(folder: str | os.PathLike) -> dict[str, Path]:
    """Tensor name -> file of a dump folder (its ``index.json``), with coded errors."""
    root = Path(folder)
    if not root.is_dir():
        raise NpuflowError("NPF_COMPARE_DUMP_MISSING", path=str(root), reason="not a folder")
    index_path = root / "index.json"
    if not index_path.is_file():
        raise NpuflowError("NPF_COMPARE_DUMP_MISSING", path=str(root), reason="it has no index.json")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NpuflowError("NPF_COMPARE_DUMP_CORRUPT", path=str(index_path), reason=str(exc)) from None
    if not isinstance(index, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in index.items()):
        raise NpuflowError("NPF_COMPARE_DUMP_CORRUPT", path=str(index_path),
                           reason="expected a JSON object of tensor name -> file name")
    files = {}
    for name, fname in index.items():
        path = root / fname
        if Path(fname).is_absolute() or ".." in Path(fname).parts:
            raise NpuflowError("NPF_COMPARE_DUMP_CORRUPT", path=str(index_path),
                               reason=f"file {fname!r} of tensor {name!r} is outside the folder")
        if not path.is_file():
            raise NpuflowError("NPF_COMPARE_DUMP_MISSING", path=str(root),
                               reason=f"index.json lists {fname} for tensor {name!r}, which does not exist")
        files[name] = path
    return files


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise NpuflowError("NPF_COMPARE_DUMP_CORRUPT", path=str(path), reason=str(exc) or type(exc).__name__) from None


def _diff(name: str, want: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> TensorDiff:
    if want.shape != got.shape or want.dtype != got.dtype:
        return TensorDiff(name, False, f"golden {want.dtype}{list(want.shape)}, dump {got.dtype}{list(got.shape)}",
                          size=int(want.size))
    a, b = want.astype(np.float64), got.astype(np.float64)
    diff = np.abs(b - a)
    bad = ~(diff <= atol + rtol * np.abs(a)) & ~((a == b) | (np.isnan(a) & np.isnan(b)))
    count = int(bad.sum())
    return TensorDiff(name, count == 0, "" if count == 0 else f"{count} of {a.size} values beyond tolerance",
                      float(np.nanmax(diff, initial=0.0)), count, int(a.size))


def compare_dumps(golden: str | os.PathLike, dump: str | os.PathLike, *, atol: float = 0.0,
                  rtol: float = 0.0) -> DumpComparison:
    """Compare every tensor of the ``golden`` dump folder with the same tensor of ``dump``.

    Values match when ``|dump - golden| <= atol + rtol * |golden|`` (integer dumps: exact by
    default); a tensor missing from ``dump``, or of another shape or dtype, is a mismatch.
    """
    want, got = read_dump_index(golden), read_dump_index(dump)
    result = DumpComparison(str(golden), str(dump), atol, rtol)
    for name in sorted(want):
        if name not in got:
            result.tensors.append(TensorDiff(name, False, "missing from the dump"))
            continue
        result.tensors.append(_diff(name, _load_npy(want[name]), _load_npy(got[name]), atol, rtol))
    return result
