"""The static performance estimate of a whole model on a target (what ``hb_perf`` reports).

Inputs: a normalised model, the checker's placement of every node, and the target file.  NPU
layers are costed by :mod:`npuflow.perf.cost`; CPU subgraphs are timed with ONNX Runtime on this
host (:mod:`npuflow.perf.cpu_time`); tensors that cross between NPU and CPU pay a transfer.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping

import onnx

from ..graph import GraphView, slice_nodes
from ..model import tensor_shapes
from ..placement import Device, NodePlacement, is_plugin, plugin_name
from ..targets import Target
from . import cpu_time
from .cost import LayerCost, buffer_bytes, bytes_per_cycle, layer_cost
from .layers import NONE, Geometry, model_geometry, node_name

NPU_SOURCE = "estimated (static model of the target)"
CPU_SOURCE = "measured on host CPU (ONNX Runtime, 1 thread)"
PLUGIN_SOURCE = "estimated by the compiler plugin"
@dataclass
class LayerResult:
    name: str
    op_type: str
    subgraph: str
    engine: str
    macs: int
    compute_cycles: int
    memory_cycles: int
    cycles: int
    bound: str
    utilisation: float
    engine_utilisation: float
    weight_bytes: int
    load_fmap_bytes: int
    store_bytes: int
    reload_bytes: int
    latency_ms: float
    fused_into: str | None = None


@dataclass
class SubgraphResult:
    name: str
    device: str  # a Device, or the plugin's device label
    source: str  # NPU_SOURCE | CPU_SOURCE | PLUGIN_SOURCE
    nodes: list[str]
    ops: int  # 2 x MACs per frame (one MAC counts as 2 ops)
    load_weight_bytes: int
    load_fmap_bytes: int
    store_bytes: int
    latency_ms: float
    shared_latency_ms: float  # with every core streaming at once (DDR shared)

    @property
    def ddr_bytes(self) -> int:
        return self.load_weight_bytes + self.load_fmap_bytes + self.store_bytes


@dataclass
class TransferResult:
    tensor: str
    src: str
    dst: str
    bytes: int
    latency_ms: float


@dataclass
class EndToEnd:
    """One frame on the board: the model's estimate plus the board CPU's share (``Target.host``).

    Single thread: every step of a frame in sequence.  Multi-thread (``threads`` application
    threads, as the Vitis AI Model Zoo measures): CPU work of one frame overlaps accelerator work
    of others, so the rate is the slower of the accelerator's and the CPU cores'.
    """

    host: str
    threads: int
    cpu_time_scale: float
    input_elements: int
    output_elements: int
    preprocess_ms: float
    postprocess_ms: float
    frame_ms: float
    cpu_subgraphs_ms: float  # this host's CPU-subgraph time x cpu_time_scale
    host_ms: float  # everything the board CPU does per frame
    latency_ms: float  # single thread
    fps_single_thread: float
    fps_multi_thread: float
    bound: str  # what limits the multi-thread rate: "accelerator" or "host CPU"


@dataclass
class PerfReport:
    """Everything ``npuflow perf`` shows; :meth:`to_dict` is the JSON written next to the page."""

    model_name: str
    target: str
    clock_mhz: float
    cores: int
    latency_ms: float
    fps_single_core: float
    fps_all_cores: float
    npu_ms: float
    cpu_ms: float
    transfer_ms: float
    ddr_mb_per_frame: float
    loaded_bytes_per_frame: int
    stored_bytes_per_frame: int
    ops_per_frame: int
    subgraphs: list[SubgraphResult]
    layers: list[LayerResult]
    transfers: list[TransferResult]
    edges: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    end_to_end: EndToEnd | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, sd in zip(self.subgraphs, d["subgraphs"]):
            sd["ddr_bytes"] = s.ddr_bytes
        d["sources"] = {Device.NPU: NPU_SOURCE, Device.CPU: CPU_SOURCE}
        return d


def _layer_result(name: str, node: onnx.NodeProto, p: NodePlacement, c: LayerCost, mhz: float) -> LayerResult:
    return LayerResult(
        name=name, op_type=node.op_type, subgraph=p.subgraph, engine=c.engine, macs=c.macs,
        compute_cycles=c.compute_cycles, memory_cycles=c.memory_cycles, cycles=c.cycles, bound=c.bound,
        utilisation=round(c.utilisation, 4), engine_utilisation=round(c.engine_utilisation, 4),
        weight_bytes=c.weight_bytes, load_fmap_bytes=c.load_fmap_bytes, store_bytes=c.store_bytes,
        reload_bytes=c.reload_bytes, latency_ms=c.cycles / (mhz * 1e3), fused_into=p.fused_into,
    )


def estimate(
    model: onnx.ModelProto,
    target: Target,
    placement: Mapping[str, NodePlacement],
    *,
    model_name: str = "model",
    measure_cpu: bool = True,
    cpu_timer: Callable[[list[onnx.NodeProto]], float | None] | None = None,
) -> PerfReport:
    """Estimate ``model`` (normalised, static shapes) on ``target`` given the checker's placement.

    CPU parts are timed on this host with ONNX Runtime, each cut out of ``model``; ``cpu_timer``
    replaces that (a compiled model on a CPU target is timed as it runs, in the npuflow runtime)."""
    elem_bytes = max(1, min(target.numerics.bits) // 8)
    geo = model_geometry(model, elem_bytes)
    mhz = target.clock_mhz
    on_npu = target.kind == "npu"
    nodes = list(model.graph.node)
    names = [node_name(n, i) for i, n in enumerate(nodes)]
    place = {nm: placement.get(nm) or NodePlacement(Device.CPU, f"cpu_{nm}") for nm in names}
    if not on_npu:
        place = {nm: NodePlacement(Device.CPU, "cpu_subgraph_0", p.op_kind) for nm, p in place.items()}

    geo = _forward_on_chip(model, names, place, geo, target, elem_bytes)
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for i, nm in enumerate(names):
        groups.setdefault(place[nm].subgraph, []).append(i)

    layers: list[LayerResult] = []
    subgraphs: list[SubgraphResult] = []
    notes: list[str] = []
    for sg, idx in groups.items():
        device = place[names[idx[0]]].device
        if device == Device.NPU:
            results, shared_cycles = [], 0
            for i in idx:
                p = place[names[i]]
                g = geo[names[i]]
                if p.fused_into:
                    c = layer_cost(g, target)
                    c = LayerCost(c.engine, c.macs, 0, 0, 0, 0, 0, 0, 0, 0, "fused", 0.0, 0.0)
                else:
                    c = layer_cost(g, target)
                    shared_cycles += layer_cost(g, target, sharing_cores=target.cores).cycles
                results.append(_layer_result(names[i], nodes[i], p, c, mhz))
            layers += results
            over_ms = target.overheads.subgraph_us / 1e3
            subgraphs.append(SubgraphResult(
                name=sg, device=Device.NPU, source=NPU_SOURCE, nodes=[names[i] for i in idx],
                ops=2 * sum(r.macs for r in results),
                load_weight_bytes=sum(r.weight_bytes for r in results),
                load_fmap_bytes=sum(r.load_fmap_bytes + r.reload_bytes for r in results),
                store_bytes=sum(r.store_bytes for r in results),
                latency_ms=sum(r.cycles for r in results) / (mhz * 1e3) + over_ms,
                shared_latency_ms=shared_cycles / (mhz * 1e3) + over_ms,
            ))
        elif is_plugin(device):
            subgraphs.append(_plugin_subgraph(model, [nodes[i] for i in idx], sg, device, target, measure_cpu, notes))
        else:
            timer = cpu_timer or (lambda part: cpu_time.measure_ms(model, part))
            ms = timer([nodes[i] for i in idx]) if measure_cpu else None
            if ms is None:
                ms = 0.0
                notes.append(f"CPU part {sg} could not be timed alone; counted as 0 ms")
            subgraphs.append(SubgraphResult(
                name=sg, device=Device.CPU, source=CPU_SOURCE, nodes=[names[i] for i in idx], ops=0,
                load_weight_bytes=0, load_fmap_bytes=0, store_bytes=0, latency_ms=ms, shared_latency_ms=ms,
            ))

    transfers, edges = _boundaries(model, names, place, target)
    npu_ms = sum(s.latency_ms for s in subgraphs if s.source != CPU_SOURCE)  # plugin engines are accelerators too
    npu_shared = sum(s.shared_latency_ms for s in subgraphs if s.source != CPU_SOURCE)
    cpu_ms = sum(s.latency_ms for s in subgraphs if s.source == CPU_SOURCE)
    transfer_ms = sum(t.latency_ms for t in transfers)
    latency = npu_ms + cpu_ms + transfer_ms
    cores = target.cores if on_npu else 1
    frame_all = npu_shared + cpu_ms + transfer_ms
    loaded = sum(s.load_weight_bytes + s.load_fmap_bytes for s in subgraphs)
    stored = sum(s.store_bytes for s in subgraphs)
    transfer_bytes = sum(t.bytes for t in transfers)
    if not on_npu:
        notes.append(f"{target.name} is a CPU target: the whole model was timed on this host")
    e2e = None
    if target.host is not None and on_npu:
        e2e = end_to_end(model, target, latency_ms=latency, cpu_ms=cpu_ms,
                         accelerator_frame_ms=(npu_shared + transfer_ms) / cores)
    return PerfReport(
        model_name=model_name, target=target.name, clock_mhz=mhz, cores=cores,
        latency_ms=latency, fps_single_core=1e3 / latency if latency else 0.0,
        fps_all_cores=min(cores * 1e3 / frame_all, cores * 1e3 / latency) if frame_all else 0.0,
        npu_ms=npu_ms, cpu_ms=cpu_ms, transfer_ms=transfer_ms,
        ddr_mb_per_frame=(loaded + stored + transfer_bytes) / 1e6,
        loaded_bytes_per_frame=loaded, stored_bytes_per_frame=stored,
        ops_per_frame=sum(s.ops for s in subgraphs),
        subgraphs=subgraphs, layers=layers, transfers=transfers, edges=edges, notes=notes, end_to_end=e2e,
    )


def _plugin_subgraph(model: onnx.ModelProto, nodes: list[onnx.NodeProto], name: str, device: str, target: Target,
                     measure_cpu: bool, notes: list[str]) -> SubgraphResult:
    """A compiler plugin's subgraph, costed by the plugin's hook (:meth:`npuflow.plugins.Plugin.estimate_ms`);
    timed on this host as a CPU part when the plugin has no estimate or is not installed here."""
    from .. import plugins

    plugin = plugins.get_plugin(plugin_name(device))
    sub = slice_nodes(model, nodes)
    ms = plugins.call(plugin, "estimate_ms", plugin.estimate_ms, sub, target) if plugin is not None else None
    label, source = (plugin.device, PLUGIN_SOURCE) if plugin is not None else (device, CPU_SOURCE)
    if ms is None:
        ms = (cpu_time.measure_ms(model, nodes) if measure_cpu else None) or 0.0
        source = CPU_SOURCE
        notes.append(f"{name} runs on compiler plugin {plugin_name(device)!r}, which "
                     f"{'gives no estimate' if plugin is not None else 'is not installed here'}: timed on this host")
    return SubgraphResult(name=name, device=label, source=source, nodes=[n.name for n in nodes], ops=0,
                          load_weight_bytes=0, load_fmap_bytes=0, store_bytes=0, latency_ms=float(ms),
                          shared_latency_ms=float(ms))


def end_to_end(model: onnx.ModelProto, target: Target, *, latency_ms: float, cpu_ms: float,
               accelerator_frame_ms: float) -> EndToEnd:
    """The board-level figures of one frame (``target.host`` must be set).

    ``latency_ms``: the model's estimate (CPU subgraphs timed on this host); ``cpu_ms``: that
    CPU part, rescaled to the board's cores; ``accelerator_frame_ms``: accelerator plus transfer
    time per frame with every core busy (the rate the accelerator alone sustains).
    """
    host = target.host
    assert host is not None
    shapes = tensor_shapes(model)
    weights = {t.name for t in model.graph.initializer}
    in_elems = sum(math.prod(shapes.get(i.name) or [0]) for i in model.graph.input if i.name not in weights)
    out_elems = sum(math.prod(shapes.get(o.name) or [0]) for o in model.graph.output)
    pre = in_elems * host.preprocess_ns_per_element / 1e6
    post = out_elems * host.postprocess_ns_per_element / 1e6
    frame = host.frame_us / 1e3
    cpu_board = cpu_ms * host.cpu_time_scale
    host_ms = pre + post + frame + cpu_board
    latency = latency_ms - cpu_ms + cpu_board + pre + post + frame
    accel_fps = 1e3 / accelerator_frame_ms if accelerator_frame_ms > 0 else math.inf
    cpu_fps = host.threads * 1e3 / host_ms if host_ms > 0 else math.inf
    multi = min(accel_fps, cpu_fps, host.threads * 1e3 / latency if latency > 0 else math.inf)
    return EndToEnd(
        host=host.name, threads=host.threads, cpu_time_scale=host.cpu_time_scale,
        input_elements=in_elems, output_elements=out_elems, preprocess_ms=pre, postprocess_ms=post,
        frame_ms=frame, cpu_subgraphs_ms=cpu_board, host_ms=host_ms, latency_ms=latency,
        fps_single_thread=1e3 / latency if latency > 0 else 0.0,
        fps_multi_thread=multi if math.isfinite(multi) else 0.0,
        bound="host CPU" if cpu_fps < accel_fps else "accelerator",
    )


def _forward_on_chip(
    model: onnx.ModelProto, names: list[str], place: Mapping[str, NodePlacement],
    geo: dict[str, Geometry], target: Target, elem_bytes: int,
) -> dict[str, Geometry]:
    """Drop the DDR store and re-load of tensors passed straight to the next layer on chip.

    A tensor stays in the feature-map banks when it is produced and consumed in the same NPU
    subgraph, its only consumer is the very next layer, it is not a model output, and it fills at
    most half the feature-map buffer (the other half holds the consumer's output tile).
    """
    fmap_buf, _ = buffer_bytes(target)
    shapes = tensor_shapes(model)
    nodes = list(model.graph.node)
    index = {nm: i for i, nm in enumerate(names)}
    consumers = GraphView(model).consumers
    outputs = {o.name for o in model.graph.output}

    def doer(i: int) -> int:
        """The layer that really executes node i (itself, or the layer it is fused into)."""
        f = place[names[i]].fused_into
        return index.get(f, i) if f else i

    order = [i for i, nm in enumerate(names)
             if place[nm].device == Device.NPU and not place[nm].fused_into and geo[nm].engine != NONE]
    nxt = {a: b for a, b in zip(order, order[1:])}
    out = dict(geo)
    for i, n in enumerate(nodes):
        p = place[names[i]]
        if p.device != Device.NPU:
            continue
        for t in n.output:
            users = [doer(u) for u in consumers.get(t, [])]
            src = doer(i)
            real = {u for u in users if u != src}
            size = math.prod(shapes.get(t) or [0]) * elem_bytes
            if (t in outputs or len(real) != 1 or not size or 2 * size > fmap_buf
                    or any(place[names[u]].subgraph != p.subgraph or place[names[u]].device != Device.NPU
                           for u in users)):
                continue
            (u,) = real
            if nxt.get(src) != u:
                continue
            gs, gu = out[names[src]], out[names[u]]
            out[names[src]] = replace(gs, out_bytes=max(gs.out_bytes - size, 0))
            out[names[u]] = replace(gu, in_bytes=max(gu.in_bytes - size, 0))
    return out


def _boundaries(
    model: onnx.ModelProto, names: list[str], place: Mapping[str, NodePlacement], target: Target
) -> tuple[list[TransferResult], list[tuple[str, str]]]:
    """Tensors crossing NPU<->CPU, and the part-level edges of the structure picture.

    A crossing tensor is stored by one side as INT8 and read by the other, which converts it to
    or from float32 on the CPU: 1 + 4 bytes per element through DDR at the sustained bandwidth.
    """
    shapes = tensor_shapes(model)
    producer = GraphView(model).producer
    bpc = bytes_per_cycle(target) * target.clock_mhz * 1e6  # bytes/s
    transfers, edges, seen, crossed = [], [], set(), set()
    for i, n in enumerate(model.graph.node):
        dst = place[names[i]]
        for t in n.input:
            if t not in producer:
                continue
            src = place[names[producer[t]]]
            if src.subgraph == dst.subgraph:
                continue
            a = src.subgraph if src.device != Device.CPU else names[producer[t]]  # NPU and plugin parts: one box
            b = dst.subgraph if dst.device != Device.CPU else names[i]
            if (a, b) not in seen:
                seen.add((a, b))
                edges.append((a, b))
            if src.device != dst.device and (t, dst.subgraph) not in crossed:
                crossed.add((t, dst.subgraph))
                elems = math.prod(shapes.get(t) or [1])
                transfers.append(TransferResult(t, src.subgraph, dst.subgraph, elems * 5, elems * 5 / bpc * 1e3))
    return transfers, edges
