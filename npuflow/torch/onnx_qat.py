"""Label-free QAT of an ONNX model: ``qat_onnx(model.onnx, target, data)`` -> a QDQ model to compile.

For a user who has only the float ONNX file and unlabelled samples (photos, text lines, audio):

1. **Start from the best PTQ** npuflow has: :func:`npuflow.quantize` with AdaRound by default
   (``ptq_config``).  Its legalised, optimised float graph -- BatchNorm already folded into the
   convolutions, activations in the target's arithmetic -- is the graph QAT trains, so the
   training forward is the compiled model's arithmetic from the first step.
2. **Convert** that graph to torch with ``onnx2torch`` (a maintained converter; an operator it
   cannot convert is the coded error ``NPF_QAT_UNSUPPORTED_OP`` naming the op and the node) and
   insert fake quantization with :func:`npuflow.torch.prepare_qat` (learnable power-of-two
   thresholds, TQT, on DPUs; LSQ step sizes on float-scale targets).
3. **Initialise from PTQ**: every quantizer takes the PTQ model's scale for the same ONNX tensor
   and every weight/bias takes the PTQ model's (AdaRound-rounded) integer values, so training
   starts at the PTQ model's output instead of from fresh observers (which put EfficientNet-Lite0
   at 46 % agreement where AdaRound gives 89 %).
4. **Distil** from the FP32 model (ONNX Runtime on the optimised float model): KL divergence on
   logits or probabilities, normalised squared error on other outputs, on lightly augmented user
   samples (gain, offset, noise, small shifts; the teacher sees the same augmented sample, so no
   label is needed).  Adam with two parameter groups and a cosine decay, for ``epochs`` passes
   or ``minutes`` of wall time.
5. **Keep the better** of the start and the end: the mean output cosine to FP32 on samples held
   out of training (a fifth of the user's, at most 64; with fewer than 10 samples, the first 64
   training ones) decides, so QAT does not return a model worse than its PTQ start on data it did
   not train on (the result says which was kept).  Judged on training samples, PP-OCRv4 rec's
   trained model looked better (cosine 0.9456 -> 0.9509) and was 25 points worse on held-out lines.
6. **Export** with :func:`npuflow.torch.export_qat`: the QDQ model that ``npuflow compile`` turns
   into a ``.npuf`` whose outputs equal the torch forward bit for bit.

The deployed graph has batch 1 (the shapes PTQ quantized at); training runs several samples per
step by turning reshapes with a literal batch of 1 into ``-1`` after checking, on the samples,
that a stacked batch gives each sample's own result (otherwise it trains one sample per forward).
Data parallel (``nproc``, or a torchrun launch; docs/scale-out.md): the ranks build the same
student from the one PTQ result, draw and augment the same global batch, and each trains on its
rows with its loss weighted by its share, so a step is one process's step on the global batch.
Checkpoints (``checkpoint``/``resume``) carry the model, Adam, the generator and the position in
the current pass, so a resumed run ends with the uninterrupted run's model.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from .. import model as model_io
from ..errors import NpuflowError
from ..ort_session import open_session
from ..quant.config import QuantConfig
from ..quant.data import CalibrationSource, InputSpec, Sample
from ..quant.legalize import legalize
from ..quant.pipeline import QuantizedModel, config_of, quantize
from ..targets import Target, load_target
from .config import QatConfig, qat_config
from .layers import QatWeighted
from .onnx_convert import load_onnx2torch
from .distributed_launch import DEFAULT_TIMEOUT_MINUTES, join_launched, launched, spawn
from .ptq_init import init_from_ptq
from .qat import QatModel, distributed, export_qat, load_checkpoint, prepare_qat, save_checkpoint

Progress = Callable[..., None]
#: What PTQ runs when the caller gives no ``ptq_config``: AdaRound, npuflow's best all-accelerator PTQ.
DEFAULT_PTQ = {"fast_finetune": {"method": "adaround"}}
_EVAL_SAMPLES = 64  # samples (unaugmented) that decide between the PTQ start and the trained model
_MIN_HELD_OUT_SET = 10  # from this many samples on, a fifth of them is held out of training to decide


@dataclass
class OnnxQatResult:
    """What :func:`qat_onnx` produced: the QDQ model to compile and how training went."""

    model: onnx.ModelProto  # QDQ model in the quantized-model format (export_qat)
    qat: QatModel  # the trained torch model; its eval forward is the deployed integer model
    ptq: QuantizedModel  # the PTQ starting point
    start_cosine: float  # mean output cosine to FP32 on the evaluation samples, PTQ start
    trained_cosine: float  # the same after training
    kept: Literal["trained", "ptq start"]
    steps: int
    epochs: float
    seconds: float
    batch: int
    losses: list[float] = field(default_factory=list)  # distillation loss per step
    report: dict = field(default_factory=dict)

    @property
    def cosine(self) -> float:
        """The output cosine of the model returned."""
        return self.trained_cosine if self.kept == "trained" else self.start_cosine

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``quantized_model.onnx`` (compile this), ``ptq_model.onnx`` (the start) and
        ``qat_report.json`` into ``out_dir`` as one set (an earlier run's files stay on failure)."""
        import json

        from ..outputs import StagedOutputs

        writers = {
            "quantized_model.onnx": lambda p: model_io.save(self.model, p),
            "ptq_model.onnx": lambda p: model_io.save(self.ptq.model, p),
            "qat_report.json": lambda p: model_io.write_atomic(p, json.dumps(self.report, indent=1) + "\n"),
        }
        with StagedOutputs(Path(out_dir), "qat", list(writers)) as stage:
            for name, write in writers.items():
                write(stage.path(name))
            published = stage.publish()
        return {name.rsplit(".", 1)[0]: path for name, path in published.items()}


