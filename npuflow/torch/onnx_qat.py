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
5. **Keep the better** of the start and the end, or of three with a weight average (``ema_decay``,
   :mod:`.qat_ema`; :mod:`.qat_guard`): each is exported and run in
   ONNX Runtime on samples held out of training (a fifth of the user's, at most 64, or the last
   ``guard_samples``; with fewer than 10 samples, the first 64 training ones) and judged against FP32 on the task's measure --
   argmax agreement for class or probability outputs (per CTC step, per sample), output cosine
   otherwise, or the caller's ``metric`` -- and the trained model is returned only when it is not
   worse there (the result says which was kept, with both measures; for a recogniser's CTC rows
   the report adds the share of held-out samples whose greedy decode equals FP32's).
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
``device`` (``"cuda"``, ``"cuda:0"``) trains the student on a GPU, as users of Vitis AI, AIMET or
Brevitas train QAT: the teacher stays ONNX Runtime on the CPU (several samples at once, and each
sample's outputs computed once when nothing is augmented), and the export, the guard and the
result are on the CPU, so what is returned does not depend on where it trained.
"""

from __future__ import annotations

import copy
import dataclasses
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

from .. import model as model_io
from ..errors import NpuflowError
from ..quant.config import QuantConfig
from ..quant.data import CalibrationSource, InputSpec, Sample
from ..quant.legalize import legalize
from ..quant.pipeline import QuantizedModel, config_of, quantize
from ..targets import Target, load_target
from ..value_info import with_outputs
from .config import QatConfig, qat_config
from .onnx_convert import load_onnx2torch
from .distributed_launch import DEFAULT_TIMEOUT_MINUTES, join_launched, launched, spawn
from .ptq_init import init_from_ptq
from .qat import QatModel, export_qat, prepare_qat
from .qat_ctc import check_ctc_output
from .qat_features import check_feature_weight, select_features
from .qat_ema import WeightEma, check_ema_decay
from .qat_guard import Guard, Metric, choose
from .qat_train import Plan, Teacher, Trainer, stack

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
    start_cosine: float  # mean output cosine to FP32 on the held-out samples, PTQ start (QDQ model in ORT)
    trained_cosine: float  # the same after training
    kept: Literal["trained", "ema", "ptq start"]  # "ema": the weight average (ema_decay) was returned
    steps: int
    epochs: float
    seconds: float
    batch: int
    losses: list[float] = field(default_factory=list)  # distillation loss per step
    report: dict = field(default_factory=dict)
    measure: str = "output cosine"  # what decided: "argmax agreement", "output cosine", "metric", or a mean of the two
    start_score: float = 0.0  # that measure, PTQ start
    trained_score: float = 0.0  # that measure, after training
    start_agreement: float | None = None  # argmax agreement with FP32 over class rows (None: no class output)
    trained_agreement: float | None = None
    ema_score: float | None = None  # the measure of the weight average (None: no ema_decay)
    ema_cosine: float | None = None

    @property
    def cosine(self) -> float:
        """The output cosine of the model returned."""
        return {"trained": self.trained_cosine, "ema": self.ema_cosine}.get(self.kept, self.start_cosine)

    @property
    def score(self) -> float:
        """The deciding measure of the model returned."""
        return {"trained": self.trained_score, "ema": self.ema_score}.get(self.kept, self.start_score)

    def as_quantized(self) -> QuantizedModel:
        """The model returned in the PTQ result's form (what ``compile``, ``save`` and the build
        take), with a copy of the PTQ report and no requantizer: a QAT model is not a re-export of
        the PTQ plan, so per-layer precision overrides cannot apply to it."""
        return dataclasses.replace(self.ptq, model=self.model, dynamic_model=self.model, saves_dynamic=False,
                                   requantizer=None, report=copy.deepcopy(self.ptq.report))

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
             loss: Literal["auto", "kl", "mse", "ctc"] = "auto", augment: bool = True, seed: int = 0,
             ptq: QuantizedModel | None = None, output: str | os.PathLike | None = None,
             progress: Progress | None = None, nproc: int = 1, checkpoint: str | os.PathLike | None = None,
             checkpoint_every: int | None = None, resume: str | os.PathLike | None = None,
             timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES, metric: Metric | None = None, device: str = "cpu",
             checks: int = 0, feature_weight: float = 0.0, guard_samples: int | None = None,
             ema_decay: float | None = None) -> OnnxQatResult | None:
    """QAT of a float ONNX model on unlabelled ``data`` for ``target``; see the module docstring.

    ``data``: what :func:`npuflow.quantize` takes (a folder of ``.npy`` files, arrays, dicts).
    Exactly one of ``epochs`` (passes over the samples) and ``minutes`` (training wall time)
    bounds training.  ``ptq_config``: the PTQ start (default AdaRound); ``config``: QAT options
    (:class:`~npuflow.torch.QatConfig`; quantizers are learnable unless it says otherwise).
    ``ptq``: a PTQ result of this model and data to start from instead of quantizing again
    (``npuflow build`` passes its own).  ``lr`` is in units of each layer's weight quantization
    step (see :func:`.qat_train.parameter_groups`).  ``output``: a folder to save the result into
    (:meth:`OnnxQatResult.save`).
    ``loss``: ``auto`` distils each output by KL (class logits, probability rows) or normalised
    squared error; ``ctc`` (text recognisers' (N, T, C) outputs, :mod:`.qat_ctc`) adds CTC on the
    FP32 model's greedy decodes to the per-step KL; ``NPF_QAT_BAD_OPTION`` for another value, or
    for ``ctc`` on an output without three axes.

    Data parallel (docs/scale-out.md): ``nproc`` > 1 trains in that many local gloo processes,
    each on its share of every step's ``batch`` samples; under torchrun (or in a process group
    the caller joined) every rank calls this function, rank 0 returns the result and the others
    None.  ``checkpoint``: a file written every ``checkpoint_every`` steps (default: each epoch)
    and at the end; ``resume``: such a file to continue from (``NPF_QAT_CHECKPOINT_MISMATCH``
    when it is another run's).  ``timeout_minutes`` bounds each collective call.
    ``metric``: ``metric(outputs) -> float`` (higher is better) judges the start and the trained
    model instead of the built-in measure; ``outputs`` is, per held-out sample, the list of the
    exported model's outputs in ONNX Runtime (``NPF_QAT_BAD_METRIC`` when it returns no finite number).
    ``device``: where the student trains (``NPF_QAT_BAD_DEVICE`` when torch cannot reach it, or
    with several processes).  ``checks``: how many times, spread over training, the student's own
    forward is judged on the held-out samples (shown in the progress line; ``held_out_curve`` in
    the report); 0 by default, since on a CPU each check costs as many forwards as samples held out.
    ``feature_weight``: > 0 also distils a few intermediate tensors of the FP32 model
    (:mod:`.qat_features`: which ones, and the normalised loss), with that weight beside the
    output loss; 0 (the default) distils the outputs only; ``NPF_QAT_BAD_OPTION`` when negative
    or not a finite number.
    ``guard_samples``: how many samples (the last ones of ``data``) are held out of training for the
    guard that decides between the start and the trained model; ``None`` (the default) holds out a
    fifth of them, at most 64, from 10 samples on.  With thousands of samples a guard of a few
    hundred judges on more of them (one sample weighs 1/N), at the cost of one forward of each per
    judgement (measured on PP-OCRv4 rec in docs/qat.md);
    ``NPF_QAT_BAD_OPTION`` unless it is a positive integer that leaves a training sample.  After a PTQ
    start chosen among fast-finetune restarts (``fast_finetune.select_on: K`` in ``ptq_config``) the
    guard holds out those K samples and reads a recogniser's whole lines, as the restarts did
    (:func:`_restarts_guard`; another ``guard_samples`` is ``NPF_QAT_BAD_OPTION``).
    ``ema_decay``: also keep an exponential moving average of the weights (:mod:`.qat_ema`, with a
    warm-up); the guard judges it beside the final weights and the start and returns the best
    (``kept`` says which; a trained model must lead the start by more than one held-out row,
    :func:`.qat_guard.choose`; ties between the two go to the average); ``NPF_QAT_BAD_OPTION``
    unless it lies strictly between 0 and 1.
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
    feature_weight = check_feature_weight(feature_weight)
    _check_guard_samples(guard_samples, None)
    _check_loss(loss, None)
    ema_decay = check_ema_decay(ema_decay)
    dev = _device(device, nproc)
    joined_here = launched() and not torch.distributed.is_initialized()
    rank, world = join_launched(timeout_minutes)
    if world > 1 and nproc > 1:
        raise NpuflowError("NPF_SCALEOUT_BAD_WORKERS", option="--nproc", value=nproc, limit=MAX_NPROC,
                           reason=f"this process is already one of {world} ranks (torchrun); the launcher's "
                                  "--nproc-per-node sets the process count")
    ranks = max(world, nproc)
    if ranks > 1 and dev.type != "cpu":
        raise NpuflowError("NPF_QAT_BAD_DEVICE", device=device,
                           reason=f"{ranks} processes train data-parallel on the CPU (gloo)")
    convert = load_onnx2torch()
    tgt = target if isinstance(target, Target) else load_target(target)
    qcfg = qat_config({"learnable": True, **(config or {})} if not isinstance(config, QatConfig) else config)
    pcfg = config_of(DEFAULT_PTQ if ptq_config is None else ptq_config)
    start_time = time.perf_counter()
    if rank != 0:
        progress = None  # one bar: rank 0's

    source = model if isinstance(model, onnx.ModelProto) else model_io.read_proto(model)
    _check_loss(loss, source)
    samples = _read_samples(source, data, pcfg)
    guard_samples, by_line = _restarts_guard(ptq.config if ptq is not None else pcfg, guard_samples)
    _check_guard_samples(guard_samples, len(samples))
    if ptq is None:
        _step(progress, "ptq")
        ptq = _quantize_once(source, samples, tgt, pcfg, input_shapes, progress, world)
    else:
        pcfg = ptq.config
    ptq_seconds = time.perf_counter() - start_time

    _step(progress, "convert")
    student = _build_student(convert, ptq, tgt, qcfg, samples, batch, seed, features=feature_weight > 0)
    qat, samples = student.qat, student.samples
    train_samples, eval_samples, held = _split(samples, guard_samples)
    step_batch = _step_batch(student.batch, ranks, len(train_samples))
    # one CPU thread runs the teacher for a CPU student; a GPU student would wait for it
    teacher = student.teacher(ptq.float_model, threads=1 if dev.type == "cpu" else max(1, (os.cpu_count() or 2) - 1))
    start_state = copy.deepcopy(qat.state_dict())
    if rank == 0:  # the deployed start: its QDQ model in ONNX Runtime
        guard = Guard(ptq.float_model, eval_samples, student.input_names, student.output_names, metric, by_line)
        start_qdq = export_qat(qat, None)
        start = guard.judge(start_qdq)
    identity = _identity(source, tgt, pcfg, train_samples, step_batch)
    if ema_decay is not None:  # a checkpoint without the average cannot continue it
        identity["EMA decay"] = repr(ema_decay)
    plan = Plan(epochs, minutes, step_batch, lr, quantizer_lr, temperature, loss, augment, seed,
                None if checkpoint is None else str(checkpoint), checkpoint_every,
                None if resume is None else str(resume), identity, str(dev), checks if ranks == 1 else 0,
                feature_weight, ema_decay)
    t_train = time.perf_counter()
    if nproc > 1:
        built = io.BytesIO()
        torch.save(start_state, built)
        stats = spawn(_train_rank, nproc, (ptq, tgt, qcfg, samples, batch, plan, built.getvalue(), guard_samples),
                      progress, timeout_minutes)
        qat.load_state_dict(torch.load(io.BytesIO(stats.pop("model")), weights_only=True))
        qat.freeze_bn()  # as the ranks' trainers did
        ema = WeightEma(qat, ema_decay) if ema_decay is not None else None
        if ema is not None:
            ema.load_state_dict(torch.load(io.BytesIO(stats.pop("ema")), weights_only=True))
    else:
        watch = (lambda module: guard.watch(module, student.input_names, student.batch)) if rank == 0 and checks else None
        qat.to(dev)
        try:
            trainer = Trainer(qat, teacher, train_samples, student.input_names, plan, rank, world, watch,
                              student.features)
            stats = trainer.run(progress)
            ema = trainer.ema
        finally:
            qat.to("cpu")  # export, the guard and the caller see a CPU model
        if joined_here:  # the last collective call is behind: the group this call joined ends here
            torch.distributed.destroy_process_group()
        if rank != 0:
            return None
    train_seconds = time.perf_counter() - t_train
    _step(progress, "export")
    qat.eval()
    qdq = export_qat(qat, None)
    trained = guard.judge(qdq)
    averaged = None
    if ema is not None:  # the average judged as deployed too; the final weights stay at hand
        final_state = copy.deepcopy(qat.state_dict())
        ema.copy_to(qat)
        ema_qdq = export_qat(qat, None)
        averaged = guard.judge(ema_qdq)
    kept = choose([("ema", averaged), ("trained", trained), ("ptq start", start)])
    if kept == "ptq start":
        qat.load_state_dict(start_state)
        qdq = start_qdq
    elif kept == "trained" and ema is not None:
        qat.load_state_dict(final_state)
    elif kept == "ema":
        qdq = ema_qdq
    initialised = student.initialised
    report = {
        "target": tgt.name, "ptq_config": pcfg.model_dump(mode="json", exclude_defaults=True),
        "samples": len(samples), "eval_samples": len(eval_samples), "eval_held_out": bool(held),
        "batch": step_batch, "processes": ranks,
        "steps": stats["steps"], "epochs": round(stats["epochs"], 3), "ptq_seconds": round(ptq_seconds, 1),
        "train_seconds": round(train_seconds, 1), "loop_seconds": round(stats["loop_seconds"], 1),
        "measure": guard.measure, "start_score": start.score, "trained_score": trained.score,
        "start_cosine": start.cosine, "trained_cosine": trained.cosine,
        "start_agreement": start.agreement, "trained_agreement": trained.agreement,
        "start_sequence_agreement": start.sequences, "trained_sequence_agreement": trained.sequences,
        "eval_model": "exported QDQ model in ONNX Runtime", "kept": kept, "quantizers_from_ptq": initialised["activations"], "weights_from_ptq": initialised["weights"],
        "quantizers_unmapped": initialised["unmapped"], "quantizers_added": initialised["added"],
        "constants_from_ptq": initialised["constants"], "float_reads": initialised["float_reads"],
        "float_tensors": initialised["float_tensors"], "resumed_at_step": stats["resumed_at"],
        "loss": stats["loss_kinds"], "losses": [round(v, 6) for v in stats["losses"]],
        "device": str(dev), "held_out_curve": stats.get("curve", []),
        "feature_weight": feature_weight, "feature_points": list(student.features),
        "feature_losses": [round(v, 6) for v in stats.get("feature_losses", [])],
        "ema_decay": ema_decay, "ema_score": None if averaged is None else averaged.score,
        "ema_cosine": None if averaged is None else averaged.cosine,
        "ema_agreement": None if averaged is None else averaged.agreement,
        "ema_sequence_agreement": None if averaged is None else averaged.sequences,
    }
    result = OnnxQatResult(model=qdq, qat=qat, ptq=ptq, start_cosine=start.cosine, trained_cosine=trained.cosine,
                           kept=kept, steps=stats["steps"], epochs=stats["epochs"], seconds=train_seconds,
                           batch=step_batch, losses=stats["losses"], report=report, measure=guard.measure,
                           start_score=start.score, trained_score=trained.score,
                           start_agreement=start.agreement, trained_agreement=trained.agreement,
                           ema_score=report["ema_score"], ema_cosine=report["ema_cosine"])
    if output is not None:
        result.save(output)
    return result


#: Most local processes ``nproc`` accepts (one machine's cores, generously).
MAX_NPROC = 256


def ladder_step(model: model_io.ModelLike, data: Any, **options: Any) -> Callable[[QuantizedModel], tuple[QuantizedModel, str]]:
    """The accuracy ladder's QAT step (:func:`npuflow.analyze.auto_quant.auto_quantize`'s ``qat``):
    :func:`qat_onnx` of ``model`` on ``data`` from the ladder's best model, with ``options`` (its
    keywords: ``minutes`` or ``epochs``, ``nproc``, ...), as a :class:`QuantizedModel` and a note."""
    def step(start: QuantizedModel) -> tuple[QuantizedModel, str]:
        result = qat_onnx(model, start.target, data, ptq=start, **options)
        return result.as_quantized(), f"{result.steps} steps, kept the {result.kept} ({result.measure})"

    return step


def _device(device: Any, nproc: int) -> torch.device:
    """The torch device ``device`` names, checked by placing a tensor there (``NPF_QAT_BAD_DEVICE``
    when the string is no device, when this torch build cannot reach it -- no CUDA, no such index --
    or when several local processes would share it: they train on the CPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise NpuflowError("NPF_QAT_BAD_DEVICE", device=str(device), reason=_first_line(exc)) from None
    if nproc > 1 and dev.type != "cpu":
        raise NpuflowError("NPF_QAT_BAD_DEVICE", device=str(device),
                           reason=f"{nproc} processes train data-parallel on the CPU (gloo)")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:  # a CPU-only torch asserts, a missing index is a RuntimeError
        raise NpuflowError("NPF_QAT_BAD_DEVICE", device=str(device), reason=_first_line(exc)) from None
    return dev


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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
    features: dict[str, str] = field(default_factory=dict)  # distilled ONNX tensor -> its quantizer (qat_features)

    def teacher(self, float_model: onnx.ModelProto, threads: int = 1) -> Teacher:
        """The FP32 teacher of this student: the model's outputs, then the distilled tensors."""
        names = list(self.features)
        model = with_outputs(float_model, names) if names else float_model
        return Teacher(model, self.input_names, self.output_names + names, threads=threads)


def _build_student(convert: Callable, ptq: QuantizedModel, tgt: Target, qcfg: QatConfig, samples: list[Sample],
                   batch: int, seed: int, state: bytes | None = None, features: bool = False) -> _Student:
    """Convert the PTQ run's float graph, insert fake quantization and initialise it from the
    PTQ model; deterministic, so every rank of a data-parallel run builds the same model.
    ``state``: the serialised parameters and buffers of a student built before (a spawned
    rank takes the caller's instead of calibrating again).  ``features``: also choose the
    intermediate tensors to distil (:func:`.qat_features.select_features`)."""
    torch.manual_seed(seed)
    graph = legalize(ptq.float_model, tgt)
    input_names = [i.name for i in model_io.graph_inputs(graph)]
    output_names = [o.name for o in graph.graph.output]
    samples = _fit_samples(samples, ptq.float_model)
    module = convert(graph)
    example = tuple(torch.from_numpy(samples[0][n]) for n in input_names)
    qat = prepare_qat(module, example, tgt, qcfg, input_names=input_names, output_names=output_names)
    if state is None:  # observers give a value to any quantizer PTQ has none for
        qat.calibrate([stack([s], input_names) for s in samples[:8]])
    initialised = init_from_ptq(qat, module, graph, ptq.model)  # also decides which tensors stay float
    if state is not None:
        qat.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
    forward_batch = batch if batch == 1 or _batch_free(qat, samples, input_names) else 1
    points = select_features(qat, module, ptq.float_model) if features else {}
    return _Student(qat, samples, input_names, output_names, initialised, forward_batch, points)


#: the ``loss`` values :func:`qat_onnx` takes
LOSSES = ("auto", "kl", "mse", "ctc")


def _check_loss(loss: object, model: onnx.ModelProto | None) -> None:
    """``NPF_QAT_BAD_OPTION`` unless ``loss`` is one of :data:`LOSSES`, and for ``ctc`` unless
    every output of ``model`` (when given) whose rank the graph declares has three axes: refused
    here, before the PTQ start's minutes, not at the first training step."""
    if loss not in LOSSES:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="loss", value=loss, reason=f"not one of {', '.join(LOSSES)}")
    if loss != "ctc" or model is None:
        return
    for out in model.graph.output:
        tensor = out.type.tensor_type
        if tensor.HasField("shape"):
            check_ctc_output(out.name, [d.dim_param or d.dim_value for d in tensor.shape.dim])


def _check_guard_samples(guard_samples: object, samples: int | None) -> None:
    """``NPF_QAT_BAD_OPTION`` unless ``guard_samples`` is None or a positive integer below the
    number of ``samples`` (when known): the guard needs samples and training needs one."""
    if guard_samples is None:
        return
    if isinstance(guard_samples, bool) or not isinstance(guard_samples, int) or guard_samples < 1:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="guard_samples", value=guard_samples,
                           reason="not a positive integer")
    if samples is not None and guard_samples >= samples:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="guard_samples", value=guard_samples,
                           reason=f"the data has {samples} samples; at least one must be left to train on")


