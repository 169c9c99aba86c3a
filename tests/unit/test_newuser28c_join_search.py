"""Round 28c: ``npuflow run`` of a model's first load (RT-DETR on B4096: 13 s for 4 samples that run in
0.1 s) was spent in the joined-stretch search's ONNX Runtime sessions: every stretch tried, longest
first, optimised each of its parts again (477 sessions for 20 steps).  A part's kernels are now
found once per part content, so trying a shorter stretch costs only the joined graph's session."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from npuflow import ort_kernels
from npuflow.runtime import joined


def _model(ops: list[str]) -> onnx.ModelProto:
    """A chain of unary float ops on a [1, 4] tensor (opset 17)."""
    names = ["x", *[f"t{k}" for k in range(len(ops) - 1)], "y"]
    nodes = [helper.make_node(op, [names[k]], [names[k + 1]]) for k, op in enumerate(ops)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _parts(ops: list[str]) -> list[joined._Part]:
    """Each op as a part, written afresh as ``joined._parts`` writes them for every stretch it tries."""
    return [joined._Part(None, _model([op]), {}, {}, (), True) for op in ops]


def test_a_shorter_stretch_does_not_optimise_its_parts_again(monkeypatch):
    monkeypatch.setattr(joined, "_APART", {})
    calls: list[int] = []
    optimise = ort_kernels.optimized_graph

    def counting(model, *args, **kwargs):
        calls.append(len(model.graph.node))
        return optimise(model, *args, **kwargs)

    monkeypatch.setattr(ort_kernels, "optimized_graph", counting)
    ops = ["Relu", "Sigmoid", "Tanh"]
    assert not any(joined.kernel_difference(_model(ops), {}, _parts(ops)))
    assert len(calls) == 4  # three parts and the joined graph
    assert not any(joined.kernel_difference(_model(ops[:2]), {}, _parts(ops[:2])))
    assert calls[4:] == [2]  # the shorter stretch's joined graph only: its parts' kernels are known
    # a part of other content is optimised: the memo is by content, not by position
    assert not any(joined.kernel_difference(_model(["Relu", "Exp"]), {}, _parts(["Relu", "Exp"])))
    assert calls[5:] == [1, 2]