def qat_onnx(model: model_io.ModelLike, target: str | Target, data: Any, *, epochs: float | None = None,
             minutes: float | None = None, ptq_config: QuantConfig | Mapping | str | os.PathLike | None = None,
             config: QatConfig | dict | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
             batch: int = 8, lr: float = 0.05, quantizer_lr: float = 1e-2, temperature: float = 2.0,
             loss: Literal["auto", "kl", "mse"] = "auto", augment: bool = True, seed: int = 0,
             ptq: QuantizedModel | None = None, output: str | os.PathLike | None = None,
             progress: Progress | None = None, nproc: int = 1, checkpoint: str | os.PathLike | None = None,
             checkpoint_every: int | None = None, resume: str | os.PathLike | None = None,
             timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> OnnxQatResult | None:
    """QAT of a float ONNX model on unlabelled ``data`` for ``target``; see the module docstring.

    ``data``: what :func:`npuflow.quantize` takes (a folder of ``.npy`` files, arrays, dicts).
    Exactly one of ``epochs`` (passes over the samples) and ``minutes`` (training wall time)
    bounds training.  ``ptq_config``: the PTQ start (default AdaRound); ``config``: QAT options
    (:class:`~npuflow.torch.QatConfig`; quantizers are learnable unless it says otherwise).
    ``ptq``: a PTQ result of this model and data to start from instead of quantizing again
    (``npuflow build`` passes its own).  ``lr`` is in units of each layer's weight quantization
    step (see :func:`_parameter_groups`).  ``output``: a folder to save the result into
    (:meth:`OnnxQatResult.save`).

    Data parallel (docs/scale-out.md): ``nproc`` > 1 trains in that many local gloo processes,
    each on its share of every step's ``batch`` samples; under torchrun (or in a process group
    the caller joined) every rank calls this function, rank 0 returns the result and the others
    None.  ``checkpoint``: a file written every ``checkpoint_every`` steps (default: each epoch)
    and at the end; ``resume``: such a file to continue from (``NPF_QAT_CHECKPOINT_MISMATCH``
    when it is another run's).  ``timeout_minutes`` bounds each collective call.
    """
    if (epochs is None) == (minutes is None):
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason="give exactly one of epochs and minutes")
    budget = epochs if epochs is not None else minutes
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason=f"{'epochs' if epochs is not None else 'minutes'}={budget!r} "
                                                        "is not a positive number")
    if batch < 1:
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason=f"batch={batch} is not a positive integer")
    if checkpoint_every is not None and checkpoint_every < 1:
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason=f"checkpoint_every={checkpoint_every} is not a positive "
                                                        "number of steps")
    _check_nproc(nproc)
    joined_here = launched() and not torch.distributed.is_initialized()
    rank, world = join_launched(timeout_minutes)
    if world > 1 and nproc > 1:
        raise NpuflowError("NPF_SCALEOUT_BAD_WORKERS", option="--nproc", value=nproc, limit=MAX_NPROC,
                           reason=f"this process is already one of {world} ranks (torchrun); the launcher's "
                                  "--nproc-per-node sets the process count")
    ranks = max(world, nproc)
    convert = load_onnx2torch()
    tgt = target if isinstance(target, Target) else load_target(target)
    qcfg = qat_config({"learnable": True, **(config or {})} if not isinstance(config, QatConfig) else config)
    pcfg = config_of(DEFAULT_PTQ if ptq_config is None else ptq_config)
    start_time = time.perf_counter()
    if rank != 0:
        progress = None  # one bar: rank 0's

    source = model if isinstance(model, onnx.ModelProto) else model_io.read_proto(model)
    samples = _read_samples(source, data, pcfg)
    if ptq is None:
        _step(progress, "ptq")
        ptq = _quantize_once(source, samples, tgt, pcfg, input_shapes, progress, world)
    else:
        pcfg = ptq.config
    ptq_seconds = time.perf_counter() - start_time

    _step(progress, "convert")
    student = _build_student(convert, ptq, tgt, qcfg, samples, batch, seed)
    qat, samples = student.qat, student.samples
    train_samples, eval_samples, held = _split(samples)
    step_batch = _step_batch(student.batch, ranks, len(train_samples))
    teacher = _Teacher(ptq.float_model, student.input_names, student.output_names)
    start_state = copy.deepcopy(qat.state_dict())
    start_cos = _mean_cosine(qat, teacher, eval_samples, student.input_names, student.batch) if rank == 0 else 0.0
    plan = _Plan(epochs, minutes, step_batch, lr, quantizer_lr, temperature, loss, augment, seed,
                 None if checkpoint is None else str(checkpoint), checkpoint_every,
                 None if resume is None else str(resume), _identity(source, tgt, pcfg, train_samples, step_batch))
    t_train = time.perf_counter()
    if nproc > 1:
        built = io.BytesIO()
        torch.save(start_state, built)
        stats = spawn(_train_rank, nproc, (ptq, tgt, qcfg, samples, batch, plan, built.getvalue()), progress,
                      timeout_minutes)
        qat.load_state_dict(torch.load(io.BytesIO(stats.pop("model")), weights_only=True))
        qat.freeze_bn()  # as the ranks' trainers did
    else:
        trainer = _Trainer(qat, teacher, train_samples, student.input_names, plan, rank, world)
        stats = trainer.run(progress)
        if joined_here:  # the last collective call is behind: the group this call joined ends here
            torch.distributed.destroy_process_group()
        if rank != 0:
            return None
    train_seconds = time.perf_counter() - t_train
    trained_cos = _mean_cosine(qat, teacher, eval_samples, student.input_names, student.batch)
    kept: Literal["trained", "ptq start"] = "trained"
    if trained_cos < start_cos:
        qat.load_state_dict(start_state)
        kept = "ptq start"

    _step(progress, "export")
    qat.eval()
    qdq = export_qat(qat, None)
    initialised = student.initialised
    report = {
        "target": tgt.name, "ptq_config": pcfg.model_dump(mode="json", exclude_defaults=True),
        "samples": len(samples), "eval_samples": len(eval_samples), "eval_held_out": bool(held),
        "batch": step_batch, "processes": ranks,
        "steps": stats["steps"], "epochs": round(stats["epochs"], 3), "ptq_seconds": round(ptq_seconds, 1),
        "train_seconds": round(train_seconds, 1), "loop_seconds": round(stats["loop_seconds"], 1),
        "start_cosine": start_cos, "trained_cosine": trained_cos,
        "kept": kept, "quantizers_from_ptq": initialised["activations"], "weights_from_ptq": initialised["weights"],
        "quantizers_unmapped": initialised["unmapped"],
        "float_tensors": initialised["float_tensors"], "resumed_at_step": stats["resumed_at"],
        "loss": stats["loss_kinds"], "losses": [round(v, 6) for v in stats["losses"]],
    }
    result = OnnxQatResult(model=qdq, qat=qat, ptq=ptq, start_cosine=start_cos, trained_cosine=trained_cos,
                           kept=kept, steps=stats["steps"], epochs=stats["epochs"], seconds=train_seconds,
                           batch=step_batch, losses=stats["losses"], report=report)
    if output is not None:
        result.save(output)
    return result


