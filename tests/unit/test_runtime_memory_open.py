"""Issue 19, peak memory at load: a fused run's ONNX Runtime session is created with the build's
graph cleared and the mapped ``.npuf``'s pages given back (``fused.FusedRun``).

That creation (ONNX Runtime's copy of the weights and its packed form beside it) is a load's
high-water mark; the graph's nodes, tables and weight arrays and the file's pages the build read
were resident through it (docs/runtime-measurements.md, "Peak memory").  The outputs do not change.
"""

from __future__ import annotations

import numpy as np

import npuflow
from npuflow.compiler import compiled as compiled_module
from npuflow.runtime import fused_graph, fused_run
from tests import fixture_models
from tests.compile_check import random_sample_npuf


def _mnist_npuf(tmp_path):
    return random_sample_npuf(fixture_models.mnist_cnn(), "cpu-int8", "input", [1, 1, 28, 28], 4, tmp_path / "mnist.npuf",
                              low=0.0)


def test_a_fused_runs_session_opens_after_its_graph_is_cleared_and_the_pages_released(monkeypatch, tmp_path):
    path, samples = _mnist_npuf(tmp_path)
    events: list = []
    graphs: list[fused_graph.Graph] = []
    real_release, real_model, real_open = (compiled_module.CompiledModel.release_pages, fused_graph.Graph.model,
                                           fused_run.open_session)

    def release(self):
        events.append("release")
        real_release(self)

    def model(self, *args, **kwargs):
        graphs.append(self)
        return real_model(self, *args, **kwargs)

    def opening(onnx_model, **kwargs):
        g = graphs[-1]
        events.append(("open", len(g.nodes), len(g.arrays), len(g.tables), len(g.inits)))
        assert kwargs["external"], "the weights still reach ONNX Runtime, as external arrays"
        return real_open(onnx_model, **kwargs)

    monkeypatch.setattr(compiled_module.CompiledModel, "release_pages", release)
    monkeypatch.setattr(fused_graph.Graph, "model", model)
    monkeypatch.setattr(fused_run, "open_session", opening)
    s = npuflow.Session(path)
    opened = [k for k, e in enumerate(events) if e != "release"]
    assert opened, events
    for k in opened:
        assert events[k] == ("open", 0, 0, 0, 0), events  # nothing of the build is left in the graph
        assert events[k - 1] == "release", events  # the file's pages given back just before
    monkeypatch.undo()
    ref = npuflow.Session(path, fuse=False)
    for x in samples[:2]:
        a, b = s.run(x), ref.run(x)
        assert all(np.array_equal(a[k], b[k]) for k in b)
    # dump mode writes the graph again from the run's ops: the cleared one is not needed
    dumped = s.run(samples[0], dump_dir=tmp_path / "dump")
    assert all(np.array_equal(dumped[k], ref.run(samples[0])[k]) for k in dumped)
    assert (tmp_path / "dump" / "index.json").is_file()
