"""Quantization-aware training: ``prepare_qat`` -> train -> ``to_deployable``.

The user keeps their own training loop.  What :class:`QatModel` adds:

* :meth:`QatModel.calibrate` runs a few batches through the observers (no gradients, eval-mode
  BatchNorm) and freezes them, so training starts from good scales;
* :meth:`QatModel.freeze_bn` switches folded BatchNorms to their running statistics (do it for the
  last part of training, so the network adapts to the weights that will be deployed);
* :meth:`QatModel.freeze_observers` stops the observers (learnable quantizers start training);
* :meth:`QatModel.quantizer_parameters` / :meth:`QatModel.non_quantizer_parameters` split
  parameters for two optimizer groups (quantizer parameters want a much larger learning rate);
* :meth:`QatModel.to_deployable` writes the QDQ ONNX model with the trained parameters.

Data-parallel training (torch DDP under ``torchrun``, gloo on CPU, nccl on GPU): wrap with
:func:`distributed` instead of ``DistributedDataParallel`` directly.  Each rank's activation
observers then observe the *global* batch (the ranks' batches gathered in rank order), so
ranges, votes and scales are those of one process on the concatenated batch, identical on
every rank; weights need nothing (DDP keeps them equal).  The gather runs only while observers
observe (``calibrate`` and training before ``freeze_observers``).  BatchNorms folded into a
convolution fold with the *global* batch's statistics too (each rank's count, mean and squared
deviations are gathered and combined), so their running statistics -- what the compiled model
folds -- are those of one process on the concatenated batch, equal on every rank, until
:meth:`QatModel.freeze_bn`.  :func:`export_qat` writes from rank 0 only.

Checkpoints (:func:`save_checkpoint` / :func:`load_checkpoint`) hold everything a resumed run
needs to continue as if it had not stopped: parameters and every quantizer and BatchNorm buffer
(scales, votes, running ranges, observing flags, running statistics), which folded BatchNorms are
frozen, the optimizer, the step and epoch, and the random states (torch, numpy, Python; each
rank's, and any ``torch.Generator`` the loop draws from).  They are written through a temporary
file and a rename, so a run killed while writing leaves the previous checkpoint intact.
"""

from __future__ import annotations

import functools
import io
import os
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.distributed as dist
from torch import nn

from ..errors import NpuflowError
from ..model import save, write_atomic
from ..targets import Target, load_target
from .capture import capture, example_tuple
from .config import Formats, QatConfig, formats_for, qat_config
from .export import default_output_names, export_qdq
from .layers import QatWeighted
from .prepare import rewrite
from .quantizer import FakeQuantizer

_QUANTIZER_PARAMS = ("log2_threshold", "step_size")


class QatModel(nn.Module):
    """A trainable module whose forward computes the deployed integer model's numbers."""

    def __init__(self, graph_module: torch.fx.GraphModule, target: Target, formats: Formats,
                 example_inputs: tuple, input_names: list[str], output_names: list[str]) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.target = target
        self.formats = formats
        self.example_inputs = example_inputs
        self.input_names = input_names
        self.output_names = output_names

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)

    # --- quantizers ---------------------------------------------------------------------

    def quantizers(self) -> Iterator[tuple[str, FakeQuantizer]]:
        """Every fake quantizer (activations and weights) with its module path."""
        for name, m in self.graph_module.named_modules():
            if isinstance(m, FakeQuantizer):
                yield name, m

    def activation_quantizers(self) -> Iterator[tuple[str, FakeQuantizer]]:
        return ((n, q) for n, q in self.quantizers() if not q.weight)

    def freeze_observers(self) -> None:
        """Stop observing: scales are frozen, or trained when ``learnable``."""
        for _, q in self.quantizers():
            q.freeze()

    def freeze_bn(self) -> None:
        """Fold BatchNorm with running statistics from now on and stop updating them."""
        for m in self.graph_module.modules():
            if isinstance(m, QatWeighted):
                m.freeze_bn()

    @torch.no_grad()
    def calibrate(self, batches: Iterable, freeze: bool = True) -> None:
        """Run calibration batches through the observers (eval mode), then freeze them."""
        was_training = self.training
        self.eval()
        acts = [q for _, q in self.activation_quantizers()]
        for q in acts:
            q.unfreeze()
            q.calibrating = True
        try:
            for batch in batches:
                self(*example_tuple(batch))
        finally:
            for q in acts:
                q.calibrating = False
        if freeze:
            self.freeze_observers()
        self.train(was_training)

    def quantizer_parameters(self) -> list[nn.Parameter]:
        """Learnable quantizer parameters (log2 thresholds / step sizes)."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] in _QUANTIZER_PARAMS]

    def non_quantizer_parameters(self) -> list[nn.Parameter]:
        """Weights, biases and BatchNorm affine parameters."""
        return [p for n, p in self.named_parameters() if n.rsplit(".", 1)[-1] not in _QUANTIZER_PARAMS]

    def sync_observers(self) -> "QatModel":
        """Activation observers observe, and folded BatchNorms measure, the global batch of a
        torch.distributed job (see the module docstring); group members vote through their
        leader, which is the one gathering."""
        for _, q in self.activation_quantizers():
            if not q._leader and "_observe" not in vars(q):
                q._observe = functools.partial(_observe_global_batch, q)
        for m in self.graph_module.modules():
            if isinstance(m, QatWeighted) and m.bn is not None and "_batch_stats" not in vars(m):
                m._batch_stats = functools.partial(_global_batch_stats, m)
        return self

    # --- deployment -----------------------------------------------------------------------

    def to_deployable(self, path=None) -> onnx.ModelProto:
        """The QDQ ONNX model with the trained quantization parameters (saved when ``path``)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():  # weight scales follow the final weights before they are frozen in
                self.graph_module(*self.example_inputs)
            meta = {"npuflow.target": self.target.name, "npuflow.scale_type": self.target.numerics.scale_type,
                    "npuflow.source": "qat"}
            model = export_qdq(self.graph_module, self.example_inputs, self.input_names, self.output_names, meta)
        finally:
            self.train(was_training)
        if path is not None:
            save(model, path)
        return model


