"""``npuflow run MODEL.npuf --input NAME=FILE.npy ... [-o DIR] [--dump DIR] [-t TARGET] [--model NAME]``.

``-i DIR -o OUTDIR`` runs every sample of a folder (one ``.npy``, or one ``.npz`` holding every
input by name, per sample) with the model loaded once, in sorted file order, and writes each
sample's outputs as ``OUTDIR/<file name without suffix>/NAME.npy``: what the one-sample form
writes into ``-o DIR``.  Users of ``hrt_model_exec``, rknn and ONNX Runtime scripts point the
runner at a folder; before, a folder was refused with a shell loop that loaded the model once
per sample.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np
import typer

from ..errors import NpuflowError
from ..outputs import StagedOutputs
from ..runtime import Session
from ..runtime.coverage import InputSaturationWarning
from .app import app, console, err_console, examples, output_option, target_option
from .progress import StageProgress

#: The files a sample folder may hold: what ``run`` reads for one sample.
SAMPLE_SUFFIXES = (".npy", ".npz")
#: Errors of ``Session.run`` about the feeds themselves: in a folder run they are about one file,
#: so they are raised as ``NPF_RUNTIME_BAD_INPUT_FILE`` naming it.
_FEED_CODES = {"NPF_RUNTIME_UNKNOWN_INPUT", "NPF_RUNTIME_MISSING_INPUT", "NPF_RUNTIME_INPUT_DTYPE",
               "NPF_RUNTIME_INPUT_SHAPE", "NPF_RUNTIME_SHAPE_TOO_LARGE", "NPF_RUNTIME_BAD_FEED"}


def _load_file(spec: str, name: str | None, file: str) -> dict[str, np.ndarray]:
    """The arrays of one input file: a ``.npy`` is the array of ``name``; a ``.npz`` (several
    arrays by name, as ``npuflow compare --data`` reads them) is every array, or with ``name`` its
    array of that name or its only one.  A ``.npz`` read as one array was reported as an input of
    dtype ``NpzFile``, which said nothing about the file."""
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


def _sample_folder(specs: list[str]) -> tuple[str, str | None, Path] | None:
    """``(spec, input name or None, folder)`` when ``-i`` names a folder of samples (``DIR`` or
    ``NAME=DIR``), None when it names files.  A folder is the only ``-i``: a model with several
    inputs reads one ``.npz`` per sample."""
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = "", spec
        if not file or not Path(file).is_dir():
            continue
        if len(specs) > 1:
            raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=(
                "a folder of samples is the only -i: for a model with several inputs, put one .npz per sample "
                "in the folder, holding every input by name (numpy.savez(f, NAME=array, ...))"))
        return spec, name or None, Path(file)
    return None


def _list_samples(spec: str, folder: Path) -> tuple[list[Path], list[str]]:
    """The sample files of ``folder`` in sorted order, and the sub-folders not read (an output
    folder kept inside the input folder).  Every file is checked before the first sample runs, so
    a stray file stops the run at once instead of after hours of samples; hidden files are not
    samples (``.DS_Store``, an editor's swap file)."""
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as exc:
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason=exc.strerror or str(exc)) from None
    files = [p for p in entries if p.is_file()]
    owners: dict[str, Path] = {}
    for path in files:
        if path.suffix.lower() not in SAMPLE_SUFFIXES:
            raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=str(path), reason=(
                f"the folder {folder} holds a file that is not a sample: run reads .npy and .npz files in the "
                "model's input format (images and raw files are preprocessed first); move it out of the folder"))
        if path.stem in owners:
            raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=str(path), reason=(
                f"{owners[path.stem].name} has the same name: each sample's outputs go to a folder named after "
                f"its file without suffix ({path.stem})"))
        owners[path.stem] = path
    if not files:
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=spec, reason="the folder holds no .npy or .npz file")
    return files, [p.name for p in entries if not p.is_file()]


