"""New-user round 17b: ``torch.compile(gcn, backend="npuflow", options={"calib_data": [(x, adj), ...]})``
where ``forward(x, adj)`` reads ``adj`` first.

TorchDynamo numbers the captured graph's inputs in the order the forward first reads them, so the
graph took ``(adj, x)``; calib_data in the forward's argument order was refused as not fitting and the
graph calibrated on its first 8 calls in float instead (a test call then ran float: "cosine 1.0").
Now tuples whose shapes are the graph's inputs' in another order (each shape once) are reordered.
"""

from __future__ import annotations

import numpy as np
import torch
import torch._dynamo
from torch import nn

from npuflow.torch import dynamo


class _GCN(nn.Module):
    """Two graph-convolution layers over a normalised adjacency input (read before the features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.l1, self.l2, self.out = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a = adj + torch.eye(adj.shape[-1])
        d = a.sum(-1).rsqrt()
        a = d.unsqueeze(-1) * a * d.unsqueeze(-2)
        h = torch.relu(a @ self.l1(x))
        h = torch.relu(a @ self.l2(h))
        return self.out(h).log_softmax(-1)


def _graph(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.RandomState(seed)
    a = (rng.rand(24, 24) < 0.15).astype(np.float32)
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 0)
    return torch.from_numpy(rng.randn(1, 24, 16).astype(np.float32)), torch.from_numpy(a[None])


def test_calib_tuples_in_argument_order_fit_a_graph_captured_in_read_order() -> None:
    torch._dynamo.reset()
    net = _GCN().eval()
    graphs: list[dynamo.CompiledGraph] = []

    def spy(gm, example_inputs, options=None):
        graphs.append(dynamo.backend(gm, example_inputs, options))
        return graphs[-1]

    calib = [_graph(s) for s in range(8)]
    compiled = torch.compile(net, backend=spy, dynamic=False, options={"target": "cpu-int8", "calib_data": calib})
    x, adj = _graph(99)
    got = compiled(x, adj)
    torch._dynamo.reset()
    (graph,) = graphs
    assert graph.session is not None  # quantized at capture, not after 8 float calls
    with torch.no_grad():
        ref = net(x, adj)
    assert not torch.equal(got, ref)  # the quantized graph ran
    cos = float(torch.nn.functional.cosine_similarity(got.flatten(), ref.flatten(), dim=0))
    assert cos > 0.99
    assert float((got.argmax(-1) == ref.argmax(-1)).float().mean()) >= 0.9


def test_a_reordering_needs_each_shape_once() -> None:
    assert dynamo._reordering([(1, 24, 16), (1, 24, 24)], [(1, 24, 24), (1, 24, 16)]) == [1, 0]
    assert dynamo._reordering([(1, 4), (1, 4), (1, 8)], [(1, 8), (1, 4), (1, 4)]) is None
    assert dynamo._reordering([(1, 4), (1, 5)], [(1, 4), (1, 6)]) is None