#: Most local processes ``nproc`` accepts (one machine's cores, generously).
MAX_NPROC = 256


def _check_nproc(nproc: Any) -> None:
    if isinstance(nproc, bool) or not isinstance(nproc, int) or not 1 <= nproc <= MAX_NPROC:
        raise NpuflowError("NPF_SCALEOUT_BAD_WORKERS", option="--nproc", value=nproc, limit=MAX_NPROC,
                           reason="not a whole number of processes in range")


def _quantize_once(source: onnx.ModelProto, samples: list[Sample], tgt: Target, pcfg: QuantConfig,
                   input_shapes: Mapping[str, Sequence[int]] | None, progress: Progress | None,
                   world: int) -> QuantizedModel:
    """The PTQ start; in a process group rank 0 quantizes and sends the result to the others
    (PTQ is the same computation on every rank: doing it once saves world - 1 runs)."""
    if world == 1:
        return quantize(source, samples, tgt, pcfg, input_shapes=input_shapes, progress=progress, warn=False)
    box: list[Any] = [None]
    if torch.distributed.get_rank() == 0:
        try:
            box[0] = ("ok", quantize(source, samples, tgt, pcfg, input_shapes=input_shapes, progress=progress,
                                     warn=False))
        except NpuflowError as exc:
            box[0] = ("error", exc.code, exc.fields)
    torch.distributed.broadcast_object_list(box, src=0)
    if box[0][0] == "error":  # every rank fails with rank 0's coded error instead of waiting
        raise NpuflowError(box[0][1], **box[0][2])
    return box[0][1]