def _restarts_guard(pcfg: QuantConfig, guard_samples: int | None) -> tuple[int | None, bool | None]:
    """``(guard_samples, by_line)`` of the guard after a PTQ start chosen among fast-finetune restarts
    (``fast_finetune.select_on: K``): the guard judges on the same last K samples, by the restarts'
    measure (a recogniser's whole lines, at any K), so the trained model is one more candidate judged
    as the restarts were, and no sample is both held out for that judgement and trained or calibrated
    on; ``(guard_samples, None)`` without select_on.  ``NPF_QAT_BAD_OPTION`` for a ``guard_samples``
    other than K: a smaller guard trains on samples that chose the start, a larger one judges on
    calibration samples the start was fitted to."""
    ff = pcfg.fast_finetune
    k = ff.select_on if ff is not None else None
    if k is None:
        return guard_samples, None
    if guard_samples is not None and guard_samples != k:
        raise NpuflowError("NPF_QAT_BAD_OPTION", option="guard_samples", value=guard_samples,
                           reason=f"the PTQ start was chosen on the last {k} samples (fast_finetune.select_on); "
                                  f"the guard judges on those same samples: leave guard_samples out or give {k}")
    return k, True


def _split(samples: list[Sample], guard_samples: int | None = None) -> tuple[list[Sample], list[Sample], int]:
    """Training samples, the samples that decide between the start and the trained model, and
    how many of them are held out of training (0: they are training samples).  ``guard_samples``
    (checked by :func:`_check_guard_samples`) holds out exactly that many of the last samples."""
    if guard_samples is not None:
        held = guard_samples
    else:
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



