"""Round 17c of new-user flows: ``npuflow.torch.compile`` of a module holding an LSTM.

Resemblyzer's speaker encoder (``pretrained.pt`` in the ``Resemblyzer`` wheel: 3-layer LSTM,
linear, ReLU, L2 norm) compiled for cpu-int8 gave cosine 1.0 to float on every sample: TorchDynamo
does not capture an ``nn.LSTM`` (graph break "Dynamo does not support RNN, GRU, or LSTM"), the
whole forward ran eagerly in float, npuflow's backend was never called, and nothing said so.
The same on a small LSTM + Linear: now warned; with ``torch._dynamo.config.allow_rnn`` (the
warning's advice) it is captured and quantized.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

import npuflow.torch.dynamo as dynamo


class _Speaker(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(12, 16, 1, batch_first=True)
        self.linear = nn.Linear(16, 8)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return torch.relu(self.linear(h[-1]))


def _calib() -> list[torch.Tensor]:
    return [torch.randn(1, 20, 12, generator=torch.Generator().manual_seed(i)) for i in range(8)]


def test_an_lstm_module_is_warned_as_running_in_float(caplog):
    torch._dynamo.reset()
    model, calib = _Speaker().eval(), _calib()
    with caplog.at_level(logging.WARNING, logger=dynamo.__name__):
        compiled = dynamo.compile(model, "cpu-int8", calib)
    assert "does not capture LSTM" in caplog.text and "allow_rnn" in caplog.text
    with torch.no_grad():
        assert torch.equal(compiled(calib[0]), model(calib[0]))  # what the warning says: float, nothing quantized


def test_with_allow_rnn_it_is_captured_and_quantized(caplog):
    torch._dynamo.reset()
    model, calib = _Speaker().eval(), _calib()
    with torch._dynamo.config.patch(allow_rnn=True), caplog.at_level(logging.WARNING, logger=dynamo.__name__):
        compiled = dynamo.compile(model, "cpu-int8", calib)
        with torch.no_grad():
            got, want = compiled(calib[1]), model(calib[1])
    assert "does not capture" not in caplog.text
    assert not torch.equal(got, want)
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.98
