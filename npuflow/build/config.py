"""The build config: hb_mapper-style YAML, validated once into typed objects.

The groups and key names are those of Horizon's ``hb_mapper makertbin`` config (seed 004,
spec A.4), so an existing config needs little more than a new ``march``:

* ``model_parameters``, ``input_parameters``, ``calibration_parameters`` and
  ``compiler_parameters`` must all be present; ``npuflow`` (a full quantizer config) is optional;
* per-input values are separated by ``;`` and per-channel numbers by spaces;
* spellings the seed uses in two ways are both accepted (``mean_value``/``mean_values``,
  ``scale_value``/``scale_values``, ``per_channel``/``perchannel``, ``run_on_bpu``/``run_on_npu``).

Validation happens in two steps because half of it needs the model: :func:`parse_config`
checks keys, types and enums of the file alone; :func:`resolve_inputs` then matches the
per-input lists against the model's inputs (counts, channels, nv12 sizes, type pairs).  Every
failure is an :class:`~npuflow.errors.NpuflowError` whose message names the key and value.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import safe_yaml
from ..errors import NpuflowError, closest
from ..model import parse_shape
from ..outputs import plain_name_problem
from ..passes.preprocess import InputPreprocess

TYPES_TRAIN = ("rgb", "bgr", "yuv444", "gray", "featuremap")
TYPES_RT = ("nv12", "yuv444", "rgb", "bgr", "gray", "featuremap")
LAYOUTS = ("NCHW", "NHWC")
NORM_TYPES = ("data_mean_and_scale", "data_mean", "data_scale", "no_preprocess")
SPACES = ("regular", "bt601_video")

#: Which runtime types can feed which train type (seed 004 L1162-1178, spec A.5.2).
ALLOWED_RT: dict[str, tuple[str, ...]] = {
    "yuv444": ("nv12", "yuv444"),
    "rgb": ("nv12", "yuv444", "rgb", "bgr"),
    "bgr": ("nv12", "yuv444", "rgb", "bgr"),
    "gray": ("gray",),
    "featuremap": ("featuremap",),
}
#: Channels each image type has; featuremaps may have any number.
CHANNELS = {"rgb": 3, "bgr": 3, "yuv444": 3, "gray": 1}
#: The seed's name for the data the ONNX models take after the hardware's colour step (A.5.3).
INTERMEDIATE_TYPE = {
    "nv12": "yuv444_128", "yuv444": "yuv444_128", "rgb": "RGB_128", "bgr": "BGR_128",
    "gray": "GRAY_128", "featuremap": "featuremap",
}
#: Calibration methods: hb_mapper's three plus the quantizer's own.
CALIBRATION_TYPES = ("default", "kl", "max", "auto", "minmax", "percentile", "entropy", "mse")

GROUPS = ("model_parameters", "input_parameters", "calibration_parameters", "compiler_parameters")


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


log = logging.getLogger(__name__)

Text = str | int | float  # YAML turns '1' or '0.017' into numbers; the parser reads them as text


class ModelParameters(_Group):
    onnx_model: str
    march: str = "bernoulli2"
    output_model_file_prefix: str
    working_dir: str = "model_output"
    layer_out_dump: bool = False
    log_level: Literal["debug", "info", "warn"] = "debug"
    output_nodes: str | None = None
    # npuflow's own (check/quantize --freeze-input): 'sr=16000; ...' turns inputs into constants
    freeze_input: str | None = None

    @field_validator("output_model_file_prefix")
    @classmethod
    def _plain_prefix(cls, v: str) -> str:
        """The prefix names files inside ``working_dir``: ``../x`` or ``/x`` would write (and a
        failed build once deleted) files anywhere, ``''`` hidden ones."""
        problem = plain_name_problem(v)
        if problem:
            raise NpuflowError("NPF_BUILD_BAD_VALUE", group="model_parameters", key="output_model_file_prefix",
                               value=v, reason=f"it must be a plain file name: {problem}")
        return v


class InputParameters(_Group):
    input_name: str | None = None
    input_type_train: str
    input_layout_train: str | None = None
    input_type_rt: str
    input_layout_rt: str | None = None
    input_space_and_range: str = "regular"
    input_shape: str | None = None
    input_batch: Text | None = None
    norm_type: str
    mean_value: Text | None = Field(None, validation_alias=AliasChoices("mean_value", "mean_values"))
    scale_value: Text | None = Field(None, validation_alias=AliasChoices("scale_value", "scale_values"))

    @field_validator("mean_value", "scale_value", mode="before")
    @classmethod
    def _number_lists(cls, v: Any) -> Any:
        """YAML lists as rknn-toolkit2 writes them (``mean_values: [[123.7, 116.3, 103.5]]``, one
        list per input) or a flat per-channel list, read as the text form ``'123.7 116.3 103.5'``
        (inputs joined by ``;``); anything else is left for the type check to refuse."""
        if not isinstance(v, list) or not v:
            return v
        per_input = v if all(isinstance(x, list) for x in v) else [v]
        if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for x in per_input for n in x):
            return v
        return "; ".join(" ".join(str(n) for n in x) if x else "None" for x in per_input)


class CalibrationParameters(_Group):
    cal_data_dir: str
    #: folder(s) of evaluation samples, one per input as cal_data_dir, in the same format: the accuracy
    #: check judges them instead of calibration samples (``npuflow.quantize(eval_data=...)``)
    eval_data_dir: str | None = None
    preprocess_on: bool = False
    calibration_type: str
    max_percentile: float = Field(1.0, ge=0.0, le=1.0)
    per_channel: bool = Field(False, validation_alias=AliasChoices("per_channel", "perchannel"))
    run_on_cpu: str | None = None
    run_on_npu: str | None = Field(None, validation_alias=AliasChoices("run_on_npu", "run_on_bpu"))
    #: hb_mapper's dtype of the raw (numpy.tofile) calibration files; unset: read from each file's size
    cal_data_type: Literal["float32", "uint8"] | None = None
    #: QAT by distillation from the float model after PTQ (npuflow.torch.onnx_qat; needs torch):
    #: passes over the calibration samples, or minutes of training; at most one of the two.
    qat_epochs: float | None = Field(None, gt=0)
    qat_minutes: float | None = Field(None, gt=0)
    #: local data-parallel processes of that QAT (torch DDP over gloo; docs/scale-out.md)
    qat_nproc: int = Field(1, ge=1, le=256)
    #: the torch device the QAT student trains on ("cpu", "cuda", "cuda:1"; docs/qat.md)
    qat_device: str = "cpu"
    #: decay of a moving average of the QAT weights, judged beside the final ones (docs/qat.md, "Weight EMA")
    qat_ema: float | None = Field(None, gt=0, lt=1)
    #: the QAT distillation loss (``npuflow qat --loss``; "ctc" for text recognisers, docs/qat.md)
    qat_loss: Literal["auto", "kl", "mse", "ctc"] = "auto"
    #: accuracy target (npuflow.analyze.auto_quant): the lowest output cosine on the calibration
    #: samples that the cheapest accuracy steps run until, every layer kept on the accelerator
    min_similarity: float | None = Field(None, gt=0, le=1)
    #: with min_similarity: seconds after which no further step starts
    time_budget: float | None = Field(None, gt=0)
    #: with min_similarity: when the steps fall short, the fewest layers move to float on the CPU
    allow_cpu_fallback: bool = False

    @property
    def wants_qat(self) -> bool:
        """Whether the config asks for QAT (a budget in epochs or in minutes)."""
        return self.qat_epochs is not None or self.qat_minutes is not None


class CompilerParameters(_Group):
    compile_mode: Literal["latency", "bandwidth"] = "latency"
    debug: bool = False
    core_num: int = Field(1, ge=1, le=64)
    optimize_level: Literal["O0", "O1", "O2", "O3"]


class CustomOpParameters(_Group):
    """Horizon's optional ``custom_op`` group: Python files that register the model's custom ops
    (``npuflow.register_op`` / ``register_op_library``; docs/custom-ops.md), run before the model loads."""

    custom_op_method: Literal["register"] = "register"
    op_register_files: str  # file names, ';'-separated
    custom_op_dir: str = "."  # their folder, relative to the config file


class BuildConfig(_Group):
    """A whole config file, checked for keys, types and enums (not yet against the model)."""

    model_parameters: ModelParameters
    input_parameters: InputParameters
    calibration_parameters: CalibrationParameters
    compiler_parameters: CompilerParameters
    custom_op: CustomOpParameters | None = None
    npuflow: dict[str, Any] | None = None
    #: Folder relative paths in the file are resolved from (the config file's folder).
    base_dir: str = "."

    def path(self, value: str) -> Path:
        """A path from the config, resolved against the config file's folder."""
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else Path(self.base_dir) / p

    def enabled_values(self) -> dict[str, Any]:
        """The config as the user wrote it (aliases resolved), for the build report and .npuf."""
        return self.model_dump(mode="json", exclude={"base_dir"})


