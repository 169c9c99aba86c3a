"""Channel groups of a PyTorch model and the two ways of removing channels from them.

Channels that are coupled (a residual ``+`` makes two convs share output channels, a concat
shifts indices, a depthwise conv ties its input and output channels, BatchNorm and the next
layer's input channels follow a conv's outputs) must be removed together, or the pruned model
does not run.  That dependency analysis is what ``torch-pruning`` (Torch-Pruning, a maintained
structural-pruning library) does well, so npuflow builds on its ``DependencyGraph`` and adds
what a deployment toolchain needs: stable group names, channel counts rounded to the target's
engine parallelism, a *sparse* mode (channels zeroed by masks, for fine-tuning between rounds)
and a *slim* mode (channels physically removed).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from ..errors import NpuflowError

#: Layer types whose output channels start a prunable group.
ROOT_TYPES = (nn.Conv2d, nn.Conv1d, nn.Linear)
#: Seconds torch-pruning may spend per root layer building the groups (all of them: this times
#: the root layers; one layer's own while :func:`_failing_root` looks for the culprit).  Its index
#: mapping can loop forever: a temporal shift module (slices of a 5-D view along channels,
#: concatenated) made ``npuflow prune run`` spin for 15 minutes (new-user round 15); real groups
#: build in well under a second each, so the limit only ends such loops.
GROUP_BUILD_LIMIT_S = 30.0
_FAILURES = (IndexError, KeyError, ValueError, RuntimeError, AssertionError)


class _Stuck(Exception):
    """torch-pruning ran past :data:`GROUP_BUILD_LIMIT_S` building channel groups."""


#: Seconds between repeats of the timer once it has run out: a handler that raises while Python
#: runs a finalizer (the garbage collector, busy in torch-pruning's allocating loop) has its
#: exception printed and dropped, so one alarm alone may not end the block (a CI worker spun on
#: the temporal shift module for 20 minutes and 9 GB).
_REPEAT_S = 0.25


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`_Stuck` in the block after ``seconds``, and again every :data:`_REPEAT_S`
    until it ends (a SIGALRM timer: only in the main thread, where the CLI runs; elsewhere the
    block runs unbounded, as before)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(_signum, _frame):
        raise _Stuck()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds, _REPEAT_S)
    try:
        yield
    finally:
        while True:  # a repeat may land before the timer is off: take it and switch off again
            try:
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except _Stuck:
                continue
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of ``root`` (a module path) and everything coupled to them."""

    name: str
    channels: int
    members: tuple[str, ...]  # module paths touched when these channels go


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def build_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs, verbose=False)


def _group_items(graph: tp.DependencyGraph, model: nn.Module, excludes: set[str]):
    """Yield ``(ChannelGroup, root module)`` for every prunable group.

    A group whose channels reach no other layer's input (the classifier, a detection head)
    is not prunable: its channels are the model's outputs.
    """
    names = _module_names(model)
    ignored = [m for m, n in names.items() if n in excludes]
    try:
        roots = sum(isinstance(m, ROOT_TYPES) for m in model.modules())
        with _time_limit(GROUP_BUILD_LIMIT_S * max(1, roots)):
            groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=ROOT_TYPES))
    except _Stuck:
        raise NpuflowError("NPF_PRUNE_UNSUPPORTED_MODEL", layer=_failing_root(graph, model, ignored),
                           reason=f"its channel mapping did not finish in {GROUP_BUILD_LIMIT_S:g} s (torch-pruning "
                                  f"loops on it: channels sliced and concatenated inside a reshape?)") from None
    except _FAILURES as exc:
        raise NpuflowError("NPF_PRUNE_UNSUPPORTED_MODEL", layer=_failing_root(graph, model, ignored),
                           reason=f"{type(exc).__name__}: {exc}") from None
    for group in groups:
        root = group[0].dep.target.module
        consumers = [it for it in group if it.dep.handler.__name__.endswith("in_channels")]
        if not consumers:
            continue
        _check_indices(group, names)
        members = sorted({names[it.dep.target.module] for it in group if it.dep.target.module in names})
        channels = root.out_channels if hasattr(root, "out_channels") else root.out_features
        yield ChannelGroup(names[root], int(channels), tuple(members)), root


def _check_indices(group, names: dict[nn.Module, str]) -> None:
    """Refuse a group that maps a channel past a member's size: torch-pruning follows channels
    through a ``chunk`` + ``cat`` + channel shuffle (reshape, transpose) by position and can land
    on channels a narrower layer does not have (a GhostNet/ShuffleNet block, new-user round 15:
    depthwise ``dw.0``'s 40 channels mapped onto ``g1.p.0``'s 20, and pruning ended in an
    ``IndexError`` traceback); masks built from such a group would zero the wrong channels."""
    root = names.get(group[0].dep.target.module, "a layer")
    for item in group:
        layer = item.dep.target.module
        if not item.dep.handler.__name__.endswith("out_channels") or not isinstance(getattr(layer, "weight", None),
                                                                                     torch.Tensor):
            continue
        size, last = layer.weight.shape[0], max((int(i) for i in item.idxs), default=-1)
        if last >= size:
            raise NpuflowError("NPF_PRUNE_UNSUPPORTED_MODEL", layer=root,
                               reason=f"it maps channel {last} onto {names.get(layer, type(layer).__name__)}, which "
                                      f"has {size} (channels reordered by a reshape/transpose or split by a chunk)")


