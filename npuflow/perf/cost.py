"""The per-layer cost model: engine cycles, DDR traffic, and which of the two bounds the layer.

Every number comes from the target file (``docs/perf-model.md`` explains each term):

* compute cycles walk the output in steps of the engine's parallelism, rounding every dimension
  up (``ceil``): 3 input channels on a 16-channel engine cost as much as 16;
* DDR bytes are the weights, the input feature maps (plus tile halos) and the output, plus the
  re-loads forced when neither the weights nor the feature maps of a layer fit on chip;
* a layer takes ``max(compute, memory) + layer overhead`` cycles (the DPU overlaps loads, compute
  and stores, so the slower one sets the pace).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..targets import Target
from ..targets.spec import Engine
from .layers import CONV, DEPTHWISE, ELTWISE, MISC, NONE, POOL, Geometry


#: Bank geometry assumed for targets whose documentation does not publish it (the DPUCZDX8G values).
DEFAULT_BANK_NUM, DEFAULT_BANK_DEPTH = 8, 2048


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer on one core; cycles at the target clock."""

    engine: str
    macs: int
    compute_cycles: int
    weight_bytes: int
    load_fmap_bytes: int
    store_bytes: int
    reload_bytes: int
    memory_cycles: int
    overhead_cycles: int
    cycles: int
    bound: str  # "compute" | "memory" | "none"
    engine_utilisation: float  # useful work / (cycles x this engine's peak)
    utilisation: float  # useful MACs / (cycles x the conv engine's peak): the share of peak

    @property
    def ddr_bytes(self) -> int:
        return self.weight_bytes + self.load_fmap_bytes + self.store_bytes + self.reload_bytes


def _ceil(a: int, b: int) -> int:
    return -(-a // max(b, 1))


def engine_for(target: Target, name: str) -> tuple[str, Engine]:
    """The engine that runs ``name`` work: depthwise falls back to conv when the target has none."""
    if name == DEPTHWISE and target.engines.depthwise is None:
        return CONV, target.engines.conv
    return name, getattr(target.engines, name)


def compute_cycles(g: Geometry, target: Target) -> tuple[str, int, int]:
    """(engine used, cycles, engine peak work per cycle) for one layer on one core."""
    if g.engine == NONE:
        return NONE, 0, 1
    used, e = engine_for(target, g.engine)
    rows = g.batch * g.out_h
    cols = _ceil(g.out_w, e.pixel_parallel)
    if used == CONV and g.engine == CONV:
        per_group = _ceil(g.in_c, e.input_channel_parallel) * _ceil(g.out_c, e.output_channel_parallel)
        cycles = rows * cols * per_group * g.groups * g.kernel_h * g.kernel_w
        return used, cycles, e.pixel_parallel * e.input_channel_parallel * e.output_channel_parallel
    if used == CONV:  # depthwise on the conv engine: one input channel per output channel
        cycles = rows * cols * _ceil(g.out_c * g.groups, e.output_channel_parallel) * g.kernel_h * g.kernel_w
        return used, cycles, e.pixel_parallel * e.input_channel_parallel * e.output_channel_parallel
    cp = e.channel_parallel
    if used == DEPTHWISE:
        cycles = rows * cols * _ceil(g.groups * g.out_c, cp) * g.kernel_h * g.kernel_w
    elif used == POOL:
        cycles = rows * cols * _ceil(g.in_c, cp) * g.kernel_h * g.kernel_w
    elif used == ELTWISE:
        cycles = rows * cols * _ceil(g.out_c, cp) * g.n_inputs
    else:  # MISC: one pass over the output elements
        cycles = _ceil(g.batch * g.out_h * g.out_w * _ceil(g.out_c, cp) * cp, e.pixel_parallel * cp)
    return used, cycles, e.pixel_parallel * cp


def buffer_bytes(target: Target) -> tuple[int, int]:
    """(feature-map buffer, weight buffer) bytes on one core."""
    banks = (target.bank_num or DEFAULT_BANK_NUM) * (target.bank_depth or DEFAULT_BANK_DEPTH) * max(
        target.channel_parallel, 1)
    m = target.memory
    fmap = int(m.fmap_buffer_kib * 1024) if m.fmap_buffer_kib is not None else banks
    weight = int(m.weight_buffer_kib * 1024) if m.weight_buffer_kib is not None else fmap
    return fmap, weight


def traffic(g: Geometry, target: Target) -> tuple[int, int, int, int]:
    """(weight, feature-map load incl. halo, store, re-load) bytes of one layer.

    The feature maps are split into row tiles that fit the feature-map buffer together with their
    output; neighbouring tiles share ``kernel_h - stride`` input rows (the halo, loaded twice).
    The weights are split into output-channel tiles that fit the weight buffer.  With several
    tiles of both, one of the two must be streamed again for every tile of the other; the
    compiler picks the cheaper order.
    """
    if g.engine == NONE:
        return 0, 0, 0, 0
    fmap_buf, w_buf = buffer_bytes(target)
    w, i, o = g.weight_bytes, g.in_bytes, g.out_bytes
    n_f = max(1, _ceil(i + o, fmap_buf))
    n_w = max(1, _ceil(w, w_buf))
    halo = 0
    if n_f > 1 and g.kernel_h > g.stride_h and g.out_h > 1:
        row_bytes = i // max(g.batch * g.out_h * g.stride_h, 1)
        halo = (n_f - 1) * (g.kernel_h - g.stride_h) * row_bytes * g.batch
    reload = 0
    if n_f > 1 and n_w > 1:
        reload = min((n_w - 1) * (i + halo), (n_f - 1) * w)
    return w, i + halo, o, reload


def bytes_per_cycle(target: Target, sharing_cores: int = 1) -> float:
    """DDR bytes one core moves per cycle when ``sharing_cores`` cores stream at once."""
    m = target.memory
    gbps = target.ddr_bandwidth_gbps * m.ddr_efficiency / max(sharing_cores, 1)
    if m.core_ddr_gbps is not None:
        gbps = min(gbps, m.core_ddr_gbps)
    return gbps * 1e9 / (target.clock_mhz * 1e6)


def layer_cost(g: Geometry, target: Target, sharing_cores: int = 1) -> LayerCost:
    """Cost of one NPU layer on one core with DDR shared by ``sharing_cores`` cores."""
    used, compute, peak = compute_cycles(g, target)
    w, load, store, reload = traffic(g, target)
    memory = math.ceil((w + load + store + reload) / bytes_per_cycle(target, sharing_cores))
    if used == NONE:
        return LayerCost(NONE, 0, 0, 0, 0, 0, 0, 0, 0, 0, "none", 0.0, 0.0)
    overhead = target.overheads.layer_cycles
    cycles = max(compute, memory) + overhead
    conv_peak = target.engines.conv.macs_per_cycle
    work = g.macs if g.engine != MISC else g.batch * g.out_h * g.out_w * g.out_c
    mac_like = g.engine in (CONV, DEPTHWISE)
    return LayerCost(
        engine=used,
        macs=g.macs if mac_like else 0,
        compute_cycles=compute,
        weight_bytes=w,
        load_fmap_bytes=load,
        store_bytes=store,
        reload_bytes=reload,
        memory_cycles=memory,
        overhead_cycles=overhead,
        cycles=cycles,
        bound="memory" if memory > compute else "compute",
        engine_utilisation=work / (cycles * peak) if cycles else 0.0,
        utilisation=(g.macs / (cycles * conv_peak)) if cycles and mac_like else 0.0,
    )