@dataclass(frozen=True)
class InputSpec:
    """One model input after matching the config against the model: everything preprocessing,
    calibration and the runtime need to know about it."""

    name: str
    shape: tuple[int, ...]  # train shape, in layout_train
    type_train: str
    layout_train: str
    type_rt: str
    layout_rt: str
    space_and_range: str
    norm_type: str
    mean: tuple[float, ...] | None
    scale: tuple[float, ...] | None
    batch: int
    cal_data_dir: Path
    eval_data_dir: Path | None = None

    @property
    def intermediate_type(self) -> str:
        return INTERMEDIATE_TYPE[self.type_rt]

    def preprocess(self) -> InputPreprocess:
        return InputPreprocess(
            name=self.name, shape=self.shape, type_train=self.type_train, layout_train=self.layout_train,
            type_rt=self.type_rt, layout_rt=self.layout_rt, space_and_range=self.space_and_range,
            mean=self.mean, scale=self.scale,
        )


# --- step 1: the file ------------------------------------------------------------------------

def load_config(source: str | os.PathLike | Mapping[str, Any] | BuildConfig) -> BuildConfig:
    """A path to a YAML file, an already-parsed mapping, or a config -> a validated config."""
    if isinstance(source, BuildConfig):
        return source
    if isinstance(source, Mapping):
        return parse_config(source, base_dir=".")
    path = Path(source)
    if not path.is_file():
        raise NpuflowError("NPF_BUILD_CONFIG_NOT_FOUND", path=str(path))
    text = None
    try:
        text = path.read_text(encoding="utf-8")
        data = safe_yaml.load(text)
    except (yaml.YAMLError, UnicodeDecodeError, safe_yaml.YamlTooLarge) as exc:
        raise NpuflowError("NPF_BUILD_CONFIG_INVALID_YAML", path=str(path), reason=safe_yaml.describe(exc, text)) from None
    if not isinstance(data, Mapping):
        raise NpuflowError(
            "NPF_BUILD_CONFIG_INVALID_YAML", path=str(path),
            reason=f"the top level is a {type(data).__name__}, not a mapping of groups",
        )
    return parse_config(data, base_dir=str(path.resolve().parent), source=str(path))


