"""``npuflow prune ana|run SCRIPT.py``: channel pruning driven by a user script (needs torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .progress import StageProgress
from .app import Typer, app, console, err_console, examples, output_option, target_option

prune_app = Typer(help="Target-aware channel pruning of PyTorch models (needs the torch extra).",
                        no_args_is_help=True)
app.add_typer(prune_app, name="prune")


@prune_app.command("ana", epilog=examples(
    "npuflow prune ana my_model.py -t DPUCZDX8G_ISA1_B4096",
    "npuflow prune ana my_model.py --ratios 0.2,0.4,0.6 --forced",
))
def ana_command(
    script: Path = typer.Argument(..., metavar="SCRIPT.py", help="Python file defining get_model(), "
                                  "get_example_inputs(), eval_fn(model)."),
    target: Optional[str] = target_option(False, "Target whose conv parallelism channels round to (--march also "
                                                 "works)."),
    ratios: str = typer.Option("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", metavar="R,R,...",
                               help="Pruning ratios to analyse."),
    workdir: Path = typer.Option(Path(".npuflow_prune"), metavar="DIR", help="Cache folder (.sens files, specs)."),
    forced: bool = typer.Option(False, "--forced", help="Redo the analysis even if cached."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", metavar="LAYER",
                                                help="Module path whose output channels stay unpruned (repeatable), "
                                                     "e.g. a layer NPF_PRUNE_UNSUPPORTED_MODEL names."),
) -> None:
    """Sensitivity analysis: metric of each channel group at several pruning ratios."""
    from ..prune import IterativePruningRunner
    from ..prune.script import load_script

    user = load_script(script)
    runner = IterativePruningRunner(user.get_model(), user.get_example_inputs(), target=target, workdir=workdir,
                                    excludes=exclude or ())
    ratio_list = _ratios(ratios)
    with StageProgress("prune", console, err_console) as progress:
        progress("analyse")
        sens = runner.ana(getattr(user, "eval_fn", None), ratios=ratio_list, forced=forced,
                          progress=lambda name: progress.advance(detail=name))
    table = Table(title=f"sensitivity ({sens.metric_name}; unpruned {sens.baseline:.4f})")
    table.add_column("group")
    table.add_column("channels")
    for r in sens.ratios:
        table.add_column(f"{r:g}")
    for name, g in sens.groups.items():
        table.add_row(name, str(g["channels"]), *[f"{m:.4f}" for m in g["metric"]])
    console.print(table)
    console.print(f"saved in {workdir}")


@prune_app.command("run", epilog=examples(
    "npuflow prune run my_model.py --ratio 0.5 -t DPUCZDX8G_ISA1_B4096 -o slim.pt",
    "npuflow prune run my_model.py --target-latency-ms 0.08 -t DPUCZDX8G_ISA1_B4096 --method one_step -o slim.pt",
))
def run_command(
    script: Path = typer.Argument(..., metavar="SCRIPT.py", help="Python file defining get_model(), "
                                  "get_example_inputs() and optional eval_fn, calib_batches, finetune."),
    output: Path = output_option(..., "FILE", "Where to save the slim model (torch.save of the module)."),
    ratio: Optional[float] = typer.Option(None, "--ratio", metavar="R", help="Fraction of MACs to remove."),
    target_latency_ms: Optional[float] = typer.Option(None, "--target-latency-ms", metavar="MS",
                                                      help="Estimated latency goal on --target."),
    method: str = typer.Option("iterative", metavar="iterative|one_step", help="Pruning method."),
    rounds: int = typer.Option(1, metavar="N", help="Iterative: rounds of prune + finetune reaching the ratio."),
    num_subnet: int = typer.Option(20, metavar="N", help="One-step: candidate subnets to evaluate."),
    target: Optional[str] = target_option(False, "Target (channel rounding, latency; --march also works)."),
    workdir: Path = typer.Option(Path(".npuflow_prune"), metavar="DIR", help="Cache folder."),
    exclude: Optional[list[str]] = typer.Option(None, "--exclude", metavar="LAYER",
                                                help="Module path whose output channels stay unpruned (repeatable), "
                                                     "e.g. a layer NPF_PRUNE_UNSUPPORTED_MODEL names."),
) -> None:
    """Prune to a MAC ratio or latency goal and save the slim model."""
    import torch

    from ..prune import get_pruning_runner
    from ..prune.script import check_saveable, load_script

    user = load_script(script)
    model, inputs = user.get_model(), user.get_example_inputs()
    check_saveable(model, script)
    runner = get_pruning_runner(model, inputs, method, target=target, workdir=workdir, excludes=exclude or ())
    eval_fn = getattr(user, "eval_fn", None)
    finetune = getattr(user, "finetune", None)
    if method == "one_step":
        batches = user.calib_batches() if hasattr(user, "calib_batches") else None
        with StageProgress("prune", console, err_console) as progress:
            progress("subnets", 0, num_subnet)
            result = runner.search(ratio, num_subnet=num_subnet, calib_batches=batches, eval_fn=eval_fn,
                                   progress=lambda n: progress("subnets", n, num_subnet))
        slim_model = runner.prune()
        if finetune:
            slim_model = finetune(slim_model)
        best = result.candidates[result.best]
        console.print(f"best of {len(result.candidates)} subnets: score {best.score:.4f}, MACs {best.cost['macs']:.3g}")
    else:
        runner.ana(eval_fn)
        current = None
        for k in range(1, rounds + 1):
            step = ratio * k / rounds if ratio is not None else None
            latency = target_latency_ms if k == rounds else None
            current = runner.prune(step if latency is None else None, target_latency_ms=latency, model=current)
            if finetune:
                current = finetune(current)
            rec = runner.rounds[-1]
            latency = (f", estimated latency {rec.before['latency_ms']:.4g} -> {rec.after['latency_ms']:.4g} ms"
                       if "latency_ms" in rec.after else "")
            console.print(f"round {k}: MACs {rec.before['macs']:.3g} -> {rec.after['macs']:.3g} "
                          f"({1 - rec.after['macs'] / rec.before['macs']:.1%} removed){latency}")
        slim_model = runner.slim(current)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(output.suffix + ".tmp")
    torch.save(slim_model, tmp)
    tmp.replace(output)
    console.print(f"[green]saved slim model to {output}[/]")


def _ratios(text: str) -> list[float]:
    from ..errors import NpuflowError

    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < 1 for v in values):
        raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="ratios", value=text, reason="comma-separated numbers in (0, 1)")
    return values
