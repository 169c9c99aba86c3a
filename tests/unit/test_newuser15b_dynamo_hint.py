"""A coded error of the ``torch.compile`` backend shows its hint (new-user round 15b).

Dynamo wraps the backend's exception in ``BackendCompilerFailed``, whose message is the
exception's ``str``: before, the user read "[NPF_TORCH_DYNAMIC_SHAPES] the captured graph takes a
symbolic size s77 = s77" (default ``dynamic=None``, a second batch size) and nothing saying
``dynamic=False``; a missing ``target`` did not say how to pass it."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()


def test_missing_target_message_carries_the_hint():
    compiled = torch.compile(_net(), backend="npuflow", dynamic=False, options={"calib_data": torch.rand(2, 1, 8, 8)})
    with pytest.raises(Exception) as err, torch.no_grad():
        compiled(torch.rand(1, 1, 8, 8))
    assert "[NPF_TORCH_BAD_BACKEND_OPTION]" in str(err.value)
    assert "hint: Pass options={'target':" in str(err.value)


def test_automatic_dynamic_shapes_message_says_dynamic_false():
    compiled = torch.compile(_net(), backend="npuflow", options={"target": "cpu-int8", "calib_data": torch.rand(2, 1, 8, 8)})
    with torch.no_grad():
        compiled(torch.rand(1, 1, 8, 8))
        with pytest.raises(Exception) as err:
            compiled(torch.rand(2, 1, 8, 8))  # Dynamo recompiles with a symbolic batch
    assert "[NPF_TORCH_DYNAMIC_SHAPES]" in str(err.value) and "dynamic=False" in str(err.value)
