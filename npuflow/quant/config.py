"""The typed, layered quantization config (``QuantConfig``), validated once at the boundary.

Layers, later ones win (the hierarchy of Vitis AI's ``quant_config`` and Horizon's
``calibration_parameters``):

1. defaults from the target (``target.numerics``: scale type, per-channel weights, symmetry,
   rounding per tensor kind);
2. ``overall``: settings for every tensor kind;
3. ``input`` / ``weight`` / ``bias`` / ``activation``: settings per tensor kind;
4. ``op_types``: per ONNX op type (``Conv``, ``Gemm`` ...), each with ``overall`` and per kind;
5. ``layers``: per node, matched by exact ``name`` or by ``name_regex`` (in file order).

A setting left out (``None``) inherits.  :meth:`QuantConfig.resolve` yields the complete
:class:`TensorSettings` for one (node, tensor kind), and rejects invalid combinations with coded
errors.  ``bit_width`` does not apply to biases: a bias is always int32 with scale
``s_input * s_weight`` (see docs/quantized-model-format.md).
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .. import safe_yaml
from ..errors import NpuflowError, closest, did_you_mean
from ..numerics import RoundMode
from ..scaleout import MAX_WORKERS
from ..targets import Target

TensorKind = Literal["input", "weight", "bias", "activation"]
KINDS: tuple[str, ...] = ("input", "weight", "bias", "activation")
Method = Literal["minmax", "percentile", "entropy", "mse", "auto"]
ScaleType = Literal["float", "power_of_two"]

#: Methods that need a histogram of the tensor (a histogram is collected only when some tensor uses one).
HISTOGRAM_METHODS = frozenset({"percentile", "entropy", "mse", "auto"})
BIAS_BITS = 32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def __init__(self, **data: Any) -> None:
        """Build by hand (``QuantConfig(activation={"method": "mse"})``): a schema error is
        ``NPF_QUANT_BAD_CONFIG``, as for a dict or a file, not pydantic's ``ValidationError``."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise NpuflowError("NPF_QUANT_BAD_CONFIG", reason=_describe(exc, type(self))) from None

    # pydantic calls a custom __init__ for every nested model it validates, which would report a
    # nested error without its path (``method`` for ``activation.method``); marked as the base
    # __init__, nested values and model_validate go straight to the validator and only a call by
    # hand comes here.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class TensorSpec(_Strict):
    """Partial settings for one tensor kind; ``None`` inherits from the layer below."""

    # 7: weights in [-64, 63], ONNX Runtime's ``reduce_range``: on x86 CPUs without VNNI no pair of
    # products can leave MLAS' 16-bit lanes, so the fast uint8 x int8 kernels are exact (cpu-int8)
    bit_width: Literal[4, 7, 8, 16] | None = None
    method: Method | None = None
    scale_type: ScaleType | None = None
    per_channel: bool | None = None
    symmetric: bool | None = None
    signed: bool | None = None
    narrow_range: bool | None = None
    round_mode: RoundMode | None = None
    percentile: float | None = Field(default=None, gt=0.0, le=100.0)

    def set_fields(self) -> dict:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TensorSettings(_Strict):
    """Complete settings of one tensor (what the observers and the QDQ writer use)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bit_width: int
    method: Method
    scale_type: ScaleType
    per_channel: bool
    symmetric: bool
    signed: bool
    narrow_range: bool
    round_mode: RoundMode
    percentile: float


class LayerOverride(_Strict):
    """Settings for some nodes: ``overall`` then per-kind specs, like the global layer."""

    name: str | None = None
    name_regex: str | None = None
    overall: TensorSpec = TensorSpec()
    input: TensorSpec = TensorSpec()
    weight: TensorSpec = TensorSpec()
    bias: TensorSpec = TensorSpec()
    activation: TensorSpec = TensorSpec()

    @field_validator("name_regex")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"name_regex {v!r} is not a valid regular expression: {exc}") from None
        return v

    def spec(self, kind: str) -> dict:
        return {**self.overall.set_fields(), **getattr(self, kind).set_fields()}


class FastFinetune(_Strict):
    """Weight tuning after calibration: layer-wise (AdaRound / AdaQuant, issue 7) or block-wise
    (``brecq``: BRECQ block reconstruction with QDrop, issue 18; needs torch)."""

    method: Literal["adaround", "adaquant", "brecq", "gptq"] = "adaround"  # gptq: closed-form rounding (gptq.py)
    iters: int = Field(default=500, ge=1, le=100_000)  # per layer (per block for brecq); beyond, a typo runs for days
    lr: float | None = Field(default=None, gt=0)  # None: 0.1 (AdaRound) / 3e-3 (AdaQuant; in weight steps) / 3e-2 (brecq)
    batch: int = Field(default=256, ge=1)  # patch columns per optimisation step (layer-wise)
    # layer-wise methods: input patches sampled per layer over the samples fast finetune reads (the
    # problem's columns); GPTQ estimates each layer's input covariance from them (docs/accuracy.md).
    # all: every output position of every sample (gptq only: it keeps the columns' sums, not the columns)
    columns: Annotated[int, Field(ge=16)] | Literal["all"] = 2048
    backend: Literal["auto", "numpy", "torch"] = "auto"
    drop_prob: float = Field(default=0.5, ge=0, le=1)  # brecq: QDrop's chance an activation skips quantization
    block_batch: int = Field(default=4, ge=1)  # brecq: calibration samples per optimisation step
    block_layers: int = Field(default=3, ge=1)  # brecq: weight layers per block, at least
    # brecq: the block loss; fisher weighs each output element by the model output's sensitivity to it,
    # fisher_mse half that and half plain MSE (algorithms/block_fisher.py)
    block_loss: Literal["mse", "fisher", "fisher_mse"] = "mse"
    # brecq: per_block decides each block's learned codes on the model's calibration output error; final
    # keeps every block's learned codes (the later blocks learn on them) and decides the set once at the end
    block_accept: Literal["per_block", "final"] = "per_block"
    input_drop: float = Field(default=0.0, ge=0, lt=1)  # adaquant: QDrop, chance a layer input value is the float one
    # adaround: reconstruct after the fused activation (algorithms/activation.py: rec +6.6 pts at 500 it, effnet -0.5)
    post_activation: bool = False
    # adaquant/adaround: move each layer's power-of-two weight fix position against its output error (TQT;
    # algorithms/fast_finetune.py, docs/accuracy.md "Learned weight thresholds")
    learn_threshold: bool = False
    # adaquant: learn from nearest rounding (the float weights) or from GPTQ's codes and bias (algorithms/gptq.py);
    # brecq: the blocks start from layer-wise AdaRound's codes (nearest) or GPTQ's codes and bias (gptq)
    start: Literal["nearest", "gptq"] = "nearest"
    # adaround/adaquant/brecq: order in which the sampled columns (blocks: samples) are visited; results move
    # with it by several points (docs/accuracy.md), so a single run is one draw
    seed: int = Field(default=0, ge=0)
    # run the reconstruction this many times (seeds seed .. seed+restarts-1) and keep the run that agrees best
    # with the float model on select_on calibration samples held out of it (algorithms/restarts.py)
    restarts: int = Field(default=1, ge=1, le=32)
    select_on: int | None = Field(default=None, ge=1)  # the last this many of the samples fast finetune reads

    @model_validator(mode="after")
    def _restarts_need_held_out(self) -> "FastFinetune":
        if self.restarts > 1 and self.select_on is None:
            raise ValueError(f"restarts: {self.restarts} needs select_on, the number of calibration samples held "
                             "out of the reconstruction that choose between the runs (e.g. select_on: 64)")
        return self


class QuantConfig(_Strict):
    """Everything a user can set about quantization (see the module docstring for the layering)."""

    overall: TensorSpec = TensorSpec()
    input: TensorSpec = TensorSpec()
    weight: TensorSpec = TensorSpec()
    bias: TensorSpec = TensorSpec()
    activation: TensorSpec = TensorSpec()
    op_types: dict[str, LayerOverride] = Field(default_factory=dict)
    layers: list[LayerOverride] = Field(default_factory=list)
    keep_float: list[str] = Field(default_factory=list)
    include_cle: bool = False
    cle_clip_policy: Literal["calibrated", "per_channel"] = "calibrated"  # see quant/algorithms/cle.py
    include_bias_corr: bool | Literal["auto"] = "auto"  # see quant/algorithms/apply.py
    fast_finetune: FastFinetune | None = None
    calib_shapes: dict[str, list[int]] = Field(default_factory=dict)
    calib_dtype: str = "float32"
    max_calib_samples: int | None = Field(default=None, ge=1)
    #: The first this many calibration samples the steps after calibration read again: fast finetune, bias
    #: correction and the output checks of the activation-position and percentile searches (the ranges read
    #: every sample); more costs time and memory in proportion (docs/accuracy.md, "More calibration samples for
    #: fast finetune": EfficientNet-Lite0 on B4096 with 256).
    finetune_samples: int = Field(default=64, ge=1)
    #: Let calibration samples differ from the shape the model is quantized at in the dimensions
    #: the source model leaves dynamic (OCR line widths); off, every sample must have that shape.
    #: None (default): on exactly when the source has dynamic dims that ``input_shapes`` leaves open.
    calib_dynamic_dims: bool | None = None
    report_samples: int = Field(default=2, ge=0)
    #: The quantized model's output cosine similarity to the float model on ``similarity_samples``
    #: calibration samples (or the ``similarity_hold_out`` ones) must reach this, or quantize warns
    #: (``strict``: fails with NPF_QUANT_LOW_SIMILARITY); 0 accepts any model and holds nothing out.
    min_output_cosine: float = Field(default=0.95, ge=0.0, le=1.0)
    #: A signal output (``(N, C <= 2, L >= 256)``: a waveform) that passes ``min_output_cosine`` must
    #: also reach this signal-to-noise ratio to the float model's (dB, energies pooled over the same
    #: samples), or quantize warns NPF_QUANT_LOW_SNR; 0 turns that warning off.
    min_output_snr_db: float = Field(default=20.0, ge=0.0)
    #: how many calibration samples the check reads where it holds none out
    similarity_samples: int = Field(default=16, ge=1)
    #: Hold this many of the last calibration samples out of range setting and judge the accuracy
    #: check on them (``report.hold_out_for_check``; at most a quarter of the samples, from 16 on).
    #: 0 (default): every sample sets ranges and the check reads samples the ranges were set on,
    #: which can flatter; holding 8 of 32 out costs the ranges those samples (``docs/quantization.md``).
    similarity_hold_out: int = Field(default=0, ge=0)
    #: The share of inputs whose label (an ArgMax, ArgMin or TopK in the model, or probability or
    #: logit rows among its outputs) quantization may change, as the accuracy check estimates it from
    #: how near its samples lie to the decision boundary (``report.label_warnings``); above it, quantize
    #: warns NPF_QUANT_LABEL_MARGIN.  1: no such check.
    max_label_change: float = Field(default=0.05, ge=0.0, le=1.0)
    histogram_bins: int = Field(default=2048, ge=128, le=65536)
    #: Percentiles tried, one for the whole model, for the tensors calibrated with the default
    #: ``percentile`` method; the one whose quantized model has the lowest output error on the
    #: calibration samples wins (Horizon's ``calibration_type: default`` idea).  Off when the
    #: config sets a ``percentile`` anywhere, or with fewer than two values.
    percentile_candidates: list[float] = Field(default_factory=lambda: [99.99, 99.999])
    #: Calibration shards run in this many worker processes, or as Ray tasks on the cluster at
    #: ``calib_ray_address`` ('auto', 'local' or HOST:PORT), and their statistics merge into
    #: exactly those of one process (docs/scale-out.md); 1 and no address: this process alone.
    #: The percentile search scores its candidates on the same workers.
    calib_workers: int = Field(default=1, ge=1, le=MAX_WORKERS)
    calib_ray_address: str | None = None

    @field_validator("op_types")
    @classmethod
    def _onnx_op_types(cls, v: dict[str, LayerOverride]) -> dict[str, LayerOverride]:
        """An op type that is not ONNX's (``conv`` for ``Conv``) would match no node, silently."""
        import onnx.defs

        known = {s.name for s in onnx.defs.get_all_schemas()}
        for op in v:
            if op not in known:
                raise NpuflowError("NPF_QUANT_UNKNOWN_OP_TYPE", name=op, suggestion=did_you_mean(op, known))
        return v

    @field_validator("layers")
    @classmethod
    def _one_selector(cls, v: list[LayerOverride]) -> list[LayerOverride]:
        for i, layer in enumerate(v):
            if (layer.name is None) == (layer.name_regex is None):
                raise ValueError(f"layers[{i}] needs exactly one of 'name' or 'name_regex'")
        return v

    @field_validator("histogram_bins")
    @classmethod
    def _bins_multiple_of_4(cls, v: int) -> int:
        if v % 4:
            raise ValueError("histogram_bins must be a multiple of 4 (the range grows by merging bin pairs)")
        return v

    @field_validator("percentile_candidates")
    @classmethod
    def _percentiles_in_range(cls, v: list[float]) -> list[float]:
        bad = [x for x in v if not 0.0 < x <= 100.0]
        if bad:
            raise ValueError(f"percentile_candidates must lie in (0, 100], not {bad[0]}")
        return sorted(set(v))

    def sets_percentile(self) -> bool:
        """Whether any tensor spec of this config names a percentile (then no search runs)."""
        groups = [self, *self.op_types.values(), *self.layers]
        return any(getattr(g, kind).percentile is not None for g in groups
                   for kind in ("overall", *KINDS))

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict) -> "QuantConfig":
        """Validate a plain dict; every schema error becomes ``NPF_QUANT_BAD_CONFIG``."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise NpuflowError("NPF_QUANT_BAD_CONFIG", reason=_describe(exc)) from None

    @classmethod
    def load(cls, path: str | Path) -> "QuantConfig":
        """Read a JSON or YAML config file."""
        p = Path(path)
        if not p.is_file():
            raise NpuflowError("NPF_QUANT_CONFIG_FILE", path=str(p), reason="file not found")
        text = None
        try:
            text = p.read_text()
            data = json.loads(text) if p.suffix.lower() == ".json" else safe_yaml.load(text)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise NpuflowError("NPF_QUANT_CONFIG_FILE", path=str(p), reason=safe_yaml.describe(exc, text)) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise NpuflowError("NPF_QUANT_CONFIG_FILE", path=str(p), reason="the top level must be a mapping")
        return cls.from_dict(data)

    def dump(self, path: str | Path | None = None) -> str:
        """The config as JSON (``.json``) or YAML (anything else); written atomically when ``path`` is given."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        as_json = path is None or Path(path).suffix.lower() == ".json"
        text = json.dumps(data, indent=2) + "\n" if as_json else yaml.safe_dump(data, sort_keys=False)
        if path is not None:
            from ..model import write_atomic

            write_atomic(path, text)
        return text

    # --- resolution -------------------------------------------------------------------------

    @cached_property
    def _regexes(self) -> list[tuple[re.Pattern | None, LayerOverride]]:
        return [(re.compile(layer.name_regex) if layer.name_regex else None, layer) for layer in self.layers]

    def check_names(self, node_names: Iterable[str]) -> None:
        """Every layer override and keep-float entry must match some node (typos fail loudly)."""
        names = list(node_names)
        known = set(names)
        examples = ", ".join(repr(n) for n in names[:3]) or "(none)"
        for i, (rx, layer) in enumerate(self._regexes):
            if rx is None and layer.name not in known:
                raise NpuflowError("NPF_QUANT_UNKNOWN_LAYER", field=f"layers[{i}].name", name=layer.name, examples=examples,
                                   suggestion=did_you_mean(layer.name, known))
            if rx is not None and not any(rx.fullmatch(n) for n in names):
                raise NpuflowError("NPF_QUANT_UNKNOWN_LAYER", field=f"layers[{i}].name_regex", name=layer.name_regex,
                                   examples=examples, suggestion="")
        for name in self.keep_float:
            if name not in known:
                raise NpuflowError("NPF_QUANT_UNKNOWN_LAYER", field="keep_float", name=name, examples=examples,
                                   suggestion=did_you_mean(name, known))

    def resolve(self, target: Target, kind: str, op_type: str | None = None, node: str | None = None) -> TensorSettings:
        """Complete settings for tensor ``kind`` of node ``node`` (op type ``op_type``)."""
        merged = target_defaults(target, kind, finetune=self.fast_finetune is not None)
        merged.update(self.overall.set_fields())
        merged.update(getattr(self, kind).set_fields())
        if op_type is not None and op_type in self.op_types:
            merged.update(self.op_types[op_type].spec(kind))
        if node is not None:
            for rx, layer in self._regexes:
                if (rx is None and layer.name == node) or (rx is not None and rx.fullmatch(node)):
                    merged.update(layer.spec(kind))
        if kind == "bias":
            merged["bit_width"] = BIAS_BITS
        settings = TensorSettings(**merged)
        validate_settings(settings, kind, target, where=node or op_type or kind)
        return settings

    def validate_against(self, target: Target) -> None:
        """Check the global and per-op-type layers once, before any model is read."""
        for kind in KINDS:
            self.resolve(target, kind)
            for op_type in self.op_types:
                self.resolve(target, kind, op_type=op_type)


