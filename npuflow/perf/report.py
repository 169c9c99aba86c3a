"""Writing the estimate: ``perf_result/<name>/`` with an HTML page, JSON data and the structure picture.

Like ``hb_perf_result/``: a main page with a summary, one entry per subgraph (linked to its own
detail page: cost, layers by cost, transfers), end-to-end figures when the target describes the
board's CPU, the per-layer table (sortable by cost) and a picture of the model where NPU subgraphs are dark and CPU nodes grey.
The picture is a Graphviz ``.gv`` file always, and an SVG embedded near the top of the page,
scaled to its width, when ``dot`` is installed; the same structure is also an HTML table (each
part, its device, cost and the parts it feeds), open on the page when there is no picture, so
the page is useful without Graphviz.
"""

from __future__ import annotations

import glob
import json
import logging
import shutil
from pathlib import Path

import graphviz
from jinja2 import Environment, PackageLoader, select_autoescape

from ..errors import NpuflowError
from ..model import write_atomic
from ..outputs import StagedOutputs, plain_name_problem
from .estimate import CPU_SOURCE, NPU_SOURCE, PerfReport

log = logging.getLogger(__name__)

_env = Environment(loader=PackageLoader("npuflow.perf", "templates"), autoescape=select_autoescape(["html", "j2"]))


def structure_graph(report: PerfReport) -> graphviz.Digraph:
    """Subgraph-level picture: NPU subgraphs dark boxes, CPU nodes grey ellipses."""
    g = graphviz.Digraph(report.model_name, graph_attr={"rankdir": "TB"}, node_attr={"fontname": "Helvetica"})
    for s in report.subgraphs:
        if s.source != CPU_SOURCE:  # an accelerator or plugin engine: one box
            g.node(s.name, f"{s.name}\n{len(s.nodes)} nodes, {s.latency_ms:.3f} ms", shape="box", style="filled",
                   fillcolor="#263238", fontcolor="white")
        else:
            for n in s.nodes:
                g.node(n, n, shape="ellipse", style="filled", fillcolor="#d0d0d0", fontcolor="black")
    for a, b in report.edges:
        g.edge(a, b)
    return g


def structure_rows(report: PerfReport) -> list[dict]:
    """The structure picture as rows, in execution order: each part (an NPU subgraph, or a CPU
    node) with its device, node count, latency and the parts it feeds."""
    feeds: dict[str, list[str]] = {}
    for a, b in report.edges:
        feeds.setdefault(a, []).append(b)
    rows = []
    for s in report.subgraphs:
        parts = [(s.name, len(s.nodes), s.latency_ms)] if s.source != CPU_SOURCE else [(n, 1, None) for n in s.nodes]
        for name, nodes, ms in parts:
            rows.append({"name": name, "device": s.device, "subgraph": s.name, "nodes": nodes,
                         "latency_ms": s.latency_ms if ms is None and len(s.nodes) == 1 else ms,
                         "feeds": feeds.get(name, [])})
    return rows


def _svg(graph: graphviz.Digraph) -> str | None:
    if shutil.which("dot") is None:
        return None
    try:
        svg = graph.pipe(format="svg").decode("utf-8")
    except (graphviz.ExecutableNotFound, graphviz.CalledProcessError) as exc:
        log.warning("graphviz failed: %s", exc)
        return None
    return svg[svg.find("<svg"):]  # drop the XML prologue and DOCTYPE so it can be inlined


def subgraph_pages(report: PerfReport) -> list[str]:
    """File names of the per-subgraph detail pages, in the order of ``report.subgraphs``
    (numbered: a subgraph's name may hold characters no file name can)."""
    return [f"{report.model_name}.subgraph_{i}.html" for i in range(len(report.subgraphs))]


def render_html(report: PerfReport, svg: str | None) -> str:
    return _env.get_template("perf_report.html.j2").render(
        r=report, data=report.to_dict(), svg=svg, npu_source=NPU_SOURCE, cpu_source=CPU_SOURCE,
        structure=structure_rows(report), pages=subgraph_pages(report),
    )


def render_subgraph_html(report: PerfReport, index: int) -> str:
    """The detail page of ``report.subgraphs[index]``: its cost, its layers by cost, its transfers."""
    s = report.subgraphs[index]
    layers = sorted((layer for layer in report.layers if layer.subgraph == s.name), key=lambda layer: -layer.cycles)
    transfers = [t for t in report.transfers if s.name in (t.src, t.dst)]
    return _env.get_template("perf_subgraph.html.j2").render(
        r=report, s=s, layers=layers, transfers=transfers, main_page=f"{report.model_name}.html")


def write_report(report: PerfReport, out_dir: str | Path = ".") -> Path:
    """Write ``<out_dir>/perf_result/<name>/``: ``<name>.{html,json,gv[,svg]}`` and one detail page
    per subgraph (``<name>.subgraph_<i>.html``), as one set; returns the folder.

    Staged and swapped in together (:class:`~npuflow.outputs.StagedOutputs`): a failure or Ctrl-C
    leaves an earlier report as it was; an earlier picture, or detail pages beyond this run's
    subgraphs, are removed (beside this run's page they would describe a different model).
    """
    name = report.model_name
    folder = Path(out_dir) / "perf_result" / name
    problem = plain_name_problem(name)
    if problem:  # the name comes from the model file's stem or graph name
        raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(folder),
                           reason=f"the report is named after the model ({name!r}) and {problem}; rename the model file")
    graph = structure_graph(report)
    svg = _svg(graph)
    contents = {f"{name}.gv": graph.source}
    if svg is not None:
        contents[f"{name}.svg"] = svg
    contents[f"{name}.json"] = json.dumps(report.to_dict(), indent=1)
    for i, page in enumerate(subgraph_pages(report)):
        contents[page] = render_subgraph_html(report, i)
    contents[f"{name}.html"] = render_html(report, svg)  # last: a complete set has its main page
    stale = [p.name for p in folder.glob(f"{glob.escape(name)}.subgraph_*.html") if p.name not in contents] \
        if folder.is_dir() else []
    with StagedOutputs(folder, "perf", list(contents)) as stage:
        for file_name, text in contents.items():
            write_atomic(stage.path(file_name), text)
        stage.publish(retire=stale + ([] if svg is not None else [f"{name}.svg"]))
    return folder
