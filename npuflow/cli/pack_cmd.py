"""``npuflow pack -o ALL.npuf a.npuf b.npuf ...``: several compiled models in one file (Horizon's
``hb_pack``; :mod:`npuflow.compiler.pack`)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from ..compiler import CompiledModel
from ..compiler.pack import pack
from .app import app, console, examples, output_option


@app.command("pack", epilog=examples(
    "npuflow pack -o all.npuf det.npuf cls.npuf rec.npuf",
    "npuflow info all.npuf",
    "npuflow run all.npuf --model cls -i x=x.npy",
))
def pack_command(
    models: List[Path] = typer.Argument(..., metavar="MODEL.npuf...", help="Compiled models (or packed files) to "
                                        "pack, all for one target; each is named by its file name."),
    output: Path = output_option(..., "FILE", "The packed file to write."),
) -> None:
    """Pack several compiled models for one target into one .npuf (run, info and perf take --model NAME)."""
    path = pack(models, output)
    packed = CompiledModel.load_all(path)
    console.print(f"wrote {path}: {len(packed)} models ({', '.join(packed)}), {path.stat().st_size} bytes",
                  highlight=False, markup=False)
