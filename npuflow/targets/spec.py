"""The typed description of a target accelerator.

Everything hardware-specific lives in a target file (``targets/data/<NAME>.yaml``) validated into
:class:`Target`.  Later stages ask the target; they never test target names:

* the checker reads :attr:`Target.ops` (per-op limits as ranges, sets and formulas, and the
  activations each op absorbs);
* the quantizer reads :attr:`Target.numerics` (scale type, granularity, rounding per tensor kind);
* the performance estimator reads clock, cores, DDR bandwidth, banks and :attr:`Target.engines`.

Limits reference *layer* parameters (``kernel_w``, ``stride_h``, ``input_channel``, ...) and
*hardware* parameters (``channel_parallel``, ``bank_depth``, ``bank_num``); see
:meth:`Target.hardware_names` and ``docs/targets.md``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..numerics import RoundMode
from .expr import compile_expr

Bound = int | float | str  # a number or a formula


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamLimit(_Strict):
    """Allowed values of one layer parameter: a closed range (bounds may be formulas) or a set."""

    range: tuple[Bound, Bound] | None = None
    values: tuple[int | float | str, ...] | None = None

    @field_validator("range")
    @classmethod
    def _check_bounds(cls, v):
        if v is not None:
            for b in v:
                if isinstance(b, str):
                    compile_expr(b)
            lo, hi = v
            if not isinstance(lo, str) and not isinstance(hi, str) and lo > hi:
                # an empty range refuses every value: each such op would fall to the CPU unexplained
                raise ValueError(f"[{lo}, {hi}] is empty: the lower bound comes first")
        return v


class Constraint(_Strict):
    """A formula that must hold, with the name vendors give the row (``In Size``, ``Kernel size``)."""

    expr: str
    label: str = ""

    @field_validator("expr")
    @classmethod
    def _parse(cls, v: str) -> str:
        compile_expr(v)
        return v


class OpRule(_Strict):
    """Limits of one accelerator operation kind (conv2d, depthwise_conv2d, max_pool, ...)."""

    supported: bool = True
    kernel_type: str = ""  # implementation name shown in the checker's Type column
    params: dict[str, ParamLimit] = Field(default_factory=dict)
    constraints: tuple[Constraint, ...] = ()
    activations: tuple[str, ...] = ()  # fused activations this op absorbs
    note: str = ""

    @field_validator("activations")
    @classmethod
    def _known_activations(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        """A misspelt name (``relu_6``) would fuse nothing without a word."""
        from ..operators import FUSABLE_ACTIVATIONS  # operators imports this module

        unknown = [a for a in v if a not in FUSABLE_ACTIVATIONS]
        if unknown:
            raise ValueError(f"{', '.join(unknown)} not among {', '.join(FUSABLE_ACTIVATIONS)}")
        return v


class Engine(_Strict):
    """One compute engine's parallelism: MACs (or ops) per cycle = product of the factors."""

    # at least 1: the performance model divides by them
    pixel_parallel: int = Field(1, ge=1)
    input_channel_parallel: int = Field(1, ge=1)
    output_channel_parallel: int = Field(1, ge=1)
    channel_parallel: int = Field(1, ge=1)  # for engines that work channel-wise (depthwise, pooling, eltwise)

    @property
    def macs_per_cycle(self) -> int:
        return self.pixel_parallel * max(
            self.input_channel_parallel * self.output_channel_parallel, self.channel_parallel
        )


class Engines(_Strict):
    conv: Engine = Engine()
    depthwise: Engine | None = None  # None: depthwise runs on the conv engine
    pool: Engine = Engine()
    eltwise: Engine = Engine()
    misc: Engine = Engine()  # resize, concat copies, other data movement


class RoundModes(_Strict):
    weight: RoundMode = RoundMode.HALF_EVEN
    bias: RoundMode = RoundMode.HALF_EVEN
    activation: RoundMode = RoundMode.HALF_EVEN


