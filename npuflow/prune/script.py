"""Loading a user's pruning script for ``npuflow prune``.

The CLI cannot know how to build, evaluate or fine-tune a user's model, so (like the Vitis AI
Optimizer's runner scripts) it imports a Python file that defines:

* ``get_model() -> nn.Module`` and ``get_example_inputs()`` (required);
* ``eval_fn(model) -> float`` (optional; default: output similarity to the unpruned model);
* ``calib_batches() -> iterable`` (optional; batches for adaptive BN in one-step search);
* ``finetune(model) -> nn.Module`` (optional; called after each iterative round).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from ..errors import NpuflowError

REQUIRED = ("get_model", "get_example_inputs")


def load_script(path: str | Path) -> ModuleType:
    p = Path(path)
    if not p.is_file():
        raise NpuflowError("NPF_PRUNE_BAD_SCRIPT", path=str(p), reason="file not found")
    spec = importlib.util.spec_from_file_location(f"npuflow_prune_script_{p.stem}", p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it, do not crash with a traceback
        raise NpuflowError("NPF_PRUNE_BAD_SCRIPT", path=str(p), reason=f"importing it failed: {exc!r}") from None
    missing = [name for name in REQUIRED if not callable(getattr(module, name, None))]
    if missing:
        raise NpuflowError("NPF_PRUNE_BAD_SCRIPT", path=str(p), reason=f"missing function(s): {', '.join(missing)}")
    return module
