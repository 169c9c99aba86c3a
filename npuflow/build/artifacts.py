"""Where a build writes its files, and how it makes sure a failure leaves nothing that looks done.

Every artefact is first written into a hidden staging folder inside ``working_dir``; only after
the last stage succeeded are they renamed into place (a rename within one file system is
atomic).  Stale artefacts of an earlier build with the same prefix are removed when a build
starts, so after a failed build the folder holds no ``{prefix}.npuf`` or ONNX file at all,
only the log explaining the failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

SUFFIXES = {
    "original": "_original_float_model.onnx",
    "optimized": "_optimized_float_model.onnx",
    "quantized": "_quantized_model.onnx",
    "compiled": ".npuf",
    "report": "_build_report.json",
    "quant_info": "_quant_info.json",
}
LOG_NAME = "npuflow_build.log"


class Artifacts:
    """The output paths of one build and its staging folder."""

    def __init__(self, working_dir: Path, prefix: str) -> None:
        self.dir = working_dir
        self.prefix = prefix
        self.dir.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{prefix}.build.", dir=self.dir))

    def final(self, kind: str) -> Path:
        return self.dir / f"{self.prefix}{SUFFIXES[kind]}"

    def staged(self, kind: str) -> Path:
        return self.staging / f"{self.prefix}{SUFFIXES[kind]}"

    def remove_stale(self) -> None:
        for kind in SUFFIXES:
            self.final(kind).unlink(missing_ok=True)

    def publish(self, order: list[str]) -> dict[str, Path]:
        """Rename the staged files into place, the report last (its presence means success)."""
        out = {}
        for kind in order:
            src = self.staged(kind)
            if src.exists():
                os.replace(src, self.final(kind))
                out[kind] = self.final(kind)
        self.discard()
        return out

    def discard(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
