"""Data flows one way (issue 17): no stage imports a later one, and the shared foundations import
no stage.  Every ``import`` counts, the ones inside functions too (a lazy import is still a
dependency), so the order in ``docs/architecture.md`` holds on the tree, not only at import time.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "npuflow"

#: Modules every stage may import; they import only each other.
FOUNDATIONS = frozenset({
    "errors", "numerics", "qdq", "model", "model_checks", "input_shapes", "value_info", "shape_probe", "outputs",
    "numerics_softmax", "safe_yaml", "targets", "operators", "activation_patterns", "graph",
    "node_kinds", "placement", "custom_ops", "ort_session", "ort_kernels", "ort_verdicts", "plugins", "scaleout", "fake_quant",
})
#: The stages, in the order data flows through them; each may import the ones before it.
STAGES = ("passes", "check", "quant", "compiler", "runtime", "perf", "profile", "analyze", "prune", "torch",
          "ort_export", "ort", "build", "cli", "__main__", "__init__")


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return "__init__" if rel == ("__init__.py",) else rel[0].removesuffix(".py")


def _imported_units(path: Path) -> set[str]:
    """Top-level npuflow modules/packages ``path`` imports (relative or absolute)."""
    package = list(path.relative_to(PACKAGE).parts[:-1])
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module and (node.module == "npuflow" or node.module.startswith("npuflow.")):
                parts = node.module.split(".")[1:]
            else:
                continue
            out.update([parts[0]] if parts else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("npuflow."))
    return out - {"__version__"}


def _rank(unit: str) -> int:
    return -1 if unit in FOUNDATIONS else STAGES.index(unit)


def test_every_module_is_a_known_stage_or_foundation():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")}
    assert units <= FOUNDATIONS | set(STAGES), sorted(units - FOUNDATIONS - set(STAGES))


def test_no_stage_imports_a_later_one():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        for imported in _imported_units(path) - {unit}:
            if imported not in FOUNDATIONS and imported not in STAGES:
                continue  # a name imported from the package root (``from .. import placement``)
            if _rank(imported) > _rank(unit) or (unit in FOUNDATIONS and imported not in FOUNDATIONS):
                wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not wrong, wrong
