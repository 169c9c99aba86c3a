"""``npuflow modify MODEL.npuf --remove NODE [--remove NODE ...] [-o OUT] [--model NAME]``: take input-side
quantize/cast/transpose/preprocessing nodes and output-side dequantize nodes out of a compiled model
(Horizon's ``hb_model_modifier``; :mod:`npuflow.compiler.modify`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..compiler import CompiledModel
from ..compiler.modify import remove
from .app import app, console, examples, output_option


@app.command("modify", epilog=examples(
    "npuflow modify model.npuf --remove input_q -o model_int8_in.npuf",
    "npuflow modify model.npuf --remove images_pre_cast --remove images_pre_nchw --remove logits_dq",
))
def modify_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    nodes: List[str] = typer.Option(..., "--remove", "-r", metavar="NODE", help="A node to remove (its exact name, "
                                    "as `npuflow info` and `npuflow graph` show it); repeat to remove several, "
                                    "outside in."),
    output: Optional[Path] = output_option(None, "FILE", "Where to write the modified model (default: "
                                                          "MODEL_modified.npuf next to MODEL)."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="The model to modify in a "
                                             "packed file (the output holds that model alone)."),
) -> None:
    """Remove input-side quantize/transpose/preprocessing and output-side dequantize nodes, so the application
    feeds and reads the tensors beyond them (int8 codes, its own layout); their parameters stay in `info`."""
    compiled = CompiledModel.load(model, model_name)
    modified = remove(compiled, nodes, str(model))
    out = output or model.with_name(f"{model.stem}_modified.npuf")
    modified.save(out)
    for r in modified.removed[-len(nodes):]:
        moved = r["output"] if r["side"] == "input" else r["input"]
        console.print(f"removed {r['name']} ({r['op']}, {r['side']} side): the model {r['side']} is now "
                      f"{moved['name']} {moved['dtype']} {'x'.join(map(str, moved['shape']))}"
                      + (f" {moved['layout']}" if moved.get("layout") else "")
                      + (f", scale {moved['quant']['scale']} zero point {moved['quant']['zero_point']}"
                         if moved.get("quant") else ""), highlight=False, markup=False)
    console.print(f"wrote {out}", highlight=False, markup=False)