def _failing_root(graph: tp.DependencyGraph, model: nn.Module, ignored: list[nn.Module]) -> str:
    """The first root layer whose group torch-pruning cannot build, or not within
    :data:`GROUP_BUILD_LIMIT_S` (its own walk over all groups does not say which one failed, and
    visits them in an order that varies between runs)."""
    for name, module in model.named_modules():
        if not isinstance(module, ROOT_TYPES) or module in ignored:
            continue
        channels = module.out_channels if hasattr(module, "out_channels") else module.out_features
        try:
            with _time_limit(GROUP_BUILD_LIMIT_S):
                graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels,
                                        idxs=list(range(channels)))
        except (*_FAILURES, _Stuck):
            return name
    return "a layer"


def kept_channels(channels: int, ratio: float, divisible: int) -> int:
    """Channels left after removing ``ratio`` of them, rounded UP to a multiple of ``divisible``.

    Rounding to the conv engine's output-channel parallelism matters on a DPU: 40 channels on a
    16-wide engine cost the same cycles as 48, so pruning 48 -> 40 saves MACs but no time.
    """
    keep = max(1, math.ceil(channels * (1.0 - ratio)))
    if divisible > 1:
        keep = min(channels, math.ceil(keep / divisible) * divisible)
    return keep


def _ranked_channels(root: nn.Module) -> torch.Tensor:
    """Channel indices of ``root`` from least to most important (L1 norm of the filter)."""
    w = root.weight.detach()
    norms = w.abs().flatten(1).sum(1) if w.dim() > 1 else w.abs()
    return torch.argsort(norms, stable=True)


def channel_rankings(model: nn.Module, example_inputs, excludes=()) -> dict[str, tuple[ChannelGroup, list[int]]]:
    """Each prunable group with its channel indices from least to most important.

    Built once per model (the dependency graph is the expensive part); a pruning spec is then
    turned into channel indices by :func:`removed_channels` without rebuilding it.
    """
    graph = build_graph(model, example_inputs)
    return {
        g.name: (g, _ranked_channels(root).tolist())
        for g, root in _group_items(graph, model, set(excludes))
    }


def removed_channels(rankings: dict[str, tuple[ChannelGroup, list[int]]], spec: dict[str, int]) -> dict[str, list[int]]:
    """For each group in ``spec`` (group name -> channels to keep) the channel indices to remove."""
    out: dict[str, list[int]] = {}
    for name, keep in spec.items():
        group, order = rankings[name]
        if keep < group.channels:
            out[name] = sorted(order[: group.channels - keep])
    return out


def slim(model: nn.Module, example_inputs, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of ``model`` with the ``removed`` channels physically deleted (dense, smaller).

    Masks from sparse mode are fine-tuning scaffolding: the copy drops them.
    """
    out = copy.deepcopy(model)
    for m in out.modules():
        if hasattr(m, "npuflow_channel_mask"):
            m._forward_pre_hooks.clear()
            del m.npuflow_channel_mask
    graph = build_graph(out, example_inputs)
    modules = dict(out.named_modules())
    for name, idxs in removed.items():
        root = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(root, fn, idxs=list(idxs))
        if graph.check_pruning_group(group):
            group.prune()
    return out


def apply_masks(model: nn.Module, example_inputs, removed: dict[str, list[int]]) -> nn.Module:
    """Zero the removed channels in place and keep them zero during fine-tuning.

    Every layer whose *output* channels belong to a pruned group (coupled convs, depthwise convs,
    BatchNorms) is masked by a forward pre-hook on its weight and bias, so an optimizer step
    cannot revive them and the sparse model computes what the slim one will (for activations
    with f(0) = 0, such as ReLU).  ``slim`` later deletes the channels.
    """
    graph = build_graph(model, example_inputs)
    modules = dict(model.named_modules())
    masks: dict[nn.Module, torch.Tensor] = {}
    for name, idxs in removed.items():
        root = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        for dep, dep_idxs in graph.get_pruning_group(root, fn, idxs=list(idxs)):
            layer = dep.target.module
            if not dep.handler.__name__.endswith("out_channels") or not isinstance(getattr(layer, "weight", None), torch.Tensor):
                continue
            mask = masks.setdefault(layer, torch.ones(layer.weight.shape[0], dtype=layer.weight.dtype))
            mask[[int(i) for i in dep_idxs]] = 0
    for layer, mask in masks.items():
        _attach_mask(layer, mask)
    return model


def _attach_mask(module: nn.Module, mask: torch.Tensor) -> None:
    shape = [-1] + [1] * (module.weight.dim() - 1)
    module.register_buffer("npuflow_channel_mask", mask.clone(), persistent=False)

    def hook(mod, _inputs):
        m = mod.npuflow_channel_mask
        with torch.no_grad():
            mod.weight.mul_(m.view(shape))
            if getattr(mod, "bias", None) is not None:
                mod.bias.mul_(m)

    hook(module, None)
    module.register_forward_pre_hook(hook)


def count_macs(model: nn.Module, example_inputs) -> tuple[float, int]:
    """(MACs, parameters) of one forward pass, as counted by torch-pruning."""
    macs, params = tp.utils.count_ops_and_params(model, example_inputs)
    return float(macs), int(params)