def prepare_qat(module: nn.Module, example_inputs, target: str | Target,
                config: QatConfig | dict | None = None, *, input_names: list[str] | None = None,
                output_names: list[str] | None = None) -> QatModel:
    """Capture ``module`` and return a trainable :class:`QatModel` for ``target``.

    The returned model is in training mode with observers active; call
    :meth:`QatModel.calibrate` first for a better start.  ``module`` itself is not modified.
    """
    tgt = target if isinstance(target, Target) else load_target(target)
    cfg = qat_config(config)
    formats = formats_for(tgt, cfg)
    inputs = example_tuple(example_inputs)
    gm = capture(module, inputs)
    rewrite(gm, tgt, formats)
    names_in = input_names or ([n.name for n in gm.graph.nodes if n.op == "placeholder"][: len(inputs)])
    gm.eval()
    if output_names is None:
        with torch.no_grad():
            out = gm(*inputs)
        output_names = default_output_names(out)
    qat = QatModel(gm, tgt, formats, inputs, list(names_in), list(output_names))
    return qat.train()


def export_qat(qat: QatModel | nn.parallel.DistributedDataParallel, path) -> onnx.ModelProto | None:
    """Write ``qat`` (or its DDP wrapper) as a QDQ ONNX file ready for ``npuflow compile``; in a
    torch.distributed job only rank 0 writes (the others return None: their models are equal)."""
    if _world() > 1 and dist.get_rank() != 0:
        return None
    return _unwrap(qat).to_deployable(path)


def distributed(qat: QatModel, **ddp_options) -> nn.parallel.DistributedDataParallel:
    """``qat`` wrapped in ``DistributedDataParallel`` with synchronised observers (call after
    ``torch.distributed.init_process_group``).  Learnable quantizers are unused until observers
    freeze, so DDP is then told to expect unused parameters unless ``ddp_options`` says otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        raise NpuflowError("NPF_SCALEOUT_NO_PROCESS_GROUP")
    ddp_options.setdefault("find_unused_parameters", any(q.learnable for _, q in qat.quantizers()))
    return nn.parallel.DistributedDataParallel(qat.sync_observers(), **ddp_options)


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _observe_global_batch(quantizer: FakeQuantizer, x: torch.Tensor) -> None:
    """Observe the ranks' batches concatenated in rank order (padded to one size for the gather)."""
    world = _world()
    if world > 1:
        sizes = [torch.zeros(1, dtype=torch.int64, device=x.device) for _ in range(world)]
        dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device))
        rows = [int(s) for s in sizes]
        padded = torch.cat([x, x.new_zeros((max(rows) - x.shape[0], *x.shape[1:]))])
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous())
        x = torch.cat([p[:n] for p, n in zip(parts, rows)])
    FakeQuantizer._observe(quantizer, x)