def target_defaults(target: Target, kind: str, finetune: bool = False) -> dict:
    """Settings implied by the hardware arithmetic (the first layer of the config); ``finetune``:
    the config runs fast finetune, which changes the best power-of-two activation positions."""
    n = target.numerics
    rounding = {"weight": n.round_mode.weight, "bias": n.round_mode.bias}.get(kind, n.round_mode.activation)
    is_weight = kind in ("weight", "bias")
    # Power-of-two weights: the fix position with the least squared error (Vitis AI's default
    # ``diffs``/MinMSE), not the max one: a scale can only halve, so the max position often wastes
    # most of the 8 bits on one outlier weight (measured on PP-OCRv4 rec / EfficientNet-Lite0).
    pow2_weight = kind == "weight" and n.scale_type == "power_of_two"
    # Float-scale activations: a high percentile range, not min/max: a handful of outliers would
    # otherwise set a step far coarser than the bulk needs.  99.999 is the value used without the
    # model-level search of ``percentile_candidates`` (quant/percentile_search.py).
    float_activation = kind == "activation" and n.scale_type == "float"
    # Power-of-two activations under fast finetune: the MSE position (finer, clipping the rare
    # outliers), not min/max.  Rounded to nearest, the outliers min/max keeps carry signal (PP-OCRv4
    # rec's output cosine falls with MSE positions); a reconstructed layer learns its weights against
    # its clipped inputs, but cannot undo the rounding noise of a grid coarse enough to leave a
    # tensor's RMS at 2-7 codes (docs/accuracy.md, "Activation positions for fast finetune").
    pow2_finetuned_activation = kind == "activation" and n.scale_type == "power_of_two" and finetune
    return {
        "bit_width": 8,
        "method": "mse" if pow2_weight or pow2_finetuned_activation else "percentile" if float_activation else "minmax",
        "scale_type": n.scale_type,
        "per_channel": n.weight_per_channel if is_weight else False,
        "symmetric": True if is_weight or n.scale_type == "power_of_two" else n.symmetric,
        "signed": True if is_weight else n.activation_signed,
        "narrow_range": n.narrow_range_weights if kind == "weight" else False,
        "round_mode": rounding,
        "percentile": 99.999,
    }