def parse_config(data: Mapping[str, Any], *, base_dir: str = ".", source: str = "<config>") -> BuildConfig:
    """Check groups and keys first, every group's (missing and unknown keys, values pydantic refuses),
    and raise them together: one problem as its own code, several as ``NPF_BUILD_CONFIG_PROBLEMS``
    listing each (a config missing two groups and the model path was reported one group at a time,
    round 24); then the checks across keys."""
    top = (*GROUPS, "custom_op", "npuflow")
    problems: list[NpuflowError] = []
    unknown_top = _unknown_keys("config", data, top)
    # a misspelt group ('calibration_parameter') is named with the nearest valid one by the unknown-key
    # problem, not reported again as the group it was meant to be being missing
    meant = {m for k in data if k not in top and (m := closest(str(k), GROUPS, cutoff=0.75)) is not None}
    missing = [g for g in GROUPS if g not in data and g not in meant]
    if missing:
        problems.append(NpuflowError("NPF_BUILD_MISSING_KEYS", group="config", keys=_quoted(missing)))
    if unknown_top is not None:
        problems.append(unknown_top)
    groups: dict[str, Any] = {}
    for group, cls in zip(GROUPS, (ModelParameters, InputParameters, CalibrationParameters, CompilerParameters)):
        if group not in data:
            continue
        body = data[group]
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            problems.append(NpuflowError("NPF_BUILD_BAD_VALUE", group="config", key=group, value=body,
                                         reason="a group must be a mapping of keys to values"))
            continue
        if (unknown := _unknown_keys(group, body, _accepted_keys(cls))) is not None:
            problems.append(unknown)
        validated, refused = _validate_all(group, cls, body)
        problems += refused
        if validated is not None:
            groups[group] = validated
    if problems:
        raise _together(problems, source)
    extra = data.get("npuflow")
    if extra is not None and not isinstance(extra, Mapping):
        raise NpuflowError(
            "NPF_BUILD_BAD_VALUE", group="config", key="npuflow", value=extra,
            reason="the npuflow section must be a mapping (a quantizer config)",
        )
    if extra:
        from ..quant.config import QuantConfig

        QuantConfig.from_dict(dict(extra))  # a misspelt key fails now (with a suggestion), not after check
    inp: InputParameters = groups["input_parameters"]
    for key, allowed in (("input_type_train", TYPES_TRAIN), ("input_type_rt", TYPES_RT),
                         ("input_layout_train", LAYOUTS), ("input_layout_rt", LAYOUTS),
                         ("norm_type", NORM_TYPES), ("input_space_and_range", SPACES)):
        for v in split_values(getattr(inp, key)):
            if v is not None and v not in allowed:
                raise NpuflowError("NPF_BUILD_BAD_ENUM", group="input_parameters", key=key, value=v,
                                   allowed=", ".join(allowed))
    cal: CalibrationParameters = groups["calibration_parameters"]
    if cal.qat_epochs is not None and cal.qat_minutes is not None:
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason="calibration_parameters sets both qat_epochs and qat_minutes")
    if cal.min_similarity is not None and cal.eval_data_dir is not None:
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="calibration_parameters", key="eval_data_dir",
                           value=cal.eval_data_dir, reason="the accuracy target's steps (min_similarity) are judged "
                           "on the calibration samples; drop one of the two")
    if cal.min_similarity is None and (cal.time_budget is not None or cal.allow_cpu_fallback):
        key = "time_budget" if cal.time_budget is not None else "allow_cpu_fallback"
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="calibration_parameters", key=key,
                           value=getattr(cal, key), reason="it applies to the accuracy target: set min_similarity too")
    if cal.calibration_type not in CALIBRATION_TYPES:
        raise NpuflowError("NPF_BUILD_BAD_ENUM", group="calibration_parameters", key="calibration_type",
                           value=cal.calibration_type, allowed=", ".join(CALIBRATION_TYPES))
    custom = data.get("custom_op")
    if custom is not None:
        if not isinstance(custom, Mapping):
            raise NpuflowError("NPF_BUILD_BAD_VALUE", group="config", key="custom_op", value=custom,
                               reason="a group must be a mapping of keys to values")
        _check_keys("custom_op", custom, _accepted_keys(CustomOpParameters))
        groups["custom_op"] = _validate("custom_op", CustomOpParameters, custom)
    return BuildConfig(**groups, npuflow=dict(extra) if extra else None, base_dir=base_dir)


