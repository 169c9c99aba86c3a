"""``npuflow run MODEL.npuf --input NAME=FILE.npy ... [-o DIR] [--dump DIR] [-t TARGET] [--model NAME]``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..errors import NpuflowError
from ..model import write_atomic
from ..runtime import Session
from .app import app, console, examples, output_option, target_option


def _load_file(spec: str, name: str | None, file: str) -> dict[str, np.ndarray]:
    """The arrays of one input file: a ``.npy`` is the array of ``name``; a ``.npz`` (several
    arrays by name, as ``npuflow compare --data`` reads them) is every array, or with ``name`` its
    array of that name or its only one.  A ``.npz`` read as one array was reported as an input of
    dtype ``NpzFile``, which said nothing about the file; a folder was ``[Errno 21] Is a directory``."""
    if Path(file).is_dir():
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=(
            "it is a folder; run reads one sample (one file per input, or one .npz). For every file of a "
            f"folder: for f in {file.rstrip('/')}/*.npy; do npuflow run MODEL.npuf -i \"$f\" -o \"out/$(basename \"$f\" .npy)\"; "
            "done, or npuflow.Session(path).run in Python (one process, the model loaded once)"))
    try:
        loaded = np.load(file, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            if name is None:
                raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec,
                                   reason="a bare FILE.npy only for a model with one input; give NAME=FILE.npy")
            return {name: loaded}
        with loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (OSError, ValueError) as exc:
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=str(exc)) from None
    if name is None:
        return arrays
    if name in arrays:
        return {name: arrays[name]}
    if len(arrays) == 1:
        return {name: next(iter(arrays.values()))}
    raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec,
                       reason=f"the .npz holds no array named {name!r} (it holds {', '.join(arrays) or 'none'})")


def _read_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
    """``NAME=FILE.npy`` per input; a model with one input (``names``) also takes a bare
    ``FILE.npy``, and any model a bare ``FILE.npz`` whose arrays are named as its inputs."""
    feeds = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            if spec.endswith(".npz"):
                feeds.update(_load_file(spec, None, spec))
                continue
            if len(names) != 1 or len(specs) != 1:
                why = (f"this model has one input ({names[0]}): give one file" if len(names) == 1 else
                       f"a bare FILE.npy only for a model with one input; this one has {', '.join(names)}")
                raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=f"expected NAME=FILE.npy ({why})")
            name, file = names[0], spec
        if not name or not file:
            raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason="expected NAME=FILE.npy")
        feeds.update(_load_file(spec, name, file))
    return feeds


@app.command("run", epilog=examples(
    "npuflow run model.npuf -i images=img.npy",
    "npuflow run model.npuf -i img.npy  # a model with one input",
    "npuflow run model.npuf -i sample.npz  # one array per input, named as the inputs",
    "npuflow run model.npuf -i x=x.npy -o outputs --dump golden -t DPUCZDX8G_ISA1_B4096",
    "npuflow run all.npuf --model det -i images=img.npy",
))
def run_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    inputs: List[str] = typer.Option([], "--input", "-i", metavar="NAME=FILE.npy", help="An input's .npy file, once "
                                     "per model input (a model with one input also takes a bare FILE.npy); a bare "
                                     "FILE.npz gives every input its array of the same name."),
    output: Optional[Path] = output_option(None, "DIR", "Write each output as NAME.npy in this folder."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", hidden=True, help="Old name of --output."),
    dump: Optional[Path] = typer.Option(None, "--dump", metavar="DIR", help="Write every integer tensor here "
                                        "(golden dump; index.json maps tensor names to files)."),
    target: Optional[str] = target_option(False, "Refuse a model compiled for another target (name, fingerprint "
                                                 "or arch.json; --march also works)."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="The model to run in a packed "
                                             "file (npuflow pack); needed when it holds several."),
) -> None:
    """Run a compiled model on .npy (or .npz) inputs."""
    output_dir = output or output_dir
    session = Session(model, target, model=model_name)
    feeds = _read_inputs(inputs, [i.name for i in session.get_inputs()])
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
