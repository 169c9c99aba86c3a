"""Tensors of a model captured from ONNX Runtime runs, one calibration batch at a time.

The accuracy algorithms need intermediate tensors (layer inputs and outputs) from calibration
runs; :func:`capture` streams them one batch at a time, so memory stays bounded by what the
caller keeps from each batch.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ...model import tensor_elem_types
from ...ort_session import open_session
from ..calibrate import run_ahead

Feed = Mapping[str, np.ndarray]


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
