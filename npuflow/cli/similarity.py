"""The per-node similarity of a quantized model on the console, for ``quantize`` and ``build``.

At the default verbosity a short table of the nodes where the similarity drops most below their
inputs' (where an accuracy loss arises) with a caption of the counts per device; ``-v 2`` prints
every node (Horizon's ``Node | ON | Subgraph | Type | Cosine Similarity | Threshold``), ``-v 0``
none.  YOLOv8n's full table is 233 rows, more than a terminal shows, and the rows that matter
were lost in it.  Both commands read the rows as the report JSON holds them
(:meth:`npuflow.quant.report.QuantReport.to_json`), so the two tables are the same.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.table import Table

from ..build.pipeline import SIMILARITY_COLUMNS, similarity_cells

#: Nodes in the default table.
WORST_SHOWN = 10
#: What the ON column says for a node the checker never placed (shape arithmetic it folded
#: away, which the compiled model computes on the CPU).
UNPLACED = "CPU (shape)"


def similarity_tables(rows: list[dict[str, Any]], samples: int, verbose: int = 1) -> list[Table]:
    """The console tables of the per-node ``rows`` (report JSON) measured on ``samples`` samples."""
    if verbose <= 0 or not rows:
        return []
    placed = any(r.get("on") for r in rows)
    if placed:
        rows = [{**r, "on": r.get("on") or UNPLACED} for r in rows]
    if verbose >= 2:
        shown, title = rows, f"quantization accuracy per node ({samples} samples)"
    else:
        measured = sorted((r for r in rows if r.get("drop") is not None), key=lambda r: (-r["drop"], r["node"]))
        shown = measured[:WORST_SHOWN]
        title = (f"quantization accuracy: the {len(shown)} nodes whose similarity drops most ({samples} samples; "
                 f"-v 2: all {len(rows)} nodes)")
    columns = [c for c in SIMILARITY_COLUMNS if placed or c not in ("ON", "Subgraph")]
    table = Table(title=title, caption=_counts(rows) if placed else None, min_width=len(title))
    for col in columns:
        table.add_column(col, justify="right" if col in ("Cosine Similarity", "Threshold", "Drop") else "left")
    if verbose < 2:
        table.add_column("Drop", justify="right")
    for row, cells in zip(shown, similarity_cells(shown)):
        cells = [c for c, name in zip(cells, SIMILARITY_COLUMNS) if name in columns]
        table.add_row(*cells, *([f"{row['drop']:.6f}"] if verbose < 2 else []))
    return [table]


def _counts(rows: list[dict[str, Any]]) -> str:
    counts = Counter(r["on"] for r in rows)
    return f"{len(rows)} nodes: " + ", ".join(f"{n} on {device}" for device, n in counts.most_common())


def output_figure(similarity: dict, output: str, cosine: str = "cosine similarity") -> str:
    """What the CLI's summaries say of one output (``similarity``: :meth:`QuantReport.to_json`): its cosine
    with :func:`calibration_note`, or for an output of a few values per sample its largest error against
    its range, judged over the samples (``cosine``: how the line names a cosine): one value's cosine is +-1 or 0 and said "cosine similarity 0.000000"
    of a click probability whose 2 float values were ~1e-5 and quantized to 0."""
    few = similarity.get("few_values", {}).get(output)
    if few is None:
        cos = similarity.get("outputs", {}).get(output)
        shown = "n/a" if cos is None else f"{cos:.6f}"
        return f"{cosine} {shown}{calibration_note(similarity, output)}"
    low, high = few["range"]
    share = "" if few["share"] is None else f", {100.0 * few['share']:.1f} % of"
    which = "its range" if few["fixed_range"] else "the float values' range"
    on = similarity.get("similarity_on") or f"{similarity['similarity_samples']} calibration samples"
    grid = "; within one quantization step of the float model on each" if output in similarity.get(
        "within_one_step", []) else ""
    return (f"few values per sample, judged over the samples (no cosine): largest error {few['max_error']:.4g}"
            f"{share} {which} [{low:.4g}, {high:.4g}] on {on}{grid}")


def calibration_note(similarity: dict, output: str) -> str:
    """`` (0.998 on 8 held-out calibration samples)`` after an output's cosine in the CLI's summaries
    (``similarity``: :meth:`QuantReport.to_json`), and why an output below the threshold passed."""
    checked = similarity.get("calibration_outputs", {}).get(output)
    why = similarity.get("unmeasured", {}).get(output)
    if why is not None:
        return f" (left out of the accuracy check: {why})"
    if checked is None:
        return ""
    grid = "; within one quantization step of the float model on each" if output in similarity.get(
        "within_one_step", []) else ""
    on = similarity.get("similarity_on") or f"{similarity['similarity_samples']} calibration samples"
    snr = similarity.get("snr_db", {}).get(output, "absent")
    ratio = "" if snr == "absent" else "; no error" if snr is None else f"; signal-to-noise ratio {snr:.1f} dB"
    fitted = similarity.get("fitted") or {}
    if output not in fitted.get("outputs", {}):
        return f" ({checked:.6f} on {on}{grid}{ratio})"
    # unseen samples judged: both figures, each with its worst sample (the pooled one hides single inputs)
    worst = similarity.get("worst_samples", {}).get(output)
    fitted_worst = fitted.get("worst_samples", {}).get(output)
    return (f" ({checked:.6f} on {on}{_worst(worst)}{grid}{ratio}; {fitted['outputs'][output]:.6f} on "
            f"{fitted['samples']} calibration samples (ranges set on them){_worst(fitted_worst)})")


def _worst(found: dict | None) -> str:
    """``, worst sample 0.8900`` from a report's ``worst_samples`` entry, or nothing."""
    return "" if found is None else f", worst sample {found['cosine']:.4f}"
