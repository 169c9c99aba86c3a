"""``npuflow bench MODEL.npuf``: measure the runtime on this host (like ``hrt_model_exec perf``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import NpuflowError
from ..model import write_atomic
from ..profile import bench, format_result, profiler_log, vaitrace_summary, write_chrome_trace
from ..profile.bench import MAX_THREADS
from .progress import StageProgress
from .app import app, console, err_console, examples, output_option, target_option


@app.command("bench", epilog=examples(
    "npuflow bench model.npuf --thread-num 2 --frame-count 500",
    "npuflow bench model.npuf --perf-time 1 -o profile --trace trace.json -t DPUCZDX8G_ISA1_B4096",
))
def bench_command(
    model: Path = typer.Argument(..., metavar="MODEL.npuf", help="Compiled model (.npuf)."),
    target: Optional[str] = target_option(False, "Refuse a model compiled for another target (name, fingerprint "
                                                 "or arch.json; --march also works)."),
    thread_num: int = typer.Option(1, "--thread-num", metavar="N", help=f"Threads running frames, 1 to {MAX_THREADS}."),
    frame_count: int = typer.Option(200, "--frame-count", metavar="N", help="Frames to run (ignored with --perf-time)."),
    perf_time: float = typer.Option(0.0, "--perf-time", metavar="MIN", help="Run for this many minutes instead of a "
                                    "frame count."),
    output: Optional[Path] = output_option(None, "DIR", "Folder for profiler.log (JSON; --profile-path is the "
                                                        "hrt_model_exec name)."),
    profile_path: Optional[Path] = typer.Option(None, "--profile-path", hidden=True, help="hrt_model_exec's name of "
                                                "--output."),
    trace_file: Optional[Path] = typer.Option(None, "--trace", metavar="FILE", help="Write a Chrome trace-event JSON "
                                              "file (open in Perfetto)."),
    summary: bool = typer.Option(True, "--summary/--no-summary", help="Print the per-subgraph summary."),
) -> None:
    """Run MODEL from N threads and print Running condition and Perf result."""
    profile_path = output or profile_path
    if not 1 <= thread_num <= MAX_THREADS:
        raise NpuflowError("NPF_PERF_BAD_THREADS", value=thread_num, high=MAX_THREADS)
    if perf_time <= 0 and frame_count < 1:
        raise NpuflowError("NPF_PERF_BAD_FRAMES", value=frame_count)
    if model.suffix != ".npuf":
        raise NpuflowError("NPF_PERF_UNSUPPORTED_FILE", path=str(model))
    from ..runtime import Session

    session = Session(str(model), target)
    total = None if perf_time > 0 else frame_count
    with StageProgress("bench", console, err_console) as progress:
        progress("frames", 0, total)
        result = bench(session, thread_num=thread_num, frame_count=frame_count, perf_time_min=perf_time,
                       on_frame=progress.advance)
    console.print(format_result(result), markup=False, highlight=False)
    if profile_path is not None:
        write_atomic(profile_path / "profiler.log", json.dumps(profiler_log(result), indent=2))
        console.print(f"profiler log: {profile_path / 'profiler.log'}", markup=False, highlight=False)
    if trace_file is not None:
        write_chrome_trace(result.events, trace_file)
        console.print(f"trace: {trace_file}", markup=False, highlight=False)
    if summary:
        from ..perf import perf

        estimate = perf(model, measure_cpu=False)
        console.print(vaitrace_summary(result, estimate), markup=False, highlight=False)