@dataclass
class _Student:
    """The trainable QAT model built from a PTQ result, and what building it found."""

    qat: QatModel
    samples: list[Sample]  # the samples at the shapes the model was quantized at
    input_names: list[str]
    output_names: list[str]
    initialised: dict[str, int]
    batch: int  # samples one forward takes: ``batch``, or 1 when the graph has a batch of 1 baked in


def _build_student(convert: Callable, ptq: QuantizedModel, tgt: Target, qcfg: QatConfig, samples: list[Sample],
                   batch: int, seed: int, state: bytes | None = None) -> _Student:
    """Convert the PTQ run's float graph, insert fake quantization and initialise it from the
    PTQ model; deterministic, so every rank of a data-parallel run builds the same model.
    ``state``: the serialised parameters and buffers of a student built before (a spawned
    rank takes the caller's instead of calibrating again)."""
    torch.manual_seed(seed)
    graph = legalize(ptq.float_model, tgt)
    input_names = [i.name for i in model_io.graph_inputs(graph)]
    output_names = [o.name for o in graph.graph.output]
    samples = _fit_samples(samples, ptq.float_model)
    module = convert(graph)
    example = tuple(torch.from_numpy(samples[0][n]) for n in input_names)
    qat = prepare_qat(module, example, tgt, qcfg, input_names=input_names, output_names=output_names)
    if state is None:  # observers give a value to any quantizer PTQ has none for
        qat.calibrate([_stack([s], input_names) for s in samples[:8]])
    initialised = init_from_ptq(qat, module, graph, ptq.model)  # also decides which tensors stay float
    if state is not None:
        qat.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    forward_batch = batch if batch == 1 or _batch_free(qat, samples, input_names) else 1
    return _Student(qat, samples, input_names, output_names, initialised, forward_batch)


def _split(samples: list[Sample]) -> tuple[list[Sample], list[Sample], int]:
    """Training samples, the samples that decide between the start and the trained model, and
    how many of them are held out of training (0: they are training samples)."""
    held = min(_EVAL_SAMPLES, len(samples) // 5) if len(samples) >= _MIN_HELD_OUT_SET else 0
    train = samples[:len(samples) - held]
    return train, (samples[len(samples) - held:] if held else samples[:_EVAL_SAMPLES]), held


def _step_batch(forward_batch: int, ranks: int, train_samples: int) -> int:
    """Samples per optimizer step over all ranks.  With a graph that takes one sample per
    forward, each rank takes one, so a step trains ``ranks`` samples."""
    if ranks == 1:
        return min(forward_batch, train_samples)
    step = forward_batch if forward_batch > 1 else ranks
    if step < ranks or step > train_samples:
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason=f"{ranks} processes need a batch of at least {ranks} "
                                                        f"samples and at most the {train_samples} training samples "
                                                        f"(batch={step})")
    return step


