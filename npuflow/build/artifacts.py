"""Where a build writes its files, and how a failed or interrupted build leaves the last good one.

The six artefacts form one result set (:class:`~npuflow.outputs.StagedOutputs`): they are written
into a hidden staging folder ``working_dir/.{prefix}.build.{pid}-{random}/`` and renamed into place
together only after the last stage succeeded, the report last (its presence marks a complete
set).  A failed or interrupted build therefore leaves the previous successful build's files as
they were, plus ``npuflow_build.log`` explaining the failure; the staging folder is removed on the
way out, and those of killed builds are removed by the next build with the same prefix.  The
prefix is a plain name (:func:`~npuflow.outputs.plain_name_problem`, checked by the config), so
no file outside ``working_dir`` is ever written or removed.
"""

from __future__ import annotations

from pathlib import Path

from ..outputs import StagedOutputs

SUFFIXES = {
    "original": "_original_float_model.onnx",
    "optimized": "_optimized_float_model.onnx",
    "quantized": "_quantized_model.onnx",
    "quant_info": "_quant_info.json",
    "compiled": ".npuf",
    "report": "_build_report.json",
}
LOG_NAME = "npuflow_build.log"


class Artifacts(StagedOutputs):
    """The output files of one build, by kind (the keys of :data:`SUFFIXES`), published in that order."""

    def __init__(self, working_dir: Path, prefix: str) -> None:
        self.prefix = prefix
        super().__init__(working_dir, f"{prefix}.build", [f"{prefix}{suffix}" for suffix in SUFFIXES.values()])

    def final(self, kind: str) -> Path:
        return self.folder / f"{self.prefix}{SUFFIXES[kind]}"

    def staged(self, kind: str) -> Path:
        return self.path(f"{self.prefix}{SUFFIXES[kind]}")

    def publish_all(self) -> dict[str, Path]:
        """Swap the whole set in; returns kind -> final path."""
        self.publish()
        return {kind: self.final(kind) for kind in SUFFIXES}
