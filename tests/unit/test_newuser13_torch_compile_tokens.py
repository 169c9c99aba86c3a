"""Round 13 of new-user flows: ``torch.compile(model, backend="npuflow")`` on a text model whose input is
a tensor of int64 token ids (an LLM-style block: embedding, RMSNorm, rotary attention, SwiGLU; and a
GRU classifier).

The backend refused every graph with an integer input (``NPF_TORCH_BAD_INPUTS`` "quantizes graphs of float
inputs"), which Dynamo wraps in a ``BackendCompilerFailed`` traceback, though ``npuflow quantize``
and ``compile`` take the same model exported to ONNX with its int64 input (the ids go to a ``Gather``
the quantizer leaves as it is).  The captured graph is now quantized and run like any other.
"""

from __future__ import annotations

import numpy as np
import pytest

import torch  # noqa: E402  (the torch extra is part of the test extra)
import torch._dynamo  # noqa: E402
from torch import nn

from npuflow.torch import dynamo  # noqa: E402


class _TokenNet(nn.Module):
    """Token ids -> embedding -> a two-layer MLP per position -> mean over positions -> logits."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.emb(tokens)))).mean(1)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("target", ["DPUCZDX8G_ISA1_B4096", "cpu-int8"])
def test_a_graph_of_token_ids_is_quantized_and_runs(target):
    torch.manual_seed(0)
    net = _TokenNet().eval()
    graphs: list[dynamo.CompiledGraph] = []

    def spy(gm, example_inputs, options=None):
        graphs.append(dynamo.backend(gm, example_inputs, {"target": target, "calib_data": calib}))
        return graphs[-1]

    calib = [torch.randint(0, 40, (1, 12)) for _ in range(8)]
    compiled = torch.compile(net, backend=spy, dynamic=False)
    tokens = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        got, want = compiled(tokens).numpy(), net(tokens).numpy()
    assert len(graphs) == 1 and graphs[0].quantized is not None
    cos = float(np.dot(got.ravel(), want.ravel()) / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cos > 0.99, cos
    assert not np.array_equal(got, want)  # the quantized graph ran, not the float module