def _identity(source: onnx.ModelProto, tgt: Target, pcfg: QuantConfig, train: list[Sample], step_batch: int
              ) -> dict[str, str]:
    """What a checkpoint must match to be resumed by this run (besides target and parameters)."""
    data = hashlib.sha256()
    for sample in train:
        for name in sorted(sample):
            data.update(name.encode())
            data.update(np.ascontiguousarray(sample[name]).tobytes())
    config = json.dumps(pcfg.model_dump(mode="json", exclude_defaults=True), sort_keys=True)
    return {"model": "sha256 " + hashlib.sha256(source.SerializeToString()).hexdigest()[:16],
            "PTQ config": config, "training samples": f"{len(train)} (sha256 {data.hexdigest()[:16]})",
            "batch": str(step_batch)}


@dataclass
class _Plan:
    """The training settings every rank runs with (they travel to spawned ranks)."""

    epochs: float | None
    minutes: float | None
    batch: int  # samples per step over all ranks
    lr: float
    quantizer_lr: float
    temperature: float
    loss: str
    augment: bool
    seed: int
    checkpoint: str | None
    checkpoint_every: int | None
    resume: str | None
    identity: dict[str, str]


def _train_rank(report: Progress | None, ptq: QuantizedModel, tgt: Target, qcfg: QatConfig,
                samples: list[Sample], batch: int, plan: _Plan, state: bytes) -> dict | None:
    """One spawned rank: build the caller's student (its parameters and buffers: ``state``),
    train its share; rank 0 returns the trained parameters (serialised) and the training statistics."""
    student = _build_student(load_onnx2torch(), ptq, tgt, qcfg, samples, batch, plan.seed, state)
    train, _, _ = _split(student.samples)
    teacher = _Teacher(ptq.float_model, student.input_names, student.output_names)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    stats = _Trainer(student.qat, teacher, train, student.input_names, plan, rank, world).run(report)
    if rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save(student.qat.state_dict(), buffer)
    return {**stats, "model": buffer.getvalue()}


# --- samples -------------------------------------------------------------------------------------


def _read_samples(source: onnx.ModelProto, data: Any, cfg: QuantConfig) -> list[Sample]:
    """Every sample, checked against the model's inputs (training reads them many times)."""
    specs = []
    for inp in model_io.graph_inputs(source):
        tt = inp.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        specs.append(InputSpec(inp.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)), dims))
    # every sample trains; max_calib_samples bounds only the PTQ start's calibration
    return list(CalibrationSource(data, specs, shapes=cfg.calib_shapes, dtype=cfg.calib_dtype))


def _fit_samples(samples: list[Sample], float_model: onnx.ModelProto) -> list[Sample]:
    """The samples that have the shapes the model was quantized at (those are the ones trained on)."""
    shapes = {i.name: model_io.tensor_shapes(float_model)[i.name] for i in model_io.graph_inputs(float_model)}
    fit = [s for s in samples if all(list(s[n].shape) == shapes[n] for n in shapes)]
    if not fit:
        raise NpuflowError("NPF_QUANT_CALIB_MISMATCH", sample=0,
                           reason=f"no sample has the shapes the model is quantized at, {shapes}")
    return fit


