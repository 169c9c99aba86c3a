"""Tensors of a model captured from ONNX Runtime runs, one calibration batch at a time.

The accuracy algorithms need intermediate tensors (layer inputs and outputs) from calibration
runs; :func:`capture` streams them one batch at a time, so memory stays bounded by what the
caller keeps from each batch.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ...model import tensor_elem_types
from ...ort_session import open_session
from ..calibrate import run_ahead

Feed = Mapping[str, np.ndarray]
#: Per feed, a model's graph outputs in order (what :func:`run_outputs` returns).
Outputs = list[list[np.ndarray]]


def session(model: onnx.ModelProto, outputs: Sequence[str]) -> ort.InferenceSession:
    """An ORT session (graph optimisations off, so intermediate tensors exist) exposing ``outputs``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    types = tensor_elem_types(m)
    for name in outputs:
        if name not in have:
            m.graph.output.append(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None))
            have.add(name)
    return open_session(m, level="disable", threads=2, what="run")


def capture(
    model: onnx.ModelProto,
    feeds: Iterable[Feed],
    names: Sequence[str],
    on_batch: Callable[[int, dict[str, np.ndarray]], None],
) -> None:
    """Run ``model`` on each feed and hand ``{name: tensor}`` for ``names`` to ``on_batch``."""
    sess = session(model, names)
    input_names = {i.name for i in sess.get_inputs()}

    def run(_: int, feed: Feed) -> dict[str, np.ndarray]:
        return dict(zip(names, sess.run(list(names), {n: v for n, v in feed.items() if n in input_names})))

    for k, _, values in run_ahead(run, feeds):
        on_batch(k, values)


def run_outputs(model: onnx.ModelProto, feeds: Iterable[Feed], *, spinning: bool = True) -> list[list[np.ndarray]]:
    """All graph outputs for each feed (optimised session: used for end-to-end comparisons);
    ``spinning=False`` for worker processes sharing the cores (scheduling only, same numbers)."""
    sess = open_session(model, level="all", threads=2, spinning=spinning, what="run")
    input_names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {n: v for n, v in f.items() if n in input_names}) for f in feeds]


class HeldOutRuns:
    """The samples ``fast_finetune.select_on`` holds out, and model outputs on them, each model run
    on them once.

    Why: the float model's outputs on them are the reference of every restart
    (:func:`.restarts.best_of`) and of quantize's accuracy check, and the kept restart is the model
    that check reads (unless bias correction changes it); on PP-OCRv4 rec each run of 512 lines took
    1.5-3 minutes at load 13-18, the float run and the kept model's run were each made twice, and
    the restarts judged against the legalised graph instead of the float model the check reads.
    Only the float outputs and the latest :meth:`remember`-ed model's are kept (a rec model's 512
    outputs hold 540 MB)."""

    def __init__(self, feeds: list[Feed], float_model: onnx.ModelProto) -> None:
        self.feeds = feeds
        self.float_model, self._float_key = float_model, _digest(float_model)
        self._float: Outputs | None = None
        self._kept: tuple[bytes, Outputs] | None = None

    def float_outputs(self) -> Outputs:
        """The float model's outputs, run on the first call."""
        if self._float is None:
            self._float = run_outputs(self.float_model, self.feeds)
        return self._float

    def remember(self, model: onnx.ModelProto, outputs: Outputs) -> None:
        """Keep ``outputs`` as ``model``'s (replacing the model remembered before)."""
        self._kept = (_digest(model), outputs)

    def outputs(self, model: onnx.ModelProto) -> Outputs:
        """``model``'s outputs: remembered when it is the float model or the remembered one (same
        content), run otherwise."""
        key = _digest(model)
        if key == self._float_key:
            return self.float_outputs()
        if self._kept is not None and self._kept[0] == key:
            return self._kept[1]
        return run_outputs(model, self.feeds)


def _digest(model: onnx.ModelProto) -> bytes:
    """A content key of ``model`` (its serialized bytes' SHA-256)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).digest()