def _accepted_keys(cls: type[_Group]) -> tuple[str, ...]:
    keys: list[str] = []
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        keys.extend(alias.choices if isinstance(alias, AliasChoices) else [name])
    return tuple(keys)


#: hb_mapper keys with no meaning in npuflow: what to do instead, said where a config holds one
#: (a user's hb_mapper YAML read "Wrong keys" with nothing to go on).
_HB_MAPPER_ONLY = {
    "remove_node_type": "Remove the input/output quantize or transpose steps after the build with "
                        "`npuflow modify MODEL.npuf --remove NODE` (hb_model_modifier's role).",
    "remove_node_name": "Remove the input/output quantize or transpose steps after the build with "
                        "`npuflow modify MODEL.npuf --remove NODE` (hb_model_modifier's role).",
    "input_source": "The input's runtime format is input_parameters.input_type_rt; delete the key.",
    "max_time_per_fc": "npuflow's compiler has no per-function time limit; delete the key.",
    "jobs": "npuflow's compiler has no parallel-jobs setting; delete the key.",
    "advice": "Per-layer costs are in `npuflow perf MODEL.npuf`; delete the key.",
}


def _together(problems: list[NpuflowError], source: str) -> NpuflowError:
    """One problem as itself; several as ``NPF_BUILD_CONFIG_PROBLEMS``, each on its own line with its code."""
    if len(problems) == 1:
        return problems[0]
    # an unknown key's nearest valid spelling is what fixes it: kept from that problem's hint
    listed = "".join(f"\n  - [{p.code}] {p.message}" + (f" ({str(p.fields['suggestion']).strip()})" if
                     p.code == "NPF_BUILD_UNKNOWN_KEYS" and p.fields.get("suggestion") else "") for p in problems)
    return NpuflowError("NPF_BUILD_CONFIG_PROBLEMS", path=source, count=len(problems), problems=listed)


