"""Writing a check's results to a folder: ``inspect_<target>.txt``, ``.json``, ``.gv`` (+ picture)."""

from __future__ import annotations

from pathlib import Path

from ..errors import NpuflowError
from ..model import write_atomic
from ..outputs import StagedOutputs
from .graphviz_out import render_graph, to_dot
from .render import inspect_text
from .report import CheckReport


def write_outputs(report: CheckReport, out_dir: str | Path, image_format: str | None = None) -> list[Path]:
    """Write the report's files as one set; returns their paths.

    The files are staged and swapped in together, so Ctrl-C or a failure leaves an earlier
    check's files as they were, never a mix of two runs.  When the picture cannot be drawn
    (Graphviz missing or failing) the text, JSON and ``.gv`` are still published, as the error's
    hint promises, and an earlier run's picture is removed rather than left beside them.
    """
    stem = f"inspect_{report.target.name}"
    dot = to_dot(report)
    contents: dict[str, str | bytes] = {
        f"{stem}.txt": inspect_text(report),
        f"{stem}.json": report.to_json(),
        f"{stem}.gv": dot.source,
    }
    picture_error: NpuflowError | None = None
    if image_format:
        try:
            contents[f"{stem}.{image_format}"] = render_graph(dot, image_format)
        except NpuflowError as exc:
            picture_error = exc
    with StagedOutputs(Path(out_dir), "check", list(contents)) as stage:
        for name, data in contents.items():
            write_atomic(stage.path(name), data)
        published = stage.publish(retire=[f"{stem}.{image_format}"] if picture_error else ())
    if picture_error is not None:
        raise picture_error
    return list(published.values())
