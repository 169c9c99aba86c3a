"""Runs a subgraph compiled for a compiler plugin (:mod:`npuflow.plugins`) with the plugin's runner.

The ``.npuf`` holds the subgraph as ONNX and the plugin's payload; the plugin's code is found by
name in this process (registered, or an installed package's entry point), never loaded from the
file.  Its runner's failures and wrong outputs are coded errors naming the plugin.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from .. import plugins
from ..errors import NpuflowError


class PluginExecutor:
    """One plugin subgraph: ``run(feeds) -> {output: array}`` through the plugin's runner."""

    def __init__(self, sg: dict, blob: Callable[[str], np.ndarray | bytes]) -> None:
        plugin = plugins.get_plugin(sg["plugin"])
        if plugin is None:
            raise NpuflowError("NPF_RUNTIME_PLUGIN_MISSING", subgraph=sg["name"], plugin=sg["plugin"])
        self.plugin = plugin
        self.inputs = list(sg["inputs"])
        self.outputs = list(sg["outputs"])
        model = onnx.load_from_string(bytes(blob(sg["onnx"])))
        payload = bytes(np.asarray(blob(sg["payload"]), np.uint8)) if sg.get("payload") else b""
        self.runner = plugins.call(plugin, "runner", plugin.runner, model, payload)

    def run(self, feeds: dict[str, np.ndarray], dump=None) -> dict[str, np.ndarray]:
        result = plugins.call(self.plugin, "run", self.runner, {k: feeds[k] for k in self.inputs})
        missing = [o for o in self.outputs if not isinstance(result, dict) or o not in result]
        if missing:
            raise NpuflowError("NPF_PLUGIN_FAILED", plugin=self.plugin.name, step="run",
                               reason=f"its runner returned no value for {', '.join(missing)}")
        out = {o: np.asarray(result[o]) for o in self.outputs}
        if dump is not None:
            for name, value in out.items():
                if value.dtype.kind in "iu":
                    dump(name, value)
        return out
