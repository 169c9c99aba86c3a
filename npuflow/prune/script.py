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
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import NpuflowError

REQUIRED = ("get_model", "get_example_inputs")
#: what pickle raises for an object it cannot save by reference: AttributeError for a local class
#: ("Can't pickle local object 'f.<locals>.Net'"), PicklingError for a class its module does not
#: hold (one made by exec), TypeError for objects without pickle support (a generator attribute)
_PICKLE_ERRORS = (pickle.PicklingError, AttributeError, TypeError)


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


class _Discard:
    """A file-like sink that drops what torch.save writes: the check needs only whether it can."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        """Nothing to flush."""


def check_saveable(model: Any, path: str | Path) -> None:
    """Fail before pruning if ``torch.save(model)`` would fail after it.

    ``npuflow prune run`` saves the slim model with ``torch.save`` (the whole module, as
    torch-pruning recommends), which pickles each module's class by reference; a class defined
    inside a function, or by ``exec`` in a namespace no module holds, cannot be.  Pruning keeps
    the classes, so the unpruned model fails exactly where the slim one would, minutes or hours
    earlier; the message names the class instead of ending the run in pickle's traceback.
    """
    import torch

    try:
        torch.save(model, _Discard())
    except _PICKLE_ERRORS as exc:
        culprit = next((type(m) for m in model.modules() if not _class_pickles(type(m))), type(model))
        raise NpuflowError(
            "NPF_PRUNE_BAD_SCRIPT", path=str(path),
            reason=(f"get_model() returns a model torch.save cannot save ({exc}); class "
                    f"{culprit.__module__}.{culprit.__qualname__} must be defined at the top level of the script "
                    "or of an importable module (not inside a function or by exec); checked before pruning"),
        ) from None


def _class_pickles(cls: type) -> bool:
    """Whether pickle can save ``cls`` by reference (module + qualified name)."""
    try:
        pickle.dumps(cls)
    except _PICKLE_ERRORS:
        return False
    return True