def _file_name(output: str) -> str:
    """``NAME.npy`` for an output: characters other than letters, digits and ``._-`` become ``_``,
    and so does a leading dot (a hidden file)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in output)
    return ("_" + safe[1:] if safe.startswith(".") else safe) + ".npy"


def _write_outputs(folder: Path, outputs: Mapping[str, np.ndarray]) -> list[str]:
    """Each output as ``folder/NAME.npy``, all published together (staged, then renamed), so an
    interrupted or failed write never leaves a set of outputs that looks complete."""
    files = {_file_name(name): value for name, value in outputs.items()}
    with StagedOutputs(folder, "run", list(files)) as staged:
        for file, value in files.items():
            try:
                np.save(staged.path(file), value)
            except OSError as exc:
                raise NpuflowError("NPF_IO_WRITE_FAILED", path=str(folder / file),
                                   reason=exc.strerror or str(exc)) from None
        staged.publish()
    return list(files)


def print_input_coverage(session: Session) -> None:
    """``NPF_RUNTIME_INPUT_SATURATED`` for each input whose values the runs clipped, over every run
    (the session's own warning, at the first such run, is silenced: this one counts them all)."""
    for cov in session.input_coverage():
        warning = cov.warning()
        if warning is not None:
            err_console.print(f"[bold yellow]WARNING[/] [{warning.code}] {warning.message}\n  hint: {warning.hint}",
                              highlight=False)


def _run_folder(session: Session, spec: str, name: str | None, folder: Path, output_dir: Path,
                dump: Optional[Path]) -> None:
    """Every sample of ``folder`` through ``session``, outputs to ``output_dir/<stem>/``."""
    files, skipped = _list_samples(spec, folder)
    names = [i.name for i in session.get_inputs()]
    if name is None and len(names) == 1:
        name = names[0]
    written: list[str] = []
    start = time.perf_counter()
    with StageProgress("run", console, err_console) as progress:
        progress("samples", 0, len(files))
        for k, path in enumerate(files):
            feeds = _load_file(str(path), name, str(path))
            try:
                outputs = session.run(feeds, dump_dir=None if dump is None else dump / path.stem)
            except NpuflowError as exc:
                if exc.code not in _FEED_CODES:
                    raise
                raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=str(path),
                                   reason=f"{exc.message} ({exc.code})") from None
            written = _write_outputs(output_dir / path.stem, outputs)
            progress("samples", k + 1, len(files))
    seconds = time.perf_counter() - start
    note = f"; sub-folder(s) not read: {', '.join(skipped)}" if skipped else ""
    console.print(f"ran {len(files)} sample(s) of {folder} in {seconds:.2f} s ({1000 * seconds / len(files):.1f} ms "
                  f"per sample, files read and written included): {output_dir}/<sample>/{', '.join(written)}{note}",
                  highlight=False)
    if dump is not None:
        console.print(f"dumped integer tensors to {dump}/<sample> (index.json maps tensor names to files)")


@app.command("run", epilog=examples(
    "npuflow run model.npuf -i images=img.npy",
    "npuflow run model.npuf -i img.npy  # a model with one input",
    "npuflow run model.npuf -i sample.npz  # one array per input, named as the inputs",
    "npuflow run model.npuf -i samples/ -o outputs  # every .npy/.npz of a folder: outputs/<sample>/NAME.npy",
    "npuflow run model.npuf -i x=x.npy -o outputs --dump golden -t DPUCZDX8G_ISA1_B4096",
    "npuflow run all.npuf --model det -i images=img.npy",
))
def run_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    inputs: List[str] = typer.Option([], "--input", "-i", metavar="NAME=FILE.npy", help="An input's .npy file, once "
                                     "per model input (a model with one input also takes a bare FILE.npy); a bare "
                                     "FILE.npz gives every input its array of the same name; a folder (DIR or "
                                     "NAME=DIR, with -o) runs each of its .npy/.npz files as one sample, in sorted "
                                     "order."),
    output: Optional[Path] = output_option(None, "DIR", "Write each output as NAME.npy in this folder (for a folder "
                                                        "of samples: DIR/<sample file name>/NAME.npy)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", hidden=True, help="Old name of --output."),
    dump: Optional[Path] = typer.Option(None, "--dump", metavar="DIR", help="Write every integer tensor here "
                                        "(golden dump; index.json maps tensor names to files; DIR/<sample> for "
                                        "a folder of samples)."),
    target: Optional[str] = target_option(False, "Refuse a model compiled for another target (name, fingerprint "
                                                 "or arch.json; --march also works)."),
    model_name: Optional[str] = typer.Option(None, "--model", metavar="NAME", help="The model to run in a packed "
                                             "file (npuflow pack); needed when it holds several."),
) -> None:
    """Run a compiled model on .npy (or .npz) inputs, or on every sample of a folder."""
    output_dir = output or output_dir
    folder = _sample_folder(inputs)
    if folder is not None and output_dir is None:  # checked before the model loads
        raise NpuflowError("NPF_RUNTIME_BAD_INPUT_FILE", value=folder[0], reason=(
            "a folder of samples needs -o OUTDIR: each sample's outputs are written to "
            "OUTDIR/<sample file name>/NAME.npy"))
    session = Session(model, target, model=model_name)
    warnings.simplefilter("ignore", InputSaturationWarning)
    if folder is not None and output_dir is not None:
        _run_folder(session, *folder, output_dir, dump)
        print_input_coverage(session)
        return
    feeds = _read_inputs(inputs, [i.name for i in session.get_inputs()])
    outputs = session.run(feeds, dump_dir=dump)
    print_input_coverage(session)
    for name, value in outputs.items():
        console.print(f"{name}: shape {list(value.shape)} dtype {value.dtype} "
                      f"min {value.min():.6g} max {value.max():.6g}", highlight=False)
    if output_dir is not None:
        _write_outputs(output_dir, outputs)
    if dump is not None:
        console.print(f"dumped integer tensors to {dump} (index.json maps tensor names to files)")