def validate_settings(s: TensorSettings, kind: str, target: Target, where: str) -> None:
    """Reject combinations the arithmetic cannot express (coded errors)."""

    def conflict(reason: str) -> NpuflowError:
        return NpuflowError("NPF_QUANT_CONFIG_CONFLICT", where=f"{where} ({kind})", reason=reason)

    if kind != "bias":
        allowed = set(target.numerics.bits) | {8} | ({4, 7} if kind == "weight" else set())
        if s.bit_width not in allowed:
            raise NpuflowError(
                "NPF_QUANT_BITS_UNSUPPORTED", bits=s.bit_width, kind=kind, where=where, target=target.name,
                supported="/".join(str(b) for b in sorted(set(target.numerics.bits) | {8})),
            )
    if not s.symmetric and s.method in ("entropy", "mse", "auto") and kind in ("weight", "bias"):
        # asymmetric activations search their (lo, hi) (thresholds.asymmetric_range); an
        # asymmetric constant is quantized over its own min/max, so the method would be ignored
        raise conflict(f"method {s.method!r} applies to symmetric weights; asymmetric weights take their min/max "
                       "(set symmetric: true or method: minmax)")
    if s.scale_type == "power_of_two" and not s.symmetric:
        raise conflict("power_of_two scales need symmetric quantization (zero point 0)")
    if s.per_channel and kind in ("input", "activation"):
        raise conflict("activations are quantized per tensor; per_channel applies to weights and biases")
    if kind in ("weight", "bias") and not s.signed:
        raise conflict("weights and biases are signed")
    if s.narrow_range and not s.signed:
        raise conflict("narrow_range applies to signed ranges only")
    if kind == "weight" and not s.symmetric and s.per_channel:
        raise conflict("per-channel weights are symmetric")


