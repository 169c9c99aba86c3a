"""Measured performance: ``npuflow bench`` (threads x frames), profiler log, traces, summaries.

* :func:`bench` runs a runtime ``Session`` from N threads and returns a :class:`BenchResult`;
* :func:`trace` is a context manager that writes a Chrome trace-event file of subgraph runs;
* :func:`vaitrace_summary` prints per-subgraph workload/time/traffic, keeping ESTIMATED target
  time and MEASURED host time apart.
"""

from .bench import BenchResult, bench, format_result, profiler_log
from .summary import vaitrace_summary
from .trace import chrome_trace, trace, write_chrome_trace

__all__ = ["BenchResult", "bench", "chrome_trace", "format_result", "profiler_log", "trace",
           "vaitrace_summary", "write_chrome_trace"]
