"""Summary tables at the default verbosity, every node behind -v 2 (issue 20 item 6): the per-node
similarity of quantize and build."""

from __future__ import annotations

import io

from rich.console import Console

from npuflow.cli.similarity import UNPLACED, WORST_SHOWN, similarity_tables


def _rows(n: int) -> list[dict]:
    rows = [{"node": f"n{i}", "type": "Conv", "tensor": f"t{i}", "cosine": 1 - i / 1000, "threshold": 1.0,
             "on": "DPU" if i % 2 else "CPU", "subgraph": 0 if i % 2 else None, "drop": i / 1000} for i in range(n)]
    rows.append({"node": "shape", "type": "Shape", "tensor": "s", "cosine": 1.0, "threshold": None, "on": None,
                 "subgraph": None, "drop": None})
    return rows


def _text(rows: list[dict], verbose: int) -> str:
    out = io.StringIO()
    for table in similarity_tables(rows, 2, verbose):
        Console(file=out, width=200).print(table)
    return out.getvalue()


def test_default_shows_the_largest_drops_and_the_counts():
    text = _text(_rows(40), 1)
    assert f"the {WORST_SHOWN} nodes whose similarity drops most" in text and "-v 2: all 41 nodes" in text
    assert "n39" in text and "n30" in text and "n29 " not in text
    assert f"41 nodes: 20 on CPU, 20 on DPU, 1 on {UNPLACED}" in text
    assert len(text.splitlines()) < WORST_SHOWN + 10


def test_v2_shows_every_node_with_a_device_and_v0_none():
    text = _text(_rows(40), 2)
    assert all(f"n{i} " in text for i in range(40))
    shape_row = next(line for line in text.splitlines() if "│ shape " in line)
    assert UNPLACED in shape_row  # shape arithmetic the checker folded: computed on the CPU
    assert _text(_rows(40), 0) == ""


def test_a_control_flow_row_is_on_the_cpu_even_when_its_inlined_branch_is_not():
    """silero-vad's /decoder/If was printed on DPU subgraph 1: the checker had inlined its branch,
    whose last node writes the If's output tensor on the DPU."""
    from types import SimpleNamespace

    from npuflow.quant.report import NodeRow, QuantReport, add_placement

    report = QuantReport(rows=[NodeRow("/decoder/If", "If", "out", 0.3, None),
                               NodeRow("conv", "Conv", "c", 0.99, 1.0)])
    placed = [SimpleNamespace(outputs=["out"], subgraph=1, device="NPU"),
              SimpleNamespace(outputs=["c"], subgraph=0, device="NPU")]
    placement = SimpleNamespace(nodes=placed, device_name=lambda n: "DPU" if n.device == "NPU" else "CPU")
    add_placement(report, placement)
    assert [(r.on, r.subgraph) for r in report.rows] == [("CPU", None), ("DPU", 0)]
