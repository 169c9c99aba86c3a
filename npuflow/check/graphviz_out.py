"""The placement as a Graphviz picture: NPU subgraphs in colours, CPU nodes grey.

The ``.gv`` source is always written (it needs no binaries); ``.svg``/``.png`` need Graphviz's
``dot`` program, and asking for them without it is a coded error rather than a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess

import graphviz

from ..errors import NpuflowError
from .report import CPU, CheckReport

PALETTE = ["#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5",
           "#bc80bd", "#ccebc5", "#ffed6f"]
CPU_COLOUR = "#d9d9d9"


def to_dot(report: CheckReport) -> graphviz.Digraph:
    dot = graphviz.Digraph(name=report.graph_name or "graph", graph_attr={"rankdir": "TB"},
                           node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica"})
    producer = {}
    for n in report.nodes:
        for o in n.outputs:
            producer[o] = n.name
    for n in report.nodes:
        colour = CPU_COLOUR if n.device == CPU else PALETTE[(n.subgraph or 0) % len(PALETTE)]
        label = f"{n.name}\\n{n.op_type} -> {report.device_name(n)}"
        if n.subgraph is not None:
            label += f" id({n.subgraph})"
        if n.reasons and n.device == CPU:
            label += "\\n" + n.reasons[0][:80].replace('"', "'")
        dot.node(n.name, label=label, fillcolor=colour)
    for n in report.nodes:
        for t in n.inputs:
            if t in producer:
                dot.edge(producer[t], n.name)
    return dot


def render_graph(dot: graphviz.Digraph, fmt: str) -> bytes:
    """The picture of ``dot`` in ``fmt`` (svg, png, ...), drawn by Graphviz's ``dot``."""
    exe = shutil.which("dot")
    if exe is None:
        raise NpuflowError("NPF_CHECK_GRAPHVIZ_MISSING", format=fmt)
    try:
        return subprocess.run([exe, f"-T{fmt}"], input=dot.source.encode(), capture_output=True,
                              check=True, timeout=300).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise NpuflowError("NPF_CHECK_GRAPHVIZ_FAILED", format=fmt, reason=str(exc)) from None