def _stack(samples: Sequence[Sample], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Samples of batch 1 concatenated along the batch axis, one tensor per input."""
    return tuple(torch.from_numpy(np.concatenate([s[n] for s in samples])) for n in names)


_RESHAPES = {torch.reshape}
_RESHAPE_METHODS = {"reshape", "view"}


def _batch_free(qat: QatModel, samples: list[Sample], names: Sequence[str]) -> bool:
    """Let the batch-1 graph take batches: literal reshape targets with a leading 1 (the batch)
    become ``-1``.  True when a stacked batch then gives each sample's own output exactly."""
    gm = qat.graph_module
    changed = False
    for node in gm.graph.nodes:
        is_fn = node.op == "call_function" and node.target in _RESHAPES
        is_method = node.op == "call_method" and node.target in _RESHAPE_METHODS
        if not (is_fn or is_method) or len(node.args) < 2:
            continue
        shape_args = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list, torch.Size)) \
            else node.args[1:]
        dims = list(shape_args)
        meta = node.meta.get("tensor_meta")
        if not dims or not all(isinstance(d, int) for d in dims) or dims[0] != 1 or meta is None:
            continue
        out_shape = list(meta.shape)
        new = (-1, *out_shape[1:])
        node.args = (node.args[0], new)
        changed = True
    if changed:
        gm.recompile()
    pair = samples[:2] if len(samples) >= 2 else samples * 2
    qat.eval()
    try:
        with torch.no_grad():
            together = qat(*_stack(pair, names))
            alone = [qat(*_stack([s], names)) for s in pair]
    except RuntimeError:  # a shape baked in elsewhere (Expand, Tile, ...): train one sample a forward
        return False
    together = together if isinstance(together, (tuple, list)) else (together,)
    alone = [a if isinstance(a, (tuple, list)) else (a,) for a in alone]
    return all(torch.equal(t[i:i + 1], a[k]) for k, t in enumerate(together) for i, a in enumerate(alone))


# --- the teacher, the loss and the loop ------------------------------------------------------------


class _Teacher:
    """The FP32 model (ONNX Runtime on the optimised float model), one sample a run."""

    def __init__(self, float_model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str]) -> None:
        self.session = open_session(float_model, level="all", threads=1)
        self.inputs, self.outputs = list(inputs), list(outputs)

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        rows = []
        for i in range(batch[0].shape[0]):
            feeds = {n: t[i:i + 1].numpy() for n, t in zip(self.inputs, batch)}
            rows.append(self.session.run(self.outputs, feeds))
        return [torch.from_numpy(np.concatenate([r[k] for r in rows])) for k in range(len(self.outputs))]


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _loss_kind(teacher_out: torch.Tensor, requested: str) -> str:
    """``kl`` for class logits (N, C) or probability rows (non-negative, summing to 1 on the last
    axis), ``mse`` (normalised squared error) for anything else, unless the caller chose."""
    if requested != "auto":
        return requested
    t = teacher_out.float()
    if t.dim() >= 2 and bool((t >= 0).all()) and torch.allclose(t.sum(-1), torch.ones(()), atol=1e-3):
        return "kl_probs"
    return "kl" if t.dim() == 2 and t.shape[1] > 1 else "mse"