def _train_rank(report: Progress | None, ptq: QuantizedModel, tgt: Target, qcfg: QatConfig,
                samples: list[Sample], batch: int, plan: Plan, state: bytes,
                guard_samples: int | None = None) -> dict | None:
    """One spawned rank: build the caller's student (its parameters and buffers: ``state``),
    train its share; rank 0 returns the trained parameters (serialised) and the training statistics."""
    student = _build_student(load_onnx2torch(), ptq, tgt, qcfg, samples, batch, plan.seed, state,
                             features=plan.feature_weight > 0)
    train, _, _ = _split(student.samples, guard_samples)
    teacher = student.teacher(ptq.float_model)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    trainer = Trainer(student.qat, teacher, train, student.input_names, plan, rank, world,
                      features=student.features)
    stats = trainer.run(report)
    if rank != 0:
        return None
    buffer = io.BytesIO()
    torch.save(student.qat.state_dict(), buffer)
    out = {**stats, "model": buffer.getvalue()}
    if trainer.ema is not None:
        buffer = io.BytesIO()
        torch.save(trainer.ema.state_dict(), buffer)
        out["ema"] = buffer.getvalue()
    return out


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
            together = qat(*stack(pair, names))
            alone = [qat(*stack([s], names)) for s in pair]
    except RuntimeError:  # a shape baked in elsewhere (Expand, Tile, ...): train one sample a forward
        return False
    together = together if isinstance(together, (tuple, list)) else (together,)
    alone = [a if isinstance(a, (tuple, list)) else (a,) for a in alone]
    return all(torch.equal(t[i:i + 1], a[k]) for k, t in enumerate(together) for i, a in enumerate(alone))


def _step(progress: Progress | None, stage: str) -> None:
    if progress is not None:
        progress(stage, 0, None)
