"""Compiler plugins: custom engines that take part of a model before the accelerator partition.

Vitis AI's compiler takes plugins for engines of the user's own (an AIE kernel, a PL block): a
plugin picks the ops it runs, compiles them into what its runner needs, and the runtime hands
those subgraphs to the plugin's runner.  npuflow does the same with a :class:`Plugin`:

* :meth:`Plugin.claims` (the partition step) names the nodes of the quantized model it takes;
  the quantize/dequantize steps around them come with them, so the plugin's subgraph reads and
  writes integer tensors like an accelerator subgraph;
* :meth:`Plugin.compile` turns one claimed subgraph (an ONNX model of its nodes) into the bytes
  its runner needs (a kernel configuration, packed constants; empty by default), stored in the
  ``.npuf`` beside the subgraph;
* :meth:`Plugin.runner` builds, when a ``Session`` opens, the callable that runs the subgraph;
* :meth:`Plugin.estimate_ms` is the performance model's hook (``npuflow perf``).

Plugins run in the order given, before the accelerator's own placement: a node a plugin claims
is never lowered to the accelerator.  A plugin is used only when a compile names it
(``compile_model(..., plugins=["alu"])``, ``npuflow compile --plugin alu``): installing a package
never changes how other models compile.  Plugins are registered with :func:`register_plugin` or
found by name among the entry points of the group ``npuflow.plugins`` (each names a
:class:`Plugin` subclass or instance).  A ``.npuf`` names its plugins; a process that runs it
without them gets ``NPF_RUNTIME_PLUGIN_MISSING``.  ``examples/alu_plugin.py`` is a complete one.
"""

from __future__ import annotations

import logging
import re
import threading
from importlib.metadata import entry_points
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

from .errors import NpuflowError
from .targets import Target

log = logging.getLogger(__name__)

#: Entry-point group of packages that provide plugins.
ENTRY_POINT_GROUP = "npuflow.plugins"
#: A plugin's name: it names the engine in the ``.npuf``, file names and the CLI.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Plugin:
    """A custom engine.  Subclass it and set :attr:`name` (and :attr:`device`)."""

    #: lower-case identifier, unique among plugins (``alu``)
    name: str = ""
    #: what reports show in their device column (``ALU``)
    device: str = ""

    def claims(self, model: onnx.ModelProto, target: Target) -> set[str]:
        """The names of the nodes of ``model`` (the quantized model, nodes named) this engine runs
        on ``target``; Q/DQ nodes are not claimed (they follow)."""
        raise NotImplementedError

    def compile(self, subgraph: onnx.ModelProto) -> bytes:
        """What the runner needs for ``subgraph`` (its inputs and outputs are integer tensors)."""
        return b""

    def runner(self, subgraph: onnx.ModelProto, payload: bytes) -> Runner:
        """A callable running ``subgraph``: ``{input name: array} -> {output name: array}``."""
        raise NotImplementedError

    def estimate_ms(self, subgraph: onnx.ModelProto, target: Target) -> float | None:
        """Latency of ``subgraph`` on the engine for one frame; ``None``: time it as a CPU part."""
        return None


_REGISTRY: dict[str, Plugin] = {}
_LOCK = threading.Lock()


def register_plugin(plugin: Plugin | type[Plugin]) -> Plugin:
    """Register ``plugin`` (an instance, or a class instantiated without arguments) by its name.
    Usable as a class decorator; registering a name again replaces the plugin."""
    instance = plugin() if isinstance(plugin, type) else plugin
    name = getattr(instance, "name", "")
    if not isinstance(instance, Plugin) or not isinstance(name, str) or not _NAME.fullmatch(name):
        raise NpuflowError("NPF_PLUGIN_BAD", plugin=repr(name or instance),
                           reason="a plugin is a npuflow.plugins.Plugin with a lower-case name of letters, digits and _")
    if not instance.device:
        instance.device = name.upper()
    with _LOCK:
        _REGISTRY[name] = instance
    return plugin if isinstance(plugin, type) else instance


def get_plugin(name: str) -> Plugin | None:
    """The plugin called ``name``: registered, else loaded from its entry point."""
    found = _REGISTRY.get(name)
    if found is not None:
        return found
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != name:
            continue
        try:
            register_plugin(ep.load())
        except NpuflowError:
            raise
        except Exception as exc:  # the package's code: reported with its name
            raise NpuflowError("NPF_PLUGIN_BAD", plugin=name, reason=f"its entry point failed to load: {exc}") from None
        return _REGISTRY.get(name)
    return None


def available() -> list[str]:
    """Names of the registered plugins and of those installed packages provide."""
    return sorted(set(_REGISTRY) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def resolve(plugins: Sequence[str | Plugin] | None) -> list[Plugin]:
    """The plugins a compile names, in order (an unknown name is ``NPF_PLUGIN_UNKNOWN``)."""
    out: list[Plugin] = []
    for p in plugins or ():
        plugin = p if isinstance(p, Plugin) else get_plugin(p)
        if plugin is None:
            raise NpuflowError("NPF_PLUGIN_UNKNOWN", plugin=p, available=", ".join(available()) or "none")
        if not isinstance(p, str):
            register_plugin(plugin)  # the runtime finds it by name in this process
        out.append(plugin)
    return out


def claimed_nodes(plugins: Iterable[Plugin], model: onnx.ModelProto, target: Target) -> dict[str, str]:
    """``{node name: plugin name}``: each plugin's claims, the first plugin winning a node;
    claims of nodes the model does not have, or of Q/DQ steps, are refused with a code."""
    names = {n.name: n for n in model.graph.node}
    owner: dict[str, str] = {}
    for plugin in plugins:
        try:
            claims = set(plugin.claims(model, target))
        except NpuflowError:
            raise
        except Exception as exc:  # the plugin's code
            raise NpuflowError("NPF_PLUGIN_FAILED", plugin=plugin.name, step="claims",
                               reason=f"{type(exc).__name__}: {exc}") from None
        for node in sorted(claims):
            if node not in names or names[node].op_type in ("QuantizeLinear", "DequantizeLinear"):
                raise NpuflowError("NPF_PLUGIN_FAILED", plugin=plugin.name, step="claims",
                                   reason=f"{node!r} is not a compute node of the model")
            owner.setdefault(node, plugin.name)
    return owner


def call(plugin: Plugin, step: str, fn: Callable, *args):
    """Run one of the plugin's own methods; its failure is ``NPF_PLUGIN_FAILED`` naming it."""
    try:
        return fn(*args)
    except NpuflowError:
        raise
    except Exception as exc:
        raise NpuflowError("NPF_PLUGIN_FAILED", plugin=plugin.name, step=step,
                           reason=f"{type(exc).__name__}: {exc}") from None
