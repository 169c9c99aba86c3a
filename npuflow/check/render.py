"""Human-readable forms of a :class:`~.report.CheckReport`.

* :func:`console_tables` - at the default verbosity two short tables (nodes per op type and
  device; the CPU nodes grouped by op type and reason, a few names each), and behind ``-v 2``
  the full ``Node | ON | Subgraph | Type`` table as ``hb_mapper checker`` prints it (``id(0)``
  for accelerator subgraphs, ``--`` for CPU): a per-node table of YOLOv8n is 240 lines, more
  than a terminal shows, while its 58 Sigmoids share one reason;
* :func:`inspect_text` - the ``inspect_<target>.txt`` report with the fields of the Vitis AI
  Inspector (target info, summary, and per node: graph name, node name, input nodes, output
  nodes, op type, output shape, op attributes, assigned device, hardware constraints, node
  messages).
"""

from __future__ import annotations

from collections import Counter

from rich.table import Table

from .report import CPU, NPU, CheckReport, NodeReport

#: Node names listed per group of CPU nodes in the default table (``-v 2`` lists all).
NAMES_SHOWN = 3


def _sub(node: NodeReport) -> str:
    return f"id({node.subgraph})" if node.subgraph is not None else "--"


def summary_lines(report: CheckReport) -> list[str]:
    s = report.summary
    t = report.target
    lines = [
        f"target {t.name} ({t.fingerprint}, {t.family}); {s['nodes']} nodes: "
        f"{s['npu_nodes']} on {t.device_label} ({s['fused_nodes']} fused), {s['cpu_nodes']} on CPU; "
        f"{s['npu_subgraphs']} {t.device_label} subgraph(s)",
    ]
    if s["cpu_op_types"]:
        lines.append("CPU op types: " + ", ".join(f"{k} x{v}" for k, v in s["cpu_op_types"].items()))
    return lines


def console_tables(report: CheckReport, verbose: int = 1) -> list[Table]:
    """The placement tables: verbose 0 -> none (summary lines only), 1 -> nodes per op type and
    device plus the CPU nodes grouped by reason, 2 -> every node with its reason."""
    if verbose <= 0:
        return []
    if verbose >= 2:
        return [_node_table(report)]
    return [_op_type_table(report)] + ([_cpu_reason_table(report)] if report.cpu_nodes else [])


def _op_type_table(report: CheckReport) -> Table:
    label = report.target.device_label
    on_npu = Counter(n.op_type for n in report.nodes if n.device == NPU)
    fused = Counter(n.op_type for n in report.nodes if n.device == NPU and n.fused_into)
    on_cpu = Counter(n.op_type for n in report.cpu_nodes)
    columns = ("Type", label, *([f"fused on {label}"] if fused else []), CPU)
    title = f"{report.graph_name or 'graph'} on {report.target.name}: nodes per op type"
    table = Table(title=title, min_width=len(title))  # a narrow table would wrap its title
    for col in columns:
        table.add_column(col, justify="left" if col == "Type" else "right")
    for op in sorted(on_npu.keys() | on_cpu.keys(), key=lambda op: (-on_cpu[op], -on_npu[op], op)):
        counts = [on_npu[op], *([fused[op]] if fused else []), on_cpu[op]]
        table.add_row(op, *(str(c or "") for c in counts))
    return table


def _cpu_reason_table(report: CheckReport) -> Table:
    groups: dict[tuple[str, str], list[str]] = {}
    for n in report.cpu_nodes:
        groups.setdefault((n.op_type, "; ".join(n.reasons)), []).append(n.name)
    table = Table(title=f"why {len(report.cpu_nodes)} node(s) run on the CPU (-v 2: every node)")
    for col in ("Type", "Nodes", "Reason", "Node names"):
        table.add_column(col, overflow="fold", justify="right" if col == "Nodes" else "left")
    for (op, reason), names in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
        shown = ", ".join(names[:NAMES_SHOWN]) + (f", ... (+{len(names) - NAMES_SHOWN})" if len(names) > NAMES_SHOWN
                                                   else "")
        table.add_row(op, str(len(names)), reason, shown)
    return table