class Numerics(_Strict):
    """Quantization defaults implied by the hardware arithmetic."""

    scale_type: Literal["power_of_two", "float"] = "float"
    weight_per_channel: bool = False
    symmetric: bool = True
    activation_signed: bool = True
    narrow_range_weights: bool = True
    bits: tuple[int, ...] = (8,)  # supported activation/weight widths
    round_mode: RoundModes = RoundModes()
    leaky_relu_slope: float | None = None  # hardware slope (DPU: 26/256); None = any slope
    hard_sigmoid: Literal["dpu", "onnx"] = "onnx"  # DPU: relu6(x+3) * 2731/16384


class Overheads(_Strict):
    """Fixed costs the performance model adds (cycles / microseconds)."""

    layer_cycles: int = Field(0, ge=0)
    subgraph_us: float = Field(0.0, ge=0)


class Memory(_Strict):
    """On-chip buffers and DDR behaviour, read by the performance model (``docs/perf-model.md``).

    ``None`` buffer sizes default to the feature-map banks: ``bank_num * bank_depth *
    channel_parallel`` bytes (each bank word holds one byte per parallel channel).
    """

    fmap_buffer_kib: float | None = None
    weight_buffer_kib: float | None = None
    ddr_efficiency: float = Field(0.7, gt=0, le=1)  # sustained fraction of the DDR peak
    core_ddr_gbps: float | None = None  # one core's AXI data ports; None: the whole DDR


class Host(_Strict):
    """The board's application CPU, for ``perf``'s end-to-end figures (``docs/perf-model.md``).

    The accelerator estimate covers the network; a deployed frame also costs the board's CPU its
    pre-processing (resize, normalise, quantize the input), post-processing (dequantize, decode
    the outputs) and the model's CPU subgraphs, which this host times with ONNX Runtime and
    ``cpu_time_scale`` converts to the board's slower cores.  Figures are per-frame costs on
    one board core; the target file says where they come from.
    """

    name: str
    threads: int = Field(1, ge=1, le=256)  # application threads the board runs at once (its cores)
    cpu_time_scale: float = Field(1.0, gt=0, le=1000)  # board core time / this host's time for CPU subgraphs
    frame_us: float = Field(0.0, ge=0, le=1e7)  # fixed work per frame (buffer setup, runner calls)
    preprocess_ns_per_element: float = Field(0.0, ge=0, le=1e6)  # per model-input element
    postprocess_ns_per_element: float = Field(0.0, ge=0, le=1e6)  # per model-output element


class Target(_Strict):
    name: str
    fingerprint: str
    family: str
    kind: Literal["npu", "cpu"] = "npu"
    description: str = ""
    device_label: str = "NPU"  # what the checker prints in the ON column (DPU, BPU, NPU)
    # sizes and rates are positive: the performance model and the limit formulas divide by them
    clock_mhz: float = Field(gt=0)
    cores: int = Field(1, ge=1)
    ddr_bandwidth_gbps: float = Field(gt=0)  # GB/s shared by all cores
    channel_parallel: int = Field(1, ge=1)
    bank_num: int | None = Field(None, ge=1)
    bank_depth: int | None = Field(None, ge=1)
    engines: Engines = Engines()
    ops: dict[str, OpRule] = Field(default_factory=dict)
    numerics: Numerics = Numerics()
    overheads: Overheads = Overheads()
    memory: Memory = Memory()
    host: Host | None = None  # the board's CPU; None: end-to-end figures are not estimated

    def hardware_names(self) -> dict[str, float]:
        """Names hardware formulas may use."""
        names: dict[str, float] = {"channel_parallel": self.channel_parallel}
        if self.bank_num is not None:
            names["bank_num"] = self.bank_num
        if self.bank_depth is not None:
            names["bank_depth"] = self.bank_depth
        return names

    def rule(self, op: str) -> OpRule | None:
        """Limits for an operation kind, or ``None`` when the target does not have it."""
        r = self.ops.get(op)
        return r if r is not None and r.supported else None

    @property
    def peak_ops_per_second(self) -> float:
        """2 ops per MAC on the conv engine, all cores."""
        return 2.0 * self.engines.conv.macs_per_cycle * self.clock_mhz * 1e6 * self.cores
