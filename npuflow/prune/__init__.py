"""Target-aware channel pruning of PyTorch models (the Vitis AI Optimizer's job).

Requires torch (the ``npuflow[torch]`` extra) and builds on ``torch-pruning`` for channel
dependency groups.  Typical iterative use::

    runner = IterativePruningRunner(model, example_inputs, target="DPUCZDX8G_ISA1_B4096")
    runner.ana(eval_fn)                          # cached sensitivity analysis (.sens + plot)
    sparse = runner.prune(removal_ratio=0.3)     # masked model: fine-tune it with your loop
    sparse = runner.prune(removal_ratio=0.5, model=sparse)  # next round
    dense = runner.slim(sparse)                  # channels removed for good

and one-step (EagleEye)::

    runner = OneStepPruningRunner(model, example_inputs, target=...)
    runner.search(removal_ratio=0.5, num_subnet=50, calib_batches=batches, eval_fn=eval_fn)
    dense = runner.prune()                       # best subnet, then fine-tune once

Channel counts are rounded up to the target's conv output-channel parallelism
(``channel_divisible``), because on a DPU 40 channels cost what 48 do.
"""

from .groups import ChannelGroup, kept_channels
from .runners import IterativePruningRunner, OneStepPruningRunner, SearchResult
from .sensitivity import Sensitivity

__all__ = [
    "ChannelGroup", "IterativePruningRunner", "OneStepPruningRunner", "SearchResult", "Sensitivity",
    "kept_channels", "get_pruning_runner",
]


def get_pruning_runner(model, example_inputs, method: str = "iterative", **kwargs):
    """Vitis AI-style factory: ``method`` is ``'iterative'`` or ``'one_step'``."""
    from ..errors import NpuflowError

    runners = {"iterative": IterativePruningRunner, "one_step": OneStepPruningRunner}
    if method not in runners:
        raise NpuflowError("NPF_PRUNE_BAD_SETTING", name="method", value=method, reason="use 'iterative' or 'one_step'")
    return runners[method](model, example_inputs, **kwargs)
