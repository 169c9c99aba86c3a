"""The distillation loop of label-free QAT (:func:`npuflow.torch.onnx_qat.qat_onnx`): the FP32
teacher in ONNX Runtime, the loss, the augmentation and the trainer (Adam with per-layer rates,
cosine decay, checkpoints, data parallel ranks).  Split out of :mod:`.onnx_qat`, which builds the
student, runs this loop and keeps the better of start and end (:mod:`.qat_guard`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..ort_session import open_session
from ..quant.data import Sample
from .layers import QatWeighted
from .qat import QatModel, distributed, load_checkpoint, save_checkpoint
from .qat_ctc import KL_WEIGHT, check_ctc_output, ctc_term
from .qat_ema import WeightEma
from .qat_features import FeatureTap, feature_loss

Progress = Callable[..., None]


@dataclass
class Plan:
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
    device: str = "cpu"  # where the student trains; the teacher and the augmentation stay on the CPU
    checks: int = 0  # held-out checks spread over training (0: none), for the progress line and the report
    feature_weight: float = 0.0  # weight of the intermediate-feature term (qat_features); 0: logits only
    ema_decay: float | None = None  # a weight EMA with this decay beside the trained weights (qat_ema); None: none


def stack(samples: Sequence[Sample], names: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Samples of batch 1 concatenated along the batch axis, one tensor per input."""
    return tuple(torch.from_numpy(np.concatenate([s[n] for s in samples])) for n in names)


class Teacher:
    """The FP32 model (ONNX Runtime on the optimised float model), one sample a run.

    ``threads`` > 1 runs that many samples of a batch at once (one ONNX Runtime thread each):
    when the student trains on a GPU, one CPU thread running the teacher would be the bottleneck.
    """

    def __init__(self, float_model: onnx.ModelProto, inputs: Sequence[str], outputs: Sequence[str],
                 threads: int = 1) -> None:
        self.session = open_session(float_model, level="all", threads=1)
        self.inputs, self.outputs = list(inputs), list(outputs)
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self, batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        def run(i: int) -> list[np.ndarray]:
            return self.session.run(self.outputs, {n: t[i:i + 1].numpy() for n, t in zip(self.inputs, batch)})

        count = range(batch[0].shape[0])
        rows = list(self.pool.map(run, count)) if self.pool is not None else [run(i) for i in count]
        return [torch.from_numpy(np.concatenate([r[k] for r in rows])) for k in range(len(self.outputs))]


def as_list(out: Any) -> list[torch.Tensor]:
    """A module's output(s) as a list (one tensor or a tuple of them)."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _is_probs(t: torch.Tensor) -> bool:
    """Whether an output is probability rows: non-negative, summing to 1 on the last axis (a softmax
    inside the model)."""
    return t.dim() >= 2 and bool((t >= 0).all()) and torch.allclose(t.sum(-1), t.new_ones(()), atol=1e-3)


def _loss_kind(teacher_out: torch.Tensor, requested: str, name: str = "output") -> str:
    """``kl`` for class logits (N, C) or probability rows (non-negative, summing to 1 on the last
    axis), ``mse`` (normalised squared error) for anything else, unless the caller chose.
    ``ctc`` (:mod:`.qat_ctc`) becomes ``ctc_probs`` or ``ctc_logits`` by the same probability test,
    and is refused (``NPF_QAT_BAD_OPTION``, naming the output ``name``) unless the output is (N, T, C)."""
    t = teacher_out.float()
    if requested == "ctc":
        check_ctc_output(name, tuple(t.shape))
        return "ctc_probs" if _is_probs(t) else "ctc_logits"
    if requested != "auto":
        return requested
    if _is_probs(t):
        return "kl_probs"
    return "kl" if t.dim() == 2 and t.shape[1] > 1 else "mse"


def _distil_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float) -> torch.Tensor:
    """One output's loss of the ``kind`` :func:`_loss_kind` chose (``kl_steps``: the per-step KL
    of logits under a CTC term)."""
    if kind.startswith("ctc_"):  # CTC on the teacher's greedy decodes, the per-step KL anchoring the rows
        probs = kind == "ctc_probs"
        kl = _distil_loss(student, teacher, "kl_probs" if probs else "kl_steps", temperature)
        return ctc_term(student, teacher, probs) + KL_WEIGHT * kl
    if kind == "kl_probs":  # both are probabilities (a softmax inside the model)
        t = teacher.clamp_min(1e-8)
        s = student.clamp_min(1e-8)
        return (t * (t.log() - s.log())).sum(-1).mean()
    if kind == "kl_steps":  # logits over the last axis, the KL averaged over all other positions
        s = F.log_softmax(student / temperature, dim=-1)
        t = F.log_softmax(teacher / temperature, dim=-1)
        return (t.exp() * (t - s)).sum(-1).mean() * temperature ** 2
    if kind == "kl":
        s = F.log_softmax(student / temperature, dim=1)
        t = F.log_softmax(teacher / temperature, dim=1)
        return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2
    return (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)


def batch_cosine(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample cosine of all outputs flattened together."""
    s = torch.cat([o.detach().reshape(o.shape[0], -1).float() for o in student], dim=1)
    t = torch.cat([o.reshape(o.shape[0], -1).float() for o in teacher], dim=1)
    return F.cosine_similarity(s, t, dim=1, eps=1e-12)


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