def _node_table(report: CheckReport) -> Table:
    table = Table(title=f"{report.graph_name or 'graph'} on {report.target.name}", show_lines=False)
    for col in ("Node", "ON", "Subgraph", "Type", "Reason / fused into"):
        table.add_column(col, overflow="fold")
    for n in report.nodes:
        note = "; ".join(n.reasons)
        if n.fused_into and n.device != CPU:
            note = f"fused into {n.fused_into}"
        table.add_row(n.name, report.device_name(n), _sub(n), n.kernel_type, note)
    return table


def plain_table(report: CheckReport, verbose: int = 2) -> str:
    """The table as plain text (for logs and the text report)."""
    rows = report.nodes if verbose >= 2 else report.cpu_nodes
    w = max([len("Node")] + [len(n.name) for n in rows]) + 2
    width = w + 6 + 10 + 32
    out = ["=" * width, f"{'Node':<{w}}{'ON':<6}{'Subgraph':<10}Type", "-" * width]
    for n in rows:
        out.append(f"{n.name:<{w}}{report.device_name(n):<6}{_sub(n):<10}{n.kernel_type}")
    return "\n".join(out)


def inspect_text(report: CheckReport) -> str:
    """The ``inspect_<target>.txt`` report."""
    t = report.target
    out = [
        "# The report has the following fields:",
        "#   target info: the target the model was checked for",
        "#   inspection summary: counts of nodes per device and the subgraphs",
        "#   graph name, node name, input nodes (parents), output nodes (children), op type,",
        "#   output shape (NCHW, as in the ONNX model), op attributes (as in ONNX), assigned device,",
        "#   hardware constraints (why a node does not run on the accelerator), node messages,",
        "#   and for PyTorch modules (npuflow.torch.inspect): module path and source range",
        "",
        "================================ target info ================================",
        f"name:           {t.name}",
        f"fingerprint:    {t.fingerprint}",
        f"family:         {t.family}",
        f"description:    {t.description}",
        f"clock:          {t.clock_mhz:g} MHz x {t.cores} core(s), DDR {t.ddr_bandwidth_gbps:g} GB/s",
        f"parallelism:    channel_parallel {t.channel_parallel}, bank_num {t.bank_num}, bank_depth {t.bank_depth}",
        "",
        "============================= inspection summary =============================",
        *summary_lines(report),
    ]
    for sg in report.subgraphs:
        out.append(f"subgraph id({sg.id}) on {t.device_label}: {len(sg.nodes)} node(s); inputs {sg.inputs}; outputs {sg.outputs}")
    out += ["", plain_table(report, 2), "", "================================ node details ================================"]
    for n in report.nodes:
        constraints = n.reasons or (["none"] if n.device != CPU else [])
        out += [
            f"graph name:            {report.graph_name}",
            f"node name:             {n.name}",
            f"input nodes:           {n.input_nodes}",
            f"output nodes:          {n.output_nodes}",
            f"op type:               {n.op_type} (kind {n.op_kind}, implementation {n.kernel_type})",
            f"output shape:          {n.output_shape}",
            f"op attributes:         {n.attributes}",
            f"assigned device:       {report.device_name(n)}" + (f" subgraph id({n.subgraph})" if n.subgraph is not None else ""),
            "hardware constraints:  " + ("\n                       ".join(constraints)),
        ]
        msgs = list(n.messages)
        if n.fused_into:
            msgs.append(f"fused into {n.fused_into}")
        if n.hint:
            msgs.append(f"hint: {n.hint}")
        out.append("node messages:         " + ("\n                       ".join(msgs) if msgs else ""))
        if n.module is not None or n.source_range:
            out.append(f"module:                {n.module or '(top-level forward)'}")
            out.append("source range:          " + ("\n                       ".join(n.source_range) or "?"))
        out.append("-" * 78)
    return "\n".join(out) + "\n"
