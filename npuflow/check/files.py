"""Writing a check's results to a folder: ``inspect_<target>.txt``, ``.json``, ``.gv`` (+ picture)."""

from __future__ import annotations

from pathlib import Path

from ..model import write_atomic
from .graphviz_out import write_graph
from .render import inspect_text
from .report import CheckReport


def write_outputs(report: CheckReport, out_dir: str | Path, image_format: str | None = None) -> list[Path]:
    """Every file is written atomically; returns the paths in the order written."""
    out = Path(out_dir)
    stem = f"inspect_{report.target.name}"
    paths = [
        write_atomic(out / f"{stem}.txt", inspect_text(report)),
        write_atomic(out / f"{stem}.json", report.to_json()),
    ]
    paths += write_graph(report, out, stem, image_format)
    return paths