def _distil_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    if kind == "kl_probs":  # both are probabilities (a softmax inside the model)
        t = teacher.clamp_min(1e-8)
        s = student.clamp_min(1e-8)
        return (t * (t.log() - s.log())).sum(-1).mean()
    if kind == "kl":
        s = F.log_softmax(student / temperature, dim=1)
        t = F.log_softmax(teacher / temperature, dim=1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
    return (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


def _cosine(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample cosine of all outputs flattened together."""
    s = torch.cat([o.detach().reshape(o.shape[0], -1).float() for o in student], dim=1)
    t = torch.cat([o.reshape(o.shape[0], -1).float() for o in teacher], dim=1)
    return F.cosine_similarity(s, t, dim=1, eps=1e-12)


@torch.no_grad()
def _mean_cosine(qat: QatModel, teacher: _Teacher, samples: list[Sample], names: Sequence[str],
                 batch: int) -> float:
    """Mean per-sample output cosine of the (eval-mode, deployed) QAT model to FP32."""
    qat.eval()
    values = []
    for i in range(0, len(samples), batch):
        x = _stack(samples[i:i + batch], names)
        values += _cosine(_as_list(qat(*x)), teacher(x)).tolist()
    return float(np.mean(values))


def augment_batch(batch: tuple[torch.Tensor, ...], generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Light, label-free augmentation of float inputs: a gain of 0.9-1.1 about the sample's mean,
    an offset of up to 5 % of its spread, 1 % noise, and for images (N, C, H, W) a shift of up to
    1/16 of the height and width (edges repeated).  The teacher sees the same samples."""
    out = []
    for x in batch:
        if not x.is_floating_point():
            out.append(x)
            continue
        n = x.shape[0]
        view = (n,) + (1,) * (x.dim() - 1)
        dims = tuple(range(1, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp_min(1e-6)
        gain = 0.9 + 0.2 * torch.rand(view, generator=generator)
        offset = (torch.rand(view, generator=generator) - 0.5) * 0.1 * std
        y = mean + (x - mean) * gain + offset + 0.01 * std * torch.randn(x.shape, generator=generator)
        if x.dim() == 4 and x.shape[2] >= 16 and x.shape[3] >= 16:
            y = torch.stack([_shift(y[i], generator) for i in range(n)])
        out.append(y.to(x.dtype))
    return tuple(out)


def _shift(img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate a (C, H, W) image by a few pixels, repeating the edge."""
    _, h, w = img.shape
    dy = int(torch.randint(-(h // 16), h // 16 + 1, (), generator=generator))
    dx = int(torch.randint(-(w // 16), w // 16 + 1, (), generator=generator))
    if dx == 0 and dy == 0:
        return img
    padded = F.pad(img[None], (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")[0]
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[:, y0:y0 + h, x0:x0 + w]


class _Trainer:
    """The distillation loop: Adam with two parameter groups and a cosine decay.

    Data parallel (``world`` > 1): every rank draws the same global batch and augments it with
    the same generator, then trains on its rows (``torch.tensor_split``: rank order), its loss
    weighted by its share so that DDP's average of the ranks' gradients is the gradient of the
    global batch's mean loss -- the step of one process on the global batch.
    """

    def __init__(self, qat: QatModel, teacher: _Teacher, samples: list[Sample], names: Sequence[str], plan: _Plan,
                 rank: int = 0, world: int = 1) -> None:
        self.qat, self.teacher, self.samples, self.names, self.plan = qat, teacher, samples, list(names), plan
        self.rank, self.world = rank, world
        # static graph: the ONNX graph never branches, and a scale-group member's unused threshold is
        # found once instead of by a search of the autograd graph at every step
        self.model = distributed(qat, find_unused_parameters=False, static_graph=True) if world > 1 else qat
        groups = _parameter_groups(qat, plan.lr, plan.quantizer_lr)
        self.optimizer = torch.optim.Adam(groups)
        self.base = [g["lr"] for g in groups]
        self.generator = torch.Generator().manual_seed(plan.seed)
        self.steps = 0
        self.seen = 0
        self.elapsed = 0.0  # training seconds of the runs this one resumes
        self.resumed_at: int | None = None
        self.losses: list[float] = []
        self.loss_kinds: list[str] = []
        self.order: list[int] = []  # the current pass's sample order, and where in it the next batch starts
        self.position = 0

    @property
    def epochs(self) -> float:
        return self.seen / len(self.samples)

    def next_batch(self) -> list[Sample]:
        """The next ``plan.batch`` samples of the current pass (a new shuffled pass when too few are left)."""
        if self.position + self.plan.batch > len(self.order):
            self.order = torch.randperm(len(self.samples), generator=self.generator).tolist()
            self.position = 0
        chunk = [self.samples[k] for k in self.order[self.position:self.position + self.plan.batch]]
        self.position += self.plan.batch
        return chunk

    def run(self, progress: Progress | None) -> dict[str, Any]:
        """Train to the budget (continuing from ``plan.resume``); returns the training statistics."""
        plan = self.plan
        if plan.resume is not None:
            self._resume(plan.resume)
        total = math.ceil(plan.epochs * len(self.samples) / plan.batch) if plan.epochs is not None else None
        every = plan.checkpoint_every or max(1, len(self.samples) // plan.batch)
        budget = plan.minutes * 60 - self.elapsed if plan.minutes is not None else None
        start = time.perf_counter()
        shown = 0.0
        saved_at = self.steps
        self.qat.train()
        self.qat.freeze_bn()  # the folded form that is deployed, from the first step
        if progress is not None:
            progress("train", self.steps, total)
        while not self._done(total, budget, start):
            now = time.perf_counter()
            frac = self.steps / total if total is not None else (self.elapsed + now - start) / (plan.minutes * 60)
            for group, base in zip(self.optimizer.param_groups, self.base):
                group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
            chunk = self.next_batch()
            x = _stack(chunk, self.names)
            if plan.augment:
                x = augment_batch(x, self.generator)
            rows = torch.tensor_split(torch.arange(len(chunk)), self.world)[self.rank]
            x = tuple(t[int(rows[0]):int(rows[-1]) + 1] for t in x)
            share = len(rows) * self.world / len(chunk)
            target = self.teacher(x)
            self.qat.train()
            student = _as_list(self.model(*x))
            if not self.loss_kinds:
                self.loss_kinds = [_loss_kind(t, plan.loss) for t in target]
            loss = sum(_distil_loss(s, t, k, plan.temperature) for s, t, k in zip(student, target, self.loss_kinds))
            self.optimizer.zero_grad()
            (loss * share).backward()
            self.optimizer.step()
            self.steps += 1
            self.seen += len(chunk)
            self.losses.append(self._global_mean(loss.detach() * share))
            if plan.checkpoint is not None and self.steps % every == 0:
                self._save(plan.checkpoint, start)
                saved_at = self.steps
            if progress is not None and (time.perf_counter() - shown >= 2.0 or self.steps == total):
                shown = time.perf_counter()
                cos = float(_cosine(student, target).mean())
                progress("train", self.steps, total, f"loss {self.losses[-1]:.4f} cosine {cos:.4f}")
        if plan.checkpoint is not None and saved_at != self.steps:
            self._save(plan.checkpoint, start)
        self.qat.eval()
        return {"steps": self.steps, "epochs": self.epochs, "losses": self.losses, "loss_kinds": self.loss_kinds,
                "resumed_at": self.resumed_at, "loop_seconds": time.perf_counter() - start}

    def _done(self, total: int | None, budget: float | None, start: float) -> bool:
        """Whether the budget is spent; with a time budget rank 0 decides for every rank (their
        clocks would disagree by a step, and a rank that stops early leaves the others waiting)."""
        if total is not None:
            return self.steps >= total
        stop = torch.tensor([time.perf_counter() - start >= budget], dtype=torch.uint8)
        if self.world > 1:
            torch.distributed.broadcast(stop, src=0)
        return bool(stop)

    def _global_mean(self, weighted: torch.Tensor) -> float:
        """The loss of the global batch: the mean of the ranks' share-weighted losses."""
        if self.world > 1:
            weighted = weighted.clone()
            torch.distributed.all_reduce(weighted)
            weighted /= self.world
        return float(weighted)

    def _save(self, path: str, start: float) -> None:
        extra = {"seen": self.seen, "losses": list(self.losses), "loss_kinds": list(self.loss_kinds),
                 "order": list(self.order), "position": self.position,
                 "seconds": self.elapsed + time.perf_counter() - start}
        save_checkpoint(path, self.model, self.optimizer, step=self.steps, epoch=int(self.epochs), extra=extra,
                        generators=[self.generator], identity=self.plan.identity)

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path, self.model, self.optimizer, generators=[self.generator],
                                identity=self.plan.identity)
        extra = state.extra
        self.steps, self.resumed_at = state.step, state.step
        self.seen, self.elapsed = extra["seen"], extra["seconds"]
        self.losses, self.loss_kinds = list(extra["losses"]), list(extra["loss_kinds"])
        self.order, self.position = list(extra["order"]), extra["position"]


def _parameter_groups(qat: QatModel, lr: float, quantizer_lr: float) -> list[dict]:
    """Adam groups: each conv/linear layer's weight and bias at ``lr`` times its weight
    quantization step, quantizer parameters at ``quantizer_lr``, anything else at ``lr * 1e-3``.

    Why relative: training starts with every weight on its PTQ code, exactly in the middle of a
    quantization step; a code changes only after its weight moved half a step, and the steps
    differ by 2**6 between layers, so one absolute rate either changes nothing in the layers with
    coarse steps or scrambles the ones with fine steps.
    """
    groups, seen = [], set()
    for m in qat.graph_module.modules():
        if isinstance(m, QatWeighted):
            params = [p for p in (m.module.weight, m.module.bias) if p is not None and p.requires_grad]
            step = float(m.weight_quant.quant_params()[0].detach().max())
            groups.append({"params": params, "lr": lr * step})
            seen.update(id(p) for p in params)
    quantizer = [p for p in qat.quantizer_parameters() if id(p) not in seen]
    seen.update(id(p) for p in quantizer)
    rest = [p for p in qat.parameters() if id(p) not in seen and p.requires_grad]
    groups.append({"params": quantizer, "lr": quantizer_lr})
    if rest:
        groups.append({"params": rest, "lr": lr * 1e-3})
    return [g for g in groups if g["params"]]


def _step(progress: Progress | None, stage: str) -> None:
    if progress is not None:
        progress(stage, 0, None)