def _check_keys(group: str, body: Mapping[str, Any], allowed: Sequence[str]) -> None:
    if (unknown := _unknown_keys(group, body, allowed)) is not None:
        raise unknown


def _unknown_keys(group: str, body: Mapping[str, Any], allowed: Sequence[str]) -> NpuflowError | None:
    """``NPF_BUILD_UNKNOWN_KEYS`` for the keys of ``body`` not in ``allowed`` (with the nearest valid
    ones and hb_mapper-only advice), or None."""
    unknown = [str(k) for k in body if k not in allowed]
    if not unknown:
        return None
    near = [m for k in unknown if (m := closest(k, allowed, cutoff=0.75)) is not None]
    suggestion = f"Did you mean {_quoted(near)}? " if near else ""
    if group == "model_parameters" and {"caffe_model", "prototxt"} & set(unknown):
        suggestion = "npuflow reads ONNX models only: convert Caffe models to ONNX and set onnx_model. "
    hb_only = [k for k in unknown if k in _HB_MAPPER_ONLY]
    if hb_only:
        advice = " ".join(dict.fromkeys(_HB_MAPPER_ONLY[k] for k in hb_only))
        suggestion += f"{_quoted(hb_only)}: hb_mapper key(s) npuflow does not read. {advice} "
    return NpuflowError("NPF_BUILD_UNKNOWN_KEYS", group=group, keys=_quoted(unknown),
                        suggestion=suggestion, allowed=", ".join(allowed))


def _validate(group: str, cls: type[_Group], body: Mapping[str, Any]) -> _Group:
    validated, problems = _validate_all(group, cls, body)
    if problems:
        raise _together(problems, f"the {group} group")
    return validated


def _validate_all(group: str, cls: type[_Group], body: Mapping[str, Any]) -> tuple[_Group | None, list[NpuflowError]]:
    """The validated group, or None and every problem pydantic found in it: its missing keys as one
    ``NPF_BUILD_MISSING_KEYS``, then each refused value (``NPF_BUILD_BAD_ENUM`` / ``NPF_BUILD_BAD_VALUE``)."""
    try:
        return cls.model_validate(dict(body)), []
    except ValidationError as exc:
        errors = exc.errors()
    problems = []
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
    if missing:
        problems.append(NpuflowError("NPF_BUILD_MISSING_KEYS", group=group, keys=_quoted(missing)))
    # a value a union of types refuses gives one error per member ('a valid string', '... integer',
    # '... number'): one problem per key, its reasons joined
    reasons: dict[str, list[str]] = {}
    for err in errors:
        if err["type"] in ("missing", "extra_forbidden"):  # an unknown key is _unknown_keys' problem
            continue
        key = str(err["loc"][0]) if err["loc"] else "?"
        value = body.get(key, err.get("input"))
        if err["type"] == "literal_error":
            allowed = err.get("ctx", {}).get("expected", "")
            problems.append(NpuflowError("NPF_BUILD_BAD_ENUM", group=group, key=key, value=value,
                                         allowed=allowed.replace("'", "")))
        elif key not in reasons:
            reasons[key] = [err["msg"]]
            problems.append((key, value))  # its error made below, once every reason is in
        elif err["msg"] not in reasons[key]:
            reasons[key].append(err["msg"])
    return None, [p if isinstance(p, NpuflowError) else NpuflowError(
        "NPF_BUILD_BAD_VALUE", group=group, key=p[0], value=p[1], reason="; ".join(reasons[p[0]])) for p in problems]


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def split_values(value: Text | None) -> list[str | None]:
    """``'a; b;None'`` -> ``['a', 'b', None]``; ``None`` (key absent) -> ``[]``."""
    if value is None:
        return []
    parts = [p.strip() for p in str(value).split(";")]
    if parts and parts[-1] == "" and len(parts) > 1:  # a trailing ';' is harmless
        parts.pop()
    return [None if p in ("", "None", "none", "null") else p for p in parts]


# --- step 2: against the model ---------------------------------------------------------------

