"""Estimate a model file: the glue between loading, the checker and the cost model.

An ONNX model (float or quantized QDQ) is loaded and checked against the target; a compiled
``.npuf`` file already carries its model, target and partition.  Either way the estimator sees a
normalised model plus the placement of every node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx

from ..errors import NpuflowError
from ..targets import Target, load_target, same_fingerprint
from . import cpu_time
from .estimate import PerfReport, estimate


def perf(
    model: str | Path | onnx.ModelProto,
    target: str | Target | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    name: str | None = None,
    measure_cpu: bool = True,
) -> PerfReport:
    """Static estimate of ``model`` on ``target`` (see ``docs/perf-model.md``)."""
    if isinstance(model, (str, Path)) and Path(model).suffix == ".npuf":
        return _perf_npuf(Path(model), target, name=name, measure_cpu=measure_cpu)
    if isinstance(model, (str, Path)) and Path(model).suffix not in (".onnx", ""):
        raise NpuflowError("NPF_PERF_UNSUPPORTED_FILE", path=str(model))
    if target is None:
        raise NpuflowError("NPF_PERF_NO_TARGET", path=str(model if not isinstance(model, onnx.ModelProto) else "model"))
    t = target if isinstance(target, Target) else load_target(target)
    from ..check import check

    report = check(model, t, input_shapes)  # report.model: normalised, folded, nodes named
    label = name or (Path(model).stem if isinstance(model, (str, Path)) else report.graph_name or "model")
    return estimate(report.model, t, report.placement(), model_name=label, measure_cpu=measure_cpu)


def _perf_npuf(path: Path, target: str | Target | None, *, name: str | None, measure_cpu: bool) -> PerfReport:
    """A compiled file carries its target and partition; ``target`` overrides the costing target."""
    from ..compiler import CompiledModel

    return perf_compiled(CompiledModel.load(path), target, name=name or path.stem, measure_cpu=measure_cpu)


def perf_compiled(compiled: Any, target: str | Target | None = None, *, name: str = "model",
                  measure_cpu: bool = True) -> PerfReport:
    """The estimate of a :class:`~npuflow.compiler.CompiledModel` in memory (``npuflow build``'s
    summary costs the model it just compiled without reading the file back)."""
    from .from_npuf import model_and_placement

    model, placement = model_and_placement(compiled)
    t = target if isinstance(target, Target) else load_target(target) if target else compiled.target()
    timer = None
    if t.kind != "npu":  # the integer programs are no ONNX graph: time the compiled model as it runs
        timer = lambda _part: cpu_time.time_compiled(compiled)  # noqa: E731
    report = estimate(model, t, placement, model_name=name, measure_cpu=measure_cpu, cpu_timer=timer)
    if timer is not None and measure_cpu:
        report.notes.append("timed as compiled, in the npuflow runtime (one thread, random inputs)")
    if target is not None and not same_fingerprint(t.fingerprint, compiled.fingerprint):
        # run and bench refuse such a file; an estimate of it is a what-if the user should see as one
        report.notes.append(f"compiled for {compiled.target_name}: that target's partition is costed with "
                            f"{t.name}'s figures, which is not what {t.name} would run; compile the quantized "
                            f"model with -t {t.name} to estimate that")
    count = len(compiled.programs)
    if count > 1:  # each shape set is its own program with its own latency
        report.notes.append(f"the model holds {count} compiled shape sets; this is the first "
                            "(compiled.program(k) for the others; `npuflow perf` estimates each)")
    return report
