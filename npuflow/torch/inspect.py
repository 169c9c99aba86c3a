"""The Inspector for ``nn.Module``: checker placement, mapped back to module paths and source lines.

``inspect(module, example_inputs, target)`` exports the module through ONNX, runs
:func:`npuflow.check.check`, and fills each node's ``module`` and ``source_range`` fields, so a
node that falls back to the CPU points at the line of the user's model to change.

How nodes are mapped: the TorchScript exporter records, for every graph node, the Python stack
that created it (``Node.sourceRange()``).  :func:`source_map` builds the exporter's ONNX-level
graph (the same passes ``torch.onnx.export`` runs) and aligns it with the exported ``ModelProto``
node by node (same order, same op types).  The module path comes from the exporter's scoped node
name (``/layer1/conv/Conv`` -> ``layer1.conv``); the source range keeps the frames outside torch
itself, innermost first.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..check import check
from ..check.files import write_outputs
from ..check.report import CheckReport
from ..errors import NpuflowError
from ..targets import Target
from .capture import example_tuple
from .ptq import export_float

log = logging.getLogger(__name__)

_IMAGE_FORMATS = (None, "svg", "png")
_FRAME = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\): (?P<func>\S+)$")
_TORCH_DIR = str(Path(torch.__file__).resolve().parent)
_NPUFLOW_DIR = str(Path(__file__).resolve().parent.parent)


@dataclass
class NodeSource:
    """Where an ONNX node came from."""

    module: str  # module path ("" for the top-level forward)
    frames: list[str]  # "file:line in func", innermost user frame first


def module_path(node_name: str) -> str:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (exporter scope names)."""
    parts = [p for p in node_name.split("/") if p][:-1]
    path = ""
    for p in parts:
        path = p if not path or p.startswith(path + ".") else f"{path}.{p}"
    return path


def _user_frames(source_range: str) -> list[str]:
    frames = []
    for line in source_range.splitlines():
        m = _FRAME.match(line.strip())
        if not m:
            continue
        path = m.group("file")
        if path.startswith(_NPUFLOW_DIR):  # the export call itself: the user's model ends here
            break
        if path.startswith(_TORCH_DIR) or "/torch/" in path and "site-packages" in path:
            continue
        frames.append(f"{path}:{m.group('line')} in {m.group('func')}")
    return frames


def source_map(module: nn.Module, example_inputs, model) -> dict[str, NodeSource]:
    """ONNX node name -> :class:`NodeSource` for a model exported by :func:`export_float`."""
    from torch.onnx import utils as onnx_utils

    inputs = example_tuple(example_inputs)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph, _, _ = onnx_utils._model_to_graph(
                module, inputs, operator_export_type=torch.onnx.OperatorExportTypes.ONNX,
                do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
            )
    except Exception as exc:  # internal API: mapping is best effort, the check itself still runs
        log.warning("source ranges unavailable: %s", exc)
        return {}
    finally:
        module.train(was_training)
    jit_nodes = [(n.kind().split("::", 1)[-1], n.sourceRange()) for n in graph.nodes()]
    result: dict[str, NodeSource] = {}
    j = 0
    for node in model.graph.node:
        k = j
        while k < len(jit_nodes) and jit_nodes[k][0] != node.op_type:
            k += 1
        if k == len(jit_nodes):
            continue
        j = k + 1
        result[node.name] = NodeSource(module_path(node.name), _user_frames(jit_nodes[k][1]))
    return result


def inspect(module: nn.Module, example_inputs, target: str | Target, output_dir=None, verbose: int = 1,
            image_format: str | None = None) -> CheckReport:
    """Check ``module`` for ``target``; every node carries its module path and source range.

    ``output_dir``: write ``inspect_<target>.txt``/``.json``/``.gv`` (and the picture when
    ``image_format`` is ``"svg"`` or ``"png"``) as ``npuflow check`` does.  ``verbose``: 0 logs
    nothing, 1 logs the CPU nodes with their source lines, 2 logs every node.
    """
    if image_format not in _IMAGE_FORMATS:
        raise NpuflowError("NPF_TORCH_IMAGE_FORMAT", value=image_format)
    model = export_float(module, example_inputs)
    sources = source_map(module, example_inputs, model)
    report = check(model, target)
    for n in report.nodes:
        src = sources.get(n.name)
        if src is not None:
            n.module = src.module
            n.source_range = src.frames
    if output_dir is not None:
        write_outputs(report, output_dir, image_format)
    if verbose:
        shown = report.nodes if verbose >= 2 else report.cpu_nodes
        for n in shown:
            where = n.source_range[0] if n.source_range else "?"
            log.info("%s %s (%s) module %r at %s%s", report.device_name(n), n.name, n.op_type, n.module,
                     where, f": {'; '.join(n.reasons)}" if n.reasons else "")
    return report