#: Top-level keys of other quantizers' Python APIs (ONNX Runtime's and vai_q_onnx's
#: ``quantize_static``, rknn-toolkit2's ``RKNN.config``) and where npuflow's config says the same:
#: a script ported from them passed these and read only "Extra inputs are not permitted".
_FOREIGN_KEYS = {
    "per_channel": "weight: {per_channel: true}",
    "calibrate_method": "activation: {method: minmax | percentile | entropy | mse | auto}",
    "calibration_method": "activation: {method: minmax | percentile | entropy | mse | auto}",
    "quantized_algorithm": "activation: {method: minmax | percentile | entropy | mse | auto}",
    "quantized_method": "weight: {per_channel: true} (rknn's 'channel') or false ('layer')",
    "quantized_dtype": "overall: {bit_width: 8, signed: true}",
    "activation_type": "activation: {bit_width: 8, signed: true | false}",
    "weight_type": "weight: {bit_width: 8}",
    "nodes_to_exclude": "keep_float: [node names]",
    "op_types_to_quantize": "keep_float (the nodes left in float) or op_types: {OpType: {...}}",
    "extra_options": "one key each: ActivationSymmetric as activation: {symmetric: true}, WeightSymmetric as "
                     "weight: {symmetric: true} (docs/quantization.md, 'Config reference')",
    "quant_format": "no key: every npuflow model is QDQ (QuantizeLinear/DequantizeLinear pairs); leave it out",
}