def resolve_inputs(config: BuildConfig, model_inputs: Mapping[str, Sequence[int] | None]) -> list[InputSpec]:
    """Match the per-input values against the model's inputs (name -> shape, ``None`` where
    dynamic) and check what needs both: counts, channels, nv12 sizes and type pairs.  Every model
    input must be named: one left out has no calibration folder, and the build failed later with a
    calibration mismatch or a dynamic-shape hint about a CLI flag (round 23b)."""
    inp = config.input_parameters
    names = split_values(inp.input_name)
    if not names:
        if len(model_inputs) != 1:
            raise NpuflowError("NPF_BUILD_INPUT_NAME_REQUIRED", count=len(model_inputs),
                               inputs=", ".join(model_inputs))
        names = list(model_inputs)
    for n in names:
        if n not in model_inputs:
            raise NpuflowError("NPF_MODEL_UNKNOWN_INPUT", name=n, inputs=", ".join(model_inputs))
    if missing := [n for n in model_inputs if n not in names]:  # it would have no calibration folder
        raise NpuflowError("NPF_BUILD_INPUT_NOT_NAMED", named=", ".join(map(repr, names)),
                           missing=", ".join(map(repr, missing)))
    count = len(names)

    def per_input(key: str, *, required: bool, broadcast: bool = False) -> list[str | None]:
        values = split_values(getattr(inp, key))
        if not values:
            if required:
                raise NpuflowError("NPF_BUILD_MISSING_KEYS", group="input_parameters", keys=repr(key))
            return [None] * count
        if broadcast and len(values) == 1:
            return values * count
        if len(values) != count:
            raise NpuflowError("NPF_BUILD_COUNT_MISMATCH", key=key, got=len(values), expected=count,
                               inputs=", ".join(names))
        return values

    types_train = per_input("input_type_train", required=True)
    types_rt = per_input("input_type_rt", required=True)
    layouts_train = per_input("input_layout_train", required=False)
    layouts_rt = per_input("input_layout_rt", required=False)
    shapes = per_input("input_shape", required=False)
    # one value for every input, as the template writes it: hb_mapper's input_batch is one number for the
    # model, and a two-input stereo/optical-flow config copied from the template failed on it (round 28a)
    batches = per_input("input_batch", required=False, broadcast=True)
    norms = per_input("norm_type", required=True)
    means = per_input("mean_value", required=False)
    scales = per_input("scale_value", required=False)
    spaces = per_input("input_space_and_range", required=False, broadcast=True)
    dirs = split_values(config.calibration_parameters.cal_data_dir)
    if len(dirs) != count:
        raise NpuflowError("NPF_BUILD_COUNT_MISMATCH", key="cal_data_dir", got=len(dirs), expected=count,
                           inputs=", ".join(names))
    eval_dirs = split_values(config.calibration_parameters.eval_data_dir)
    if eval_dirs and (len(eval_dirs) != count or None in eval_dirs):
        raise NpuflowError("NPF_BUILD_COUNT_MISMATCH", key="eval_data_dir", got=len(eval_dirs), expected=count,
                           inputs=", ".join(names))

    specs = []
    for i, name in enumerate(names):
        train, rt = str(types_train[i]), str(types_rt[i])
        if rt not in ALLOWED_RT[train]:
            raise NpuflowError("NPF_BUILD_TYPE_PAIR", input=name, rt=rt, train=train,
                               allowed=", ".join(ALLOWED_RT[train]))
        shape = _input_shape(name, shapes[i], model_inputs[name])
        layout_train = layouts_train[i] or _guess_layout(shape)
        layout_rt = layouts_rt[i] or layout_train
        spec_shape = tuple(shape)
        channels = (spec_shape[1] if layout_train == "NCHW" else spec_shape[-1]) if len(spec_shape) > 1 else 1
        if len(spec_shape) != 4 and train != "featuremap":
            raise NpuflowError("NPF_BUILD_TYPE_CHANNELS", input=name, train=train, want=CHANNELS[train],
                               shape="x".join(map(str, spec_shape)), layout=layout_train, got="no channel axis (not 4-D)")
        if train in CHANNELS and channels != CHANNELS[train]:
            raise NpuflowError("NPF_BUILD_TYPE_CHANNELS", input=name, train=train, want=CHANNELS[train],
                               shape="x".join(map(str, spec_shape)), layout=layout_train, got=channels)
        if rt == "nv12":
            h, w = (spec_shape[2], spec_shape[3]) if layout_train == "NCHW" else (spec_shape[1], spec_shape[2])
            if h % 2 or w % 2:
                raise NpuflowError("NPF_BUILD_NV12_ODD", input=name, height=h, width=w)
        space = spaces[i] or "regular"
        if space != "regular" and rt not in ("nv12", "yuv444"):
            raise NpuflowError("NPF_BUILD_BAD_VALUE", group="input_parameters", key="input_space_and_range",
                               value=space, reason=f"it only applies to nv12/yuv444 input_type_rt, input {name!r} is {rt}")
        norm = str(norms[i])
        mean = _norm_values("mean_value", name, means[i], channels, needed="mean" in norm)
        scale = _norm_values("scale_value", name, scales[i], channels, needed="scale" in norm)
        _warn_unused_norm(name, norm, {"mean_value": (means[i], "mean" in norm), "scale_value": (scales[i], "scale" in norm)})
        specs.append(InputSpec(
            name=name, shape=spec_shape, type_train=train, layout_train=layout_train, type_rt=rt,
            layout_rt=layout_rt, space_and_range=space, norm_type=norm,
            mean=mean if "mean" in norm else None, scale=scale if "scale" in norm else None,
            batch=_batch(batches[i]), cal_data_dir=config.path(str(dirs[i])),
            eval_data_dir=config.path(str(eval_dirs[i])) if eval_dirs else None,
        ))
    return specs


