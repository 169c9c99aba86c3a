"""``npuflow targets [NAME]``: list the bundled targets or show one."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from ..targets import list_targets, load_target
from .app import app, console, examples


@app.command("targets", epilog=examples(
    "npuflow targets",
    "npuflow targets DPUCZDX8G_ISA1_B4096",
    "npuflow targets 0x101000016010407 --json",
))
def targets_command(
    name: Optional[str] = typer.Argument(None, metavar="TARGET", help="Target name, fingerprint or arch.json to show."),
    as_json: bool = typer.Option(False, "--json", help="Print the full description as JSON."),
) -> None:
    """List the bundled targets, or show one in full."""
    if name is None:
        table = Table(title="npuflow targets")
        for col in ("Name", "Fingerprint", "Family", "Kind", "Cores", "Clock MHz", "Peak TOPS"):
            table.add_column(col)
        for t in list_targets():
            table.add_row(
                t.name, t.fingerprint, t.family, t.kind, str(t.cores), f"{t.clock_mhz:g}",
                f"{t.peak_ops_per_second / 1e12:.2f}",
            )
        console.print(table)
        return
    target = load_target(name)
    data = target.model_dump(mode="json")
    if as_json:
        console.print_json(json.dumps(data))
        return
    console.print(f"[bold]{target.name}[/]  fingerprint {target.fingerprint}  family {target.family}")
    console.print(target.description)
    console.print(
        f"clock {target.clock_mhz:g} MHz, {target.cores} core(s), DDR {target.ddr_bandwidth_gbps:g} GB/s, "
        f"channel_parallel {target.channel_parallel}, bank_num {target.bank_num}, bank_depth {target.bank_depth}"
    )
    eng = Table(title="engines")
    for col in ("engine", "pixel", "in-ch", "out-ch", "channel", "MACs/cycle"):
        eng.add_column(col)
    for ename in ("conv", "depthwise", "pool", "eltwise", "misc"):
        e = getattr(target.engines, ename)
        if e is not None:
            eng.add_row(ename, str(e.pixel_parallel), str(e.input_channel_parallel),
                        str(e.output_channel_parallel), str(e.channel_parallel), str(e.macs_per_cycle))
    console.print(eng)
    ops = Table(title="operations")
    for col in ("op", "kernel type", "limits", "fused activations"):
        ops.add_column(col)
    for op, rule in sorted(target.ops.items()):
        limits = [f"{k} in {list(v.range) if v.range else list(v.values or ())}" for k, v in rule.params.items()]
        limits += [c.expr for c in rule.constraints]
        ops.add_row(op, rule.kernel_type if rule.supported else "not supported", "\n".join(limits),
                    ", ".join(rule.activations))
    console.print(ops)
    n = target.numerics
    console.print(
        f"numerics: {n.scale_type} scales, per-channel weights {n.weight_per_channel}, symmetric {n.symmetric}, "
        f"rounding weight={n.round_mode.weight.value} bias={n.round_mode.bias.value} "
        f"activation={n.round_mode.activation.value}"
    )
