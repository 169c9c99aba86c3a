"""``npuflow build CONFIG.yaml`` (hb_mapper makertbin) and ``npuflow build --template``."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from ..build import TEMPLATE, build
from ..build.pipeline import BuildResult
from .app import app, console


@app.command("build")
def build_command(
    config: Optional[str] = typer.Argument(None, help="YAML build config (see --template)."),
    template: bool = typer.Option(False, "--template", help="Print a commented config template and exit."),
) -> None:
    """Convert a float ONNX model to a deployable .npuf in one go, from a YAML config."""
    if template:
        console.file.write(TEMPLATE)
        return
    if config is None:
        raise typer.BadParameter("give a CONFIG.yaml, or --template to print one", param_hint="CONFIG")
    with console.status("building...") as status:
        result = build(config, on_stage=lambda stage: status.update(f"[bold]{stage}[/] ..."))
    _print_similarity(result)
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
    console.print(f"timings: {timings}")
    for kind, path in result.files.items():
        console.print(f"  {kind:<10} {path}")
    console.print(f"[bold green]Build succeeded[/]: {result.files['compiled']}")


def _print_similarity(result: BuildResult) -> None:
    rows = similarity_rows(result.report.get("similarity"))
    if not rows:
        return
    table = Table(title="per-node similarity (float vs quantized)")
    for col in ("Node", "ON", "Subgraph", "Type", "Cosine Similarity", "Threshold"):
        table.add_column(col, justify="right" if col in ("Cosine Similarity", "Threshold") else "left")
    for r in rows:
        cos = r.get("cosine")
        thr = r.get("threshold")
        table.add_row(
            str(r.get("node", "")), str(r.get("on", "")), str(r.get("subgraph", "")), str(r.get("type", "")),
            "" if cos is None else f"{cos:.6f}", "" if thr is None else _fmt_threshold(thr),
        )
    console.print(table)


def _fmt_threshold(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(f"{float(v):.6f}" for v in value)
    return f"{float(value):.6f}"


def similarity_rows(data: Any) -> list[dict[str, Any]]:
    """Rows of the quantizer's per-node report, whatever container holds them."""
    if isinstance(data, dict):
        for key in ("nodes", "rows", "layers"):
            if isinstance(data.get(key), list):
                return data[key]
    return data if isinstance(data, list) else []
