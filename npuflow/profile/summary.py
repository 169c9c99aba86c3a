"""A ``vaitrace --txt``-style summary: per subgraph workload, time, throughput and DDR traffic.

Two kinds of time appear and are never mixed in one column:

* **ESTIMATED** - the static model of the target chip (``npuflow perf``): ``Est RT``, and the
  GOP/s and bandwidth derived from it, as a board would show them;
* **MEASURED** - the npuflow runtime on this host (integer simulator for NPU subgraphs, ONNX
  Runtime for CPU ones): ``Sim RT``.  It tells where host time goes, not how fast the chip is.

Workload counts one MAC as 2 ops; LdWB/LdFM/StFM are the estimate's DDR loads of weights and
bias, loads of feature maps, and stores of feature maps; AvgBw = (LdWB + LdFM + StFM) / Est RT.
"""

from __future__ import annotations

import statistics
from typing import Any

from ..placement import Device
from .bench import BenchResult


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line, fmt(headers), line, *(fmt(r) for r in rows), line]


def vaitrace_summary(result: BenchResult, estimate: Any | None = None) -> str:
    """Text summary of a bench run; ``estimate`` is the model's ``PerfReport`` (or ``None``)."""
    device_id = f"{estimate.target}:batch-1" if estimate is not None else "NPU:batch-1"
    runs: dict[str, list[float]] = {}
    device: dict[str, str] = {}
    for e in result.events:
        runs.setdefault(e.name, []).append(e.ms)
        device[e.name] = e.device
    est = {s.name: s for s in estimate.subgraphs} if estimate is not None else {}
    npu_rows, cpu_rows = [], []
    for name, times in runs.items():
        sim = statistics.fmean(times)
        if device[name] == Device.NPU:
            # a run of subgraphs the runtime ran as one program (``a+b+c``, CPU tables spliced
            # in): the estimate's figures summed over them
            parts = [est[n] for n in name.split("+") if n in est]
            if parts and all(n in est for n in name.split("+")):
                wl, rt = sum(p.ops for p in parts) / 1e9, sum(p.latency_ms for p in parts)
                ldwb, ldfm, stfm = (sum(getattr(p, k) for p in parts) / 1e6
                                    for k in ("load_weight_bytes", "load_fmap_bytes", "store_bytes"))
                cells = [f"{wl:.3f}", f"{rt:.3f}", f"{wl / (rt / 1e3):.3f}", f"{ldwb:.3f}", f"{ldfm:.3f}",
                         f"{stfm:.3f}", f"{(ldwb + ldfm + stfm) / (rt / 1e3):.3f}"]
            else:
                cells = ["-"] * 7
            npu_rows.append([device_id, "1", name, *cells, str(len(times)), f"{sim:.3f}"])
        else:
            cpu_rows.append([name, Device.CPU, str(len(times)), f"{sim:.3f}"])
    out = ["NPU Summary",
           "  ESTIMATED for the target (static model): WL, Est RT, Perf, LdWB, LdFM, StFM, AvgBw",
           "  MEASURED on this host (npuflow simulator): Runs, Sim RT"]
    out += _table(["NPU", "Bat", "SubGraph", "WL(GOP)", "Est RT(ms)", "Perf(GOP/s)", "LdWB(MB)", "LdFM(MB)",
                   "StFM(MB)", "AvgBw(MB/s)", "Runs", "Sim RT(ms)"], npu_rows)
    out += ["", "CPU Tasks in Graph (MEASURED on this host)"]
    out += _table(["SubGraph", "Device", "Runs", "AverageRunTime(ms)"], cpu_rows)
    out += ["", "Notes:", "  WL(GOP): workload, one MAC = 2 ops   Est RT(ms): estimated run time on the target",
            "  Perf(GOP/s) = WL / Est RT   LdWB/LdFM(MB): DDR loads of weights+bias / feature maps",
            "  StFM(MB): DDR stores of feature maps   AvgBw(MB/s) = (LdWB + LdFM + StFM) / Est RT",
            "  Sim RT(ms): average measured time of the subgraph in the npuflow runtime on this host",
            "  a+b+c: subgraphs the runtime ran as one integer program (CPU tables between them spliced in);",
            "         their estimates are summed"]
    return "\n".join(out)