def _warn_unused_norm(name: str, norm: str, given: Mapping[str, tuple[str | None, bool]]) -> None:
    """Say so when a mean or scale is given for an input whose ``norm_type`` does not apply it
    (``data_scale`` with a ``mean_value``: an rknn-style config's mean): the built model then feeds
    the network unnormalised pixels, and the build's cosine, measured against the same
    preprocessing, cannot show it.  hb_mapper ignores the value too, so this warns and goes on."""
    for key, (text, applied) in given.items():
        if text is not None and not applied:
            log.warning("input_parameters.%s %r of input %r is not applied: norm_type %r uses %s (data_mean_and_scale "
                        "computes (x - mean) * scale)", key, text, name, norm,
                        {"data_mean": "mean_value only", "data_scale": "scale_value only"}.get(norm, "neither"))


def _input_shape(name: str, text: str | None, model_shape: Sequence[int] | None) -> list[int]:
    if text is not None:
        return parse_shape(text)
    if model_shape is None or any(d <= 0 for d in model_shape):
        raise NpuflowError("NPF_BUILD_MISSING_KEYS", group="input_parameters",
                           keys=f"'input_shape' (input {name!r} has dynamic dimensions)")
    return list(model_shape)


def _guess_layout(shape: Sequence[int]) -> str:
    """The model's own layout when the config does not say: channels-last only when the last
    axis looks like image channels and the second does not."""
    if len(shape) == 4 and shape[1] not in (1, 3, 4) and shape[3] in (1, 3, 4):
        return "NHWC"
    return "NCHW"


#: Largest float32: mean/scale values become float32 constants of the preprocessing nodes.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _norm_values(key: str, name: str, text: str | None, channels: int, *, needed: bool) -> tuple[float, ...] | None:
    if text is None:
        if needed:
            raise NpuflowError("NPF_BUILD_MISSING_KEYS", group="input_parameters",
                               keys=f"{key!r} (norm_type of input {name!r} needs it)")
        return None
    try:
        values = tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="input_parameters", key=key, value=text,
                           reason="expected numbers separated by spaces") from None
    if not all(abs(v) <= _FLOAT32_MAX for v in values):  # also false for nan
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="input_parameters", key=key, value=text,
                           reason="every number must be finite and fit a float32 (the model computes in float32)")
    if len(values) not in (1, channels):
        raise NpuflowError("NPF_BUILD_NORM_VALUE_COUNT", key=key, input=name, got=len(values), channels=channels)
    return values


def _batch(text: str | None) -> int:
    if text is None:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= 128:
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="input_parameters", key="input_batch", value=text,
                           reason="an integer from 1 to 128 is expected")
    if int(text) != 1:
        # hb_mapper compiles this batch; npuflow compiles the batch of input_shape, and a build
        # that went on would give a batch-1 model the user did not ask for
        raise NpuflowError("NPF_BUILD_BAD_VALUE", group="input_parameters", key="input_batch", value=text,
                           reason="npuflow compiles the batch of input_shape (e.g. '4x3x224x224', where the "
                                  "model allows it); leave input_batch at 1")
    return int(text)
