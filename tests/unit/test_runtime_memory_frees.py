"""Issue 19, peak memory of a frame: ``Session.run`` drops each boundary tensor once the last step
that reads it has run (``_Program.frees``), as ONNX Runtime frees a model's dead tensors, instead of
holding every step's outputs to the end of the frame (YOLOv8n on bernoulli2, 6 steps: 36.5 -> 34.1
MiB peak over the baseline child; docs/runtime-measurements.md, "Peak memory").  Outputs do not change,
and a boundary tensor asked for by name is still returned."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import npuflow
from npuflow.runtime import merge
from npuflow.runtime import session as session_module
from tests import fixture_models
from tests.compile_check import random_sample_npuf


def test_each_input_is_dropped_after_its_last_reader_and_model_outputs_never():
    steps = [merge.Step(None, (0,), ("x",)), merge.Step(None, (1,), ("a", "x")), merge.Step(None, (2,), ("b", "a")),
             merge.Step(None, (3,), ("y",))]
    assert session_module._last_reads(steps, {"y", "b"}) == [(), ("x",), ("a",), ()]


@pytest.fixture(scope="module")
def cls_b4096(tmp_path_factory):
    return random_sample_npuf(fixture_models.ppocr_cls(), "DPUCZDX8G_ISA1_B4096", "x", [1, 3, 48, 192], 3,
                              tmp_path_factory.mktemp("cls") / "cls.npuf")


class _Keep:
    """An executor that runs the real one and keeps what it made (to see who else holds it)."""

    def __init__(self, executor) -> None:
        self.executor, self.made = executor, []

    def run(self, feeds, dump=None):
        out = self.executor.run(feeds, dump)
        self.made.append(out)
        return out


class _Probe:
    """A last step reading a model output: while it runs, counts the references to the first
    step's outputs (this list's, ``getrefcount``'s argument, and any the frame still holds)."""

    def __init__(self, keep: _Keep) -> None:
        self.keep, self.counts = keep, []

    def run(self, feeds, dump=None):
        made = self.keep.made[-1]
        self.counts.append({k: sys.getrefcount(made[k]) for k in made})
        return {}


def test_a_boundary_tensor_is_not_held_after_its_last_reader(cls_b4096):
    path, samples = cls_b4096
    with npuflow.Session(path) as reference, npuflow.Session(path, fuse=False) as op_by_op:
        expected = [reference.run(x) for x in samples]
        assert all(np.array_equal(e[k], v) for x, e in zip(samples, expected) for k, v in op_by_op.run(x).items())
    with npuflow.Session(path) as session:
        program = session._programs[0]
        # the frame is one joined session (runtime/joined.py): its parts, the integer program and
        # the CPU softmax, run as steps of their own here (each opens its session on its first run)
        (step,) = program.steps
        program.steps = list(step.executor.parts)
        session._one_run = None  # (a frame of the joined session alone would not run the steps)
        assert len(program.steps) >= 2
        first = program.steps[0]
        boundary = [t for t in program.steps[1].inputs if t not in program.outputs]
        assert boundary
        keep = _Keep(first.executor)
        probe = _Probe(keep)
        output = sorted(program.outputs)[0]
        program.steps = [merge.Step(keep, first.indices, first.inputs), *program.steps[1:],
                         merge.Step(probe, (), (output,))]
        program.frees = session_module._last_reads(program.steps, program.outputs)
        for x, e in zip(samples, expected):
            got = session.run(x)
            assert all(np.array_equal(got[k], v) for k, v in e.items())
        # held by keep.made and getrefcount's argument only: the frame dropped it
        assert all(c[t] == 2 for c in probe.counts for t in boundary), probe.counts
        # asked for by name, a boundary tensor is kept and returned
        got = session.run(samples[0], output_names=[boundary[0], output])
        assert np.array_equal(got[output], expected[0][output])
        assert np.array_equal(got[boundary[0]], keep.made[-1][boundary[0]])
