"""Round 20 of new-user flows: a channel ``Split`` the accelerator has no op for runs as slices.

torch's default (dynamo) exporter writes ``torch.chunk``/``torch.split`` as one ``Split``; the
TorchScript exporter wrote ``Slice`` nodes.  DPUCZDX8G has strided slices but no split, so a
Res2Net exported with the default exporter had its four-way splits on the CPU (9 compiled
subgraphs on DPUCZDX8G_ISA1_B4096 against 1 from TorchScript), and bernoulli2's split needs channels that
divide by the number of parts (round 19b's MixConv: 32 into 3).  The float passes and ``check`` now write such a
``Split`` as one ``Slice`` per part where the target rejects the split and runs the slices.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

import npuflow
from npuflow.passes.split_slices import splits_as_slices
from npuflow.targets import load_target as get_target
from tests.compile_check import assert_one_subgraph_equal_to_ort
from tests.unit.quant_nets import run, samples

SHAPE = [1, 3, 8, 8]


def _conv_split_convs(sizes: list[int] | None, parts: int, opset: int) -> onnx.ModelProto:
    """Conv 3 -> 12 channels -> Split(axis 1) -> a 3x3 conv per part -> Concat -> ReLU; ``sizes``
    None: ``parts`` equal parts (from opset 18 by ``num_outputs``)."""
    rng = np.random.default_rng(20)
    widths = sizes or [12 // parts] * parts
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (12, 3, 3, 3)).astype(np.float32), "w0")]
    extra: dict = {}
    split_inputs = ["a"]
    if sizes is not None and opset >= 13:
        inits.append(numpy_helper.from_array(np.array(sizes, np.int64), "sizes"))
        split_inputs.append("sizes")
    elif sizes is not None:
        extra["split"] = sizes
    elif opset >= 18:
        extra["num_outputs"] = parts
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0", pads=[1, 1, 1, 1]),
             helper.make_node("Split", split_inputs, [f"p{k}" for k in range(parts)], name="split", axis=1, **extra)]
    for k, w in enumerate(widths):
        inits.append(numpy_helper.from_array(rng.normal(0, 0.4, (w, w, 3, 3)).astype(np.float32), f"w{k + 1}"))
        nodes.append(helper.make_node("Conv", [f"p{k}", f"w{k + 1}"], [f"c{k}"], name=f"conv{k + 1}",
                                      pads=[1, 1, 1, 1]))
    nodes += [helper.make_node("Concat", [f"c{k}" for k in range(parts)], ["cat"], name="concat", axis=1),
              helper.make_node("Relu", ["cat"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "split", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


CASES = [([3, 3, 3, 3], 4, 11), ([3, 3, 3, 3], 4, 13), (None, 4, 13), (None, 4, 18), ([4, 4, 4], 3, 17),
         ([5, 4, 3], 3, 13), ([5, 4, 3], 3, 18), (None, 2, 11)]


@pytest.mark.parametrize("sizes, parts, opset", CASES)
def test_on_the_dpu_a_split_is_slices_with_the_same_values(sizes, parts, opset):
    model = _conv_split_convs(sizes, parts, opset)
    rewritten = splits_as_slices(model, get_target("DPUCZDX8G_ISA1_B4096"))
    ops = [n.op_type for n in rewritten.graph.node]
    assert "Split" not in ops and ops.count("Slice") == parts
    x = samples(SHAPE, n=1, seed=2)[0]
    np.testing.assert_array_equal(run(rewritten, {"x": x})[0], run(model, {"x": x})[0])


def test_a_target_that_runs_the_split_keeps_it():
    """cpu-int8 (a CPU target) keeps the one op, and so does bernoulli2 where the channels divide by
    the number of parts ("Channel Split: input_channel % num_outputs == 0"); 12 into 5 become slices."""
    even, uneven = _conv_split_convs([4, 4, 4], 3, 17), _conv_split_convs([3, 3, 2, 2, 2], 5, 17)
    assert "Split" in [n.op_type for n in splits_as_slices(even, get_target("cpu-int8")).graph.node]
    assert "Split" in [n.op_type for n in splits_as_slices(uneven, get_target("cpu-int8")).graph.node]
    assert "Split" in [n.op_type for n in splits_as_slices(even, get_target("bernoulli2")).graph.node]
    assert "Split" not in [n.op_type for n in splits_as_slices(uneven, get_target("bernoulli2")).graph.node]


def test_a_split_of_unknown_parts_is_left_and_reported():
    model = _conv_split_convs([3, 3, 3, 3], 4, 13)
    sizes = next(i for i in model.graph.initializer if i.name == "sizes")
    model.graph.initializer.remove(sizes)
    model.graph.input.append(helper.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [4]))
    done: list = []
    assert "Split" in [n.op_type for n in splits_as_slices(model, get_target("DPUCZDX8G_ISA1_B4096"), done).graph.node]
    assert [(r.applied, r.rewrite) for r in done] == [(False, "split_as_slices")] and "not known" in done[0].detail


@pytest.mark.parametrize("target, device, sizes", [("DPUCZDX8G_ISA1_B4096", "DPU", [3, 3, 3, 3]),
                                                   ("bernoulli2", "BPU", [3, 3, 2, 2, 2])])
def test_check_and_compile_put_the_split_on_the_accelerator_equal_to_ort(target, device, sizes):
    model = _conv_split_convs(sizes, len(sizes), 17)
    assert npuflow.check(model, target).node("split/part0").device == "NPU"
    assert_one_subgraph_equal_to_ort(model, SHAPE, target, device)


class _Res2Block(torch.nn.Module):
    """Res2Net's hierarchical split: y_k = conv_k(x_k + y_{k-1}), concatenated."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 16, 1)
        self.convs = torch.nn.ModuleList([torch.nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])

    def forward(self, x):
        xs = torch.chunk(torch.relu(self.a(x)), 4, 1)
        ys, y = [], None
        for k, conv in enumerate(self.convs):
            y = torch.relu(conv(xs[k] if y is None else xs[k] + y))
            ys.append(y)
        return torch.cat([*ys, xs[3]], 1)


def test_a_res2net_block_from_the_default_exporter_is_one_dpu_subgraph(tmp_path):
    path = str(tmp_path / "res2.onnx")
    torch.onnx.export(_Res2Block().eval(), (torch.rand(*SHAPE),), path, input_names=["x"], output_names=["y"],
                      dynamo=True)
    assert "Split" in [n.op_type for n in onnx.load(path).graph.node]
    assert_one_subgraph_equal_to_ort(onnx.load(path), SHAPE, "DPUCZDX8G_ISA1_B4096", "DPU")