def _global_batch_stats(layer: QatWeighted, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A folded BatchNorm's batch mean and variance over the ranks' batches together, and the
    running statistics updated with them (as :meth:`QatWeighted._batch_stats` does for one batch).

    Each rank gathers every rank's (count, mean, sum of squared deviations) per channel and
    combines them in rank order (Chan et al.'s pairwise update, in float64): the statistics of
    one process on the concatenated batch up to float32 rounding, without moving activations.
    """
    world = _world()
    if world == 1:
        return QatWeighted._batch_stats(layer, x)
    bn = layer.bn
    with torch.no_grad():
        y = layer.module(x).double()
        dims = [0] + list(range(2, y.dim()))
        channels = y.shape[1]
        local_mean = y.mean(dim=dims)
        deviations = (y - local_mean.reshape(1, -1, *([1] * (y.dim() - 2)))).pow(2).sum(dim=dims)
        count = torch.tensor([y.numel() // channels], dtype=torch.float64, device=y.device)
        local = torch.cat([count, local_mean, deviations])
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local)
        n = torch.zeros((), dtype=torch.float64, device=y.device)
        mean = torch.zeros(channels, dtype=torch.float64, device=y.device)
        m2 = torch.zeros(channels, dtype=torch.float64, device=y.device)
        for part in parts:
            nb, mb, m2b = part[0], part[1:1 + channels], part[1 + channels:]
            total = n + nb
            delta = mb - mean
            mean = mean + delta * nb / total
            m2 = m2 + m2b + delta.pow(2) * n * nb / total
            n = total
        var = m2 / n
        if bn.track_running_stats:
            momentum = 0.1 if bn.momentum is None else bn.momentum
            count_all = int(n)
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_((var * count_all / max(count_all - 1, 1)).to(bn.running_var.dtype), momentum)
            bn.num_batches_tracked += 1
    return mean.to(x.dtype), var.to(x.dtype)


# --- checkpoints -------------------------------------------------------------------------------

_CHECKPOINT_FORMAT = "npuflow.qat-checkpoint"
_CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restored besides the model, optimizer and random states."""

    path: Path
    step: int
    epoch: int
    extra: dict[str, Any] = field(default_factory=dict)  # what the writer passed as ``extra``
    world: int = 1  # ranks of the run that wrote it


def save_checkpoint(path: str | os.PathLike, qat: QatModel | nn.parallel.DistributedDataParallel,
                    optimizer: torch.optim.Optimizer | None = None, *, step: int = 0, epoch: int = 0,
                    extra: Mapping[str, Any] | None = None, generators: Sequence[torch.Generator] = (),
                    identity: Mapping[str, str] | None = None) -> Path | None:
    """Write a checkpoint that :func:`load_checkpoint` resumes from exactly (see the module docstring).

    Call it on every rank of a torch.distributed job (it gathers the ranks' random states);
    rank 0 writes, the others return None.  ``extra``: plain values (numbers, strings, lists,
    dicts, tensors) the caller's loop needs back; ``identity``: strings naming what the run is
    (a data set, a config), checked on load next to the target and the model's parameters.
    """
    module = _unwrap(qat)
    rng = _rng_state()
    world = _world()
    states = [rng]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, rng)
        if dist.get_rank() != 0:
            return None
    payload = {
        "format": _CHECKPOINT_FORMAT, "version": _CHECKPOINT_VERSION, "target": module.target.name,
        "identity": dict(identity or {}), "structure": _structure(module),
        "model": module.state_dict(), "bn_frozen": [n for n, m in module.named_modules()
                                                     if isinstance(m, QatWeighted) and m.bn_frozen],
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": int(step), "epoch": int(epoch), "extra": dict(extra or {}),
        "generators": [g.get_state() for g in generators], "rng": states, "world": world,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return write_atomic(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, qat: QatModel | nn.parallel.DistributedDataParallel,
                    optimizer: torch.optim.Optimizer | None = None, *, generators: Sequence[torch.Generator] = (),
                    identity: Mapping[str, str] | None = None) -> Checkpoint:
    """Restore what :func:`save_checkpoint` wrote into ``qat`` (and ``optimizer``, ``generators``,
    the random states), after checking it belongs to this run: a checkpoint of another target,
    model or ``identity`` is ``NPF_QAT_CHECKPOINT_MISMATCH`` naming what differs.

    In a torch.distributed job call it on every rank: rank 0 reads the file and sends it to the
    others (only rank 0's machine needs it); each rank takes its own random state when the job
    has as many ranks as the one that wrote it, rank 0's otherwise.
    """
    module = _unwrap(qat)
    payload = _read_checkpoint(Path(path))
    _check_checkpoint(Path(path), payload, module, identity or {})
    module.load_state_dict(payload["model"])
    frozen = set(payload["bn_frozen"])
    for name, m in module.named_modules():
        if isinstance(m, QatWeighted):
            m.bn_frozen = name in frozen
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise NpuflowError("NPF_QAT_CHECKPOINT_MISMATCH", path=str(path),
                               what="it holds no optimizer state and this run has an optimizer")
        optimizer.load_state_dict(payload["optimizer"])
    if len(payload["generators"]) != len(generators):
        raise NpuflowError("NPF_QAT_CHECKPOINT_MISMATCH", path=str(path),
                           what=f"{len(payload['generators'])} random generator(s) saved, {len(generators)} here")
    for g, state in zip(generators, payload["generators"]):
        g.set_state(state)
    states = payload["rng"]
    rank = dist.get_rank() if _world() > 1 else 0
    _set_rng_state(states[rank] if len(states) == _world() else states[0])
    return Checkpoint(Path(path), payload["step"], payload["epoch"], payload["extra"], payload["world"])


def _unwrap(qat: QatModel | nn.parallel.DistributedDataParallel) -> QatModel:
    return qat.module if isinstance(qat, nn.parallel.DistributedDataParallel) else qat


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's contents; in a distributed job read by rank 0 and broadcast (a failure
    to read reaches every rank as the same coded error, instead of leaving the others waiting)."""
    world = _world()
    if world > 1 and dist.get_rank() != 0:
        box = [None]
        dist.broadcast_object_list(box, src=0)
        outcome = box[0]
    else:
        try:
            outcome = ("ok", path.read_bytes())
        except OSError as exc:
            outcome = ("error", exc.strerror or str(exc))
        if world > 1:
            dist.broadcast_object_list([outcome], src=0)
    if outcome[0] == "error":
        raise NpuflowError("NPF_QAT_CHECKPOINT_UNREADABLE", path=str(path), reason=outcome[1])
    try:
        payload = torch.load(io.BytesIO(outcome[1]), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unpickling failure: not a checkpoint file)
        raise NpuflowError("NPF_QAT_CHECKPOINT_UNREADABLE", path=str(path),
                           reason=f"not a torch checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise NpuflowError("NPF_QAT_CHECKPOINT_UNREADABLE", path=str(path), reason="not an npuflow QAT checkpoint")
    if payload.get("version") != _CHECKPOINT_VERSION:
        raise NpuflowError("NPF_QAT_CHECKPOINT_UNREADABLE", path=str(path),
                           reason=f"checkpoint format version {payload.get('version')!r}, this npuflow reads "
                                  f"{_CHECKPOINT_VERSION}")
    return payload


def _check_checkpoint(path: Path, payload: dict, module: QatModel, identity: Mapping[str, str]) -> None:
    """``NPF_QAT_CHECKPOINT_MISMATCH`` naming the first thing that differs from this run."""
    if payload["target"] != module.target.name:
        raise NpuflowError("NPF_QAT_CHECKPOINT_MISMATCH", path=str(path),
                           what=f"target {payload['target']} in the checkpoint, {module.target.name} here")
    saved = payload["identity"]
    for key in sorted(set(saved) | set(identity)):
        if saved.get(key) != identity.get(key):
            raise NpuflowError("NPF_QAT_CHECKPOINT_MISMATCH", path=str(path),
                               what=f"{key}: {saved.get(key, '(none)')} in the checkpoint, "
                                    f"{identity.get(key, '(none)')} here")
    mine = {name: rest for name, *rest in _structure(module)}
    theirs = {name: rest for name, *rest in payload["structure"]}
    if mine != theirs:
        missing = sorted(set(mine) - set(theirs))
        unknown = sorted(set(theirs) - set(mine))
        changed = sorted(n for n in set(mine) & set(theirs) if mine[n] != theirs[n])
        parts = []
        if changed:
            n = changed[0]
            parts.append(f"{n} is {theirs[n][0]} {theirs[n][1]} in the checkpoint, {mine[n][0]} {mine[n][1]} here")
        if missing:
            parts.append(f"{len(missing)} tensor(s) of this model missing (first: {missing[0]})")
        if unknown:
            parts.append(f"{len(unknown)} tensor(s) this model does not have (first: {unknown[0]})")
        raise NpuflowError("NPF_QAT_CHECKPOINT_MISMATCH", path=str(path), what="another model: " + "; ".join(parts))


def _structure(module: QatModel) -> list[tuple[str, list[int], str]]:
    """Name, shape and dtype of every parameter and buffer: what tells another model apart."""
    return [(name, list(t.shape), str(t.dtype).replace("torch.", "")) for name, t in module.state_dict().items()]


def _rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and Python random states, as tensors and plain values
    (what ``torch.load(weights_only=True)`` reads back)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