def _describe(exc: ValidationError, model: type[BaseModel] = QuantConfig) -> str:
    """The first errors of a pydantic validation, each with its key path, the value given and,
    for a misspelt key or choice, the nearest valid one (``activation.methd`` -> ``method``)."""
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = f" (got {value!r})" if not isinstance(value, dict | list) else ""
        if err["type"] == "extra_forbidden" and loc in _FOREIGN_KEYS and model is QuantConfig:
            parts.append(f"{loc}: not a key of npuflow's config{shown}; npuflow writes it as {_FOREIGN_KEYS[loc]}")
            continue
        near = _nearest(err, model)
        parts.append(f"{loc}: {err['msg']}{shown}" + (f" (did you mean {near!r}?)" if near else ""))
    return "; ".join(parts)


def _nearest(err: dict, model: type[BaseModel]) -> str | None:
    """The valid key or choice nearest to what a pydantic error ``err`` refused, if one is close."""
    if err["type"] == "extra_forbidden" and err["loc"]:
        return closest(str(err["loc"][-1]), _fields_at(model, err["loc"][:-1]))
    if err["type"] == "literal_error" and isinstance(err.get("input"), str):
        return closest(err["input"], re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
    return None


def _fields_at(model: type[BaseModel], path: tuple) -> list[str]:
    """The field names of the model found at ``path`` under ``model`` (through optional fields,
    lists and dicts of models), or none when the path leads elsewhere."""
    import types
    import typing

    def bare(t: Any) -> Any:  # X | None -> X
        args = [a for a in typing.get_args(t) if a is not type(None)]
        return args[0] if typing.get_origin(t) in (typing.Union, types.UnionType) and len(args) == 1 else t

    cls: Any = model
    for part in path:
        cls = bare(cls)
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            cls = cls.model_fields[part].annotation
        elif typing.get_origin(cls) in (list, dict):
            cls = typing.get_args(cls)[-1]
        else:
            return []
    cls = bare(cls)
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        return [*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)]
    return []
