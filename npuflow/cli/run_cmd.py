"""``npuflow run MODEL.npuf --input NAME=FILE.npy ... [--output-dir DIR] [--dump DIR]``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..errors import NpuflowError
from ..model import write_atomic
from ..runtime import Session
from .app import app, console


def _read_input(spec: str) -> tuple[str, np.ndarray]:
    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason="expected NAME=FILE.npy")
    try:
        return name, np.load(file, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=str(exc)) from None


@app.command("run")
def run_command(
    model: Path = typer.Argument(..., help="Compiled model (.npuf)."),
    inputs: List[str] = typer.Option([], "--input", "-i", help="NAME=FILE.npy, once per model input."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write each output as NAME.npy here."),
    dump: Optional[Path] = typer.Option(None, "--dump", help="Write every integer tensor here (golden dump)."),
    target: Optional[str] = typer.Option(None, "--target", help="Refuse a model compiled for another target."),
) -> None:
    """Run a compiled model on .npy inputs."""
    feeds = dict(_read_input(s) for s in inputs)
    session = Session(model, target)
    outputs = session.run(feeds, dump_dir=dump)
    for name, value in outputs.items():
        console.print(f"{name}: shape {list(value.shape)} dtype {value.dtype} "
                      f"min {value.min():.6g} max {value.max():.6g}", highlight=False)
        if output_dir is not None:
            import io

            buf = io.BytesIO()
            np.save(buf, value)
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
            write_atomic(output_dir / f"{safe}.npy", buf.getvalue())
    if dump is not None:
        console.print(f"dumped integer tensors to {dump} (index.json maps tensor names to files)")
