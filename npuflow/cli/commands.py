"""Imports every command module so that each registers itself on the app, and puts the commands
in the order of the workflow: ``npuflow --help`` and docs/cli.md list them in this order, whichever
module another import (a test, a plugin) happened to load first."""

from . import (analyze_cmd, bench_cmd, build_cmd, check_cmd, compare_cmd, compile_cmd, graph_cmd, info_cmd,
               modify_cmd, ort_export_cmd, pack_cmd, perf_cmd, prune_cmd, qat_cmd, quantize_cmd, run_cmd,
               targets_cmd)
from .app import app

#: The workflow order.
MODULES = (targets_cmd, check_cmd, quantize_cmd, analyze_cmd, qat_cmd, compile_cmd, run_cmd, info_cmd,
           ort_export_cmd, modify_cmd, pack_cmd, graph_cmd, compare_cmd, perf_cmd, bench_cmd, build_cmd, prune_cmd)
_RANK = {m.__name__: k for k, m in enumerate(MODULES)}


def _rank(callback) -> int:
    return _RANK.get(getattr(callback, "__module__", ""), len(_RANK))


app.registered_commands.sort(key=lambda c: _rank(c.callback))
app.registered_groups.sort(key=lambda g: min((_rank(c.callback) for c in g.typer_instance.registered_commands),
                                             default=len(_RANK)))