class Trainer:
    """The distillation loop: Adam with two parameter groups and a cosine decay.

    Data parallel (``world`` > 1): every rank draws the same global batch and augments it with
    the same generator, then trains on its rows (``torch.tensor_split``: rank order), its loss
    weighted by its share so that DDP's average of the ranks' gradients is the gradient of the
    global batch's mean loss -- the step of one process on the global batch.

    On a GPU (``plan.device``; ``qat`` is already there) the batches are drawn and augmented on
    the CPU as before, so the sample order and augmentation do not depend on the device, and then
    moved.  Without augmentation a sample's teacher outputs never change: each is computed once.
    ``watch(qat)`` (a held-out measure, higher is better) runs at ``plan.checks`` points spread
    over training; its values are the ``curve`` of the statistics.
    ``features`` (ONNX tensor -> the student's quantizer of it, :func:`.qat_features.select_features`):
    the teacher returns these tensors after the model's outputs, and with ``plan.feature_weight``
    > 0 the loss adds that weight times their normalised squared error.
    ``plan.ema_decay``: ``ema`` averages the weights after every step (:mod:`.qat_ema`); the
    checkpoints carry it, and the caller reads it after :meth:`run` (the model keeps the final weights).
    """

    def __init__(self, qat: QatModel, teacher: Teacher, samples: list[Sample], names: Sequence[str], plan: Plan,
                 rank: int = 0, world: int = 1, watch: Callable[[QatModel], float] | None = None,
                 features: dict[str, str] | None = None) -> None:
        self.qat, self.teacher, self.samples, self.names, self.plan = qat, teacher, samples, list(names), plan
        self.features = dict(features or {})
        self.outputs = len(teacher.outputs) - len(self.features)  # the model's own outputs come first
        self.rank, self.world = rank, world
        self.device = torch.device(plan.device)
        self.watch = watch
        self.curve: list[dict[str, float]] = []
        self.cached: dict[int, list[torch.Tensor]] = {}  # sample index -> teacher outputs (no augmentation)
        # static graph: the ONNX graph never branches, and a scale-group member's unused threshold is
        # found once instead of by a search of the autograd graph at every step
        self.model = distributed(qat, find_unused_parameters=False, static_graph=True) if world > 1 else qat
        groups = parameter_groups(qat, plan.lr, plan.quantizer_lr)
        self.optimizer = torch.optim.Adam(groups)
        self.base = [g["lr"] for g in groups]
        self.ema = WeightEma(qat, plan.ema_decay) if plan.ema_decay is not None else None
        self.generator = torch.Generator().manual_seed(plan.seed)
        self.steps = 0
        self.seen = 0
        self.elapsed = 0.0  # training seconds of the runs this one resumes
        self.resumed_at: int | None = None
        self.losses: list[float] = []
        self.feature_losses: list[float] = []  # the feature term per step, unweighted (empty: logits only)
        self.loss_kinds: list[str] = []
        self.order: list[int] = []  # the current pass's sample order, and where in it the next batch starts
        self.position = 0

    @property
    def epochs(self) -> float:
        return self.seen / len(self.samples)

    def next_batch(self) -> list[int]:
        """The indices of the next ``plan.batch`` samples of the current pass (a new shuffled pass
        when too few are left)."""
        if self.position + self.plan.batch > len(self.order):
            self.order = torch.randperm(len(self.samples), generator=self.generator).tolist()
            self.position = 0
        chunk = self.order[self.position:self.position + self.plan.batch]
        self.position += self.plan.batch
        return chunk

    def targets(self, indices: list[int], x: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        """The teacher's outputs for the CPU batch ``x`` of samples ``indices``; without
        augmentation from the cache, running the teacher only on samples it has not seen."""
        if self.plan.augment:
            return self.teacher(x)
        missing = [r for r, k in enumerate(indices) if k not in self.cached]
        if missing:
            rows = torch.tensor(missing)
            fresh = self.teacher(tuple(t.index_select(0, rows) for t in x))
            for j, r in enumerate(missing):
                self.cached[indices[r]] = [o[j:j + 1] for o in fresh]
        return [torch.cat([self.cached[k][o] for k in indices]) for o in range(len(self.teacher.outputs))]

    def run(self, progress: Progress | None) -> dict[str, Any]:
        """Train to the budget (continuing from ``plan.resume``); returns the training statistics."""
        plan = self.plan
        if plan.resume is not None:
            self._resume(plan.resume)
        total = math.ceil(plan.epochs * len(self.samples) / plan.batch) if plan.epochs is not None else None
        every = plan.checkpoint_every or max(1, len(self.samples) // plan.batch)
        budget = plan.minutes * 60 - self.elapsed if plan.minutes is not None else None
        start = time.perf_counter()
        self.qat.train()
        self.qat.freeze_bn()  # the folded form that is deployed, from the first step
        if progress is not None:
            progress("train", self.steps, total)
        tap = FeatureTap(self.qat, self.features) if self.features else None
        try:
            self._loop(total, budget, start, every, progress, tap)
        finally:
            if tap is not None:
                tap.close()
        self._check(1.0, total, progress)
        self.qat.eval()
        return {"steps": self.steps, "epochs": self.epochs, "losses": self.losses, "loss_kinds": self.loss_kinds,
                "feature_losses": self.feature_losses, "resumed_at": self.resumed_at,
                "loop_seconds": time.perf_counter() - start, "curve": self.curve}

    def _loop(self, total: int | None, budget: float | None, start: float, every: int, progress: Progress | None,
              tap: FeatureTap | None) -> None:
        """The steps of :meth:`run` until the budget is spent, and the final checkpoint."""
        plan = self.plan
        shown = 0.0
        saved_at = self.steps
        while not self._done(total, budget, start):
            now = time.perf_counter()
            frac = self.steps / total if total is not None else (self.elapsed + now - start) / (plan.minutes * 60)
            self._check(frac, total, progress)
            for group, base in zip(self.optimizer.param_groups, self.base):
                group["lr"] = base * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
            indices = self.next_batch()
            chunk = [self.samples[k] for k in indices]
            x = stack(chunk, self.names)
            if plan.augment:
                x = augment_batch(x, self.generator)
            rows = torch.tensor_split(torch.arange(len(chunk)), self.world)[self.rank]
            x = tuple(t[int(rows[0]):int(rows[-1]) + 1] for t in x)
            share = len(rows) * self.world / len(chunk)
            target = [t.to(self.device) for t in self.targets(indices[int(rows[0]):int(rows[-1]) + 1], x)]
            x = tuple(t.to(self.device) for t in x)
            self.qat.train()
            student = as_list(self.model(*x))
            target, target_features = target[:self.outputs], target[self.outputs:]
            if not self.loss_kinds:
                self.loss_kinds = [_loss_kind(t, plan.loss, n) for t, n in zip(target, self.teacher.outputs)]
            loss = sum(_distil_loss(s, t, k, plan.temperature) for s, t, k in zip(student, target, self.loss_kinds))
            if tap is not None:
                term = feature_loss(tap.take(), target_features)
                self.feature_losses.append(self._global_mean(term.detach() * share))
                loss = loss + plan.feature_weight * term
            self.optimizer.zero_grad()
            (loss * share).backward()
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.qat)
            self.steps += 1
            self.seen += len(chunk)
            self.losses.append(self._global_mean(loss.detach() * share))
            if plan.checkpoint is not None and self.steps % every == 0:
                self._save(plan.checkpoint, start)
                saved_at = self.steps
            if progress is not None and (time.perf_counter() - shown >= 2.0 or self.steps == total):
                shown = time.perf_counter()
                cos = float(batch_cosine(student, target).mean())
                feat = f" features {self.feature_losses[-1]:.4f}" if self.feature_losses else ""
                progress("train", self.steps, total, f"loss {self.losses[-1]:.4f}{feat} cosine {cos:.4f}")
        if plan.checkpoint is not None and saved_at != self.steps:
            self._save(plan.checkpoint, start)

    def _check(self, frac: float, total: int | None, progress: Progress | None) -> None:
        """Run ``watch`` when training has passed the next of ``plan.checks`` even points (the
        start, ..., the end); a time budget's clock keeps running while it does."""
        if self.watch is None or self.plan.checks < 1:
            return
        due = min(int(frac * self.plan.checks + 1e-9), self.plan.checks)
        if self.curve and due <= self.curve[-1]["check"]:
            return
        t0 = time.perf_counter()
        value = float(self.watch(self.qat))
        self.curve.append({"check": due, "step": self.steps, "held_out": value,
                           "seconds": round(time.perf_counter() - t0, 2)})
        self.qat.train()
        if progress is not None:
            progress("train", self.steps, total, f"held-out {value:.4f} at step {self.steps}")

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
                 "feature_losses": list(self.feature_losses),
                 "order": list(self.order), "position": self.position,
                 "seconds": self.elapsed + time.perf_counter() - start}
        if self.ema is not None:
            extra["ema"] = self.ema.state_dict()
        save_checkpoint(path, self.model, self.optimizer, step=self.steps, epoch=int(self.epochs), extra=extra,
                        generators=[self.generator], identity=self.plan.identity)

    def _resume(self, path: str) -> None:
        state = load_checkpoint(path, self.model, self.optimizer, generators=[self.generator],
                                identity=self.plan.identity)
        extra = state.extra
        self.steps, self.resumed_at = state.step, state.step
        self.seen, self.elapsed = extra["seen"], extra["seconds"]
        self.losses, self.loss_kinds = list(extra["losses"]), list(extra["loss_kinds"])
        self.feature_losses = list(extra.get("feature_losses", []))  # absent in checkpoints of logits-only runs
        self.order, self.position = list(extra["order"]), extra["position"]
        if self.ema is not None:  # the identity names the EMA decay, so a checkpoint without one is refused
            self.ema.load_state_dict(extra["ema"])


def parameter_groups(qat: QatModel, lr: float, quantizer_lr: float) -> list[dict]:
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


