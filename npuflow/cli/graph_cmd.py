"""``npuflow graph MODEL.npuf -o x.svg|x.png|x.pdf|x.gv [--model NAME]``: the compiled graph as a picture.

Each subgraph is a Graphviz cluster labelled with its device and engine (accelerator subgraphs in
colours, CPU subgraphs grey, as ``npuflow check`` draws its placement); inside are the integer ops
(with the ONNX nodes fused into them) or the CPU subgraph's ONNX nodes, joined by the tensors they
pass.  Model inputs and outputs are ellipses, nodes ``npuflow modify`` removed dashed outside the
clusters: the names this picture shows are the names ``modify --remove`` and ``info --op`` take
(the role of hb_perf's "BIN Model Structure").  Pictures need Graphviz's ``dot``; without it the
``.gv`` source is written beside the requested file with a warning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import graphviz
import onnx
import typer

from ..check.graphviz_out import CPU_COLOUR, PALETTE
from ..compiler import CompiledModel
from ..errors import NpuflowError
from ..model import write_atomic
from .app import app, console, err_console, examples, output_option

#: Picture formats drawn by ``dot``; ``.gv``/``.dot`` are the Graphviz source itself.
PICTURES = ("svg", "png", "pdf")
SOURCES = ("gv", "dot")
#: How a cluster names what runs its subgraph.
_ENGINES = {"integer": "integer program", "onnx": "ONNX Runtime"}


def to_dot(compiled: CompiledModel, program: int = 0) -> graphviz.Digraph:
    """The compiled graph of one program (``program`` in :attr:`CompiledModel.programs` order)."""
    m = compiled.programs[program]
    dot = graphviz.Digraph(name=compiled.name, graph_attr={"rankdir": "TB", "label": _title(compiled, program),
                                                           "labelloc": "t"},
                           node_attr={"shape": "box", "style": "filled,rounded", "fontname": "Helvetica"})
    ids: dict[str, str] = {}  # Graphviz reads a colon in a node name as a port: nodes are numbered

    def node_id(key: str) -> str:
        return ids.setdefault(key, f"n{len(ids)}")

    producer: dict[str, str] = {}
    readers: list[tuple[str, str]] = []  # (tensor, node id)
    for io in m["inputs"]:
        dot.node(node_id(f"in:{io['name']}"), _io_label(io), shape="ellipse", style="", fillcolor="white")
        producer[io["name"]] = node_id(f"in:{io['name']}")
    for sg in m["subgraphs"]:
        on_cpu = sg["engine"] == "onnx"
        colour = CPU_COLOUR if on_cpu else PALETTE[sg["id"] % len(PALETTE)]
        engine = _ENGINES.get(sg["engine"]) or f"plugin {sg.get('plugin', sg['engine'])}"
        with dot.subgraph(name=f"cluster_{sg['id']}") as c:
            c.attr(label=f"{sg['name']}: {sg['device']} ({engine})",
                   style="rounded,filled", fillcolor="#f7f7f7")
            for key, label, inputs, outputs in _members(compiled, sg):
                c.node(node_id(key), label=label, fillcolor=colour)
                readers += [(t, node_id(key)) for t in inputs]
                producer.update({t: node_id(key) for t in outputs})
    for io in m["outputs"]:
        dot.node(node_id(f"out:{io['name']}"), _io_label(io), shape="ellipse", style="", fillcolor="white")
        readers.append((io["name"], node_id(f"out:{io['name']}")))
    for tensor, reader in readers:
        if tensor in producer:
            dot.edge(producer[tensor], reader, label=_short(tensor), fontsize="8")
    for r in compiled.removed:
        rid = node_id(f"removed:{r['name']}")
        dot.node(rid, f"{r['name']}\\n{r['op']} (removed, {r['side']} side)", style="dashed,rounded",
                 fillcolor="white", fontcolor="#777777")
        anchor = f"in:{r['output']['name']}" if r["side"] == "input" else f"out:{r['input']['name']}"
        if anchor in ids and r["side"] == "input":
            dot.edge(rid, ids[anchor], style="dashed", color="#999999")
        elif anchor in ids:
            dot.edge(ids[anchor], rid, style="dashed", color="#999999")
    return dot


def _title(compiled: CompiledModel, program: int) -> str:
    shapes = compiled.input_shapes
    extra = f", program {program + 1} of {len(shapes)}" if len(shapes) > 1 else ""
    return f"{compiled.name} for {compiled.target_name}{extra}"


def _io_label(io: dict) -> str:
    q = io.get("quant") or {}
    scale = f"\\nscale {q['scale']} zp {q['zero_point']}" if q and not isinstance(q.get("scale"), list) else ""
    return f"{io['name']}\\n{io['dtype']} {'x'.join(map(str, io['shape']))} {io.get('layout', '')}".rstrip() + scale


def _short(tensor: str, width: int = 40) -> str:
    return tensor if len(tensor) <= width else "..." + tensor[-width:]


def _members(compiled: CompiledModel, sg: dict) -> list[tuple[str, str, list[str], list[str]]]:
    """(node id, label, inputs, outputs) of every op or node of a subgraph."""
    out = []
    if sg["engine"] == "integer":
        for op in sg["ops"]:
            fused = [n for n in op.get("nodes", []) if n != op["name"]]
            label = f"{op['name']}\\n{op['kind']}" + (f"\\n+ {len(fused)} fused" if fused else "")
            out.append((f"op:{op['name']}", label, list(op["inputs"]), list(op["outputs"])))
    else:
        graph = onnx.load_from_string(compiled.blob(sg["onnx"])).graph
        for k, node in enumerate(graph.node):
            name = node.name or f"{sg['name']}/{node.op_type}_{k}"
            out.append((f"node:{sg['id']}:{name}", f"{name}\\n{node.op_type}", [t for t in node.input if t],
                        list(node.output)))
    return out


@app.command("graph", epilog=examples(
    "npuflow graph model.npuf -o model.svg",
    "npuflow graph all.npuf --model cls -o cls.gv",
))
def graph_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    output: Path = output_option(..., "FILE", "The picture: .svg, .png or .pdf (drawn by Graphviz's dot), or "
                                              ".gv/.dot (Graphviz source)."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="The model to draw in a packed "
                                             "file."),
    program: int = typer.Option(1, "--program", min=1, metavar="K", help="Which compiled shape set to draw "
                                "(1 = the first) in a file compiled for several."),
) -> None:
    """Draw the compiled graph: subgraphs as device clusters, ops and CPU nodes with the names modify/info take."""
    fmt = output.suffix.lstrip(".").lower()
    if fmt not in PICTURES + SOURCES:
        raise NpuflowError("NPF_GRAPH_USAGE", path=str(output), reason=f"'.{fmt}' is not a known picture format"
                           if fmt else "the name has no suffix")
    compiled = CompiledModel.load(model, model_name)
    if program > len(compiled.programs):
        raise NpuflowError("NPF_GRAPH_USAGE", path=str(output), reason=f"--program {program}: the model has "
                           f"{len(compiled.programs)} compiled shape set(s)")
    dot = to_dot(compiled, program - 1)
    if fmt in SOURCES:
        written = write_atomic(output, dot.source)
    else:
        try:
            written = write_atomic(output, dot.pipe(format=fmt))
        except graphviz.ExecutableNotFound:
            written = write_atomic(output.with_suffix(".gv"), dot.source)
            err_console.print(f"WARNING Graphviz's dot program is not installed: wrote the source {written} instead "
                              f"of {output} (install Graphviz, e.g. apt-get install graphviz, then run "
                              f"`dot -T{fmt} {written} -o {output}`)", markup=False, highlight=False)
        except graphviz.CalledProcessError as exc:
            raise NpuflowError("NPF_CHECK_GRAPHVIZ_FAILED", format=fmt, reason=str(exc)) from None
    console.print(f"wrote {written}", highlight=False, markup=False)
