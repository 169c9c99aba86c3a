"""Every limit of every target family, on both sides of each boundary, through ``npuflow.check``.

The cases come from ``tests/limit_cases.py``: parameter ranges and sets generate their own
boundary values; each formula has hand-written passing and failing parameters.  The meta-test
fails when a data file states a limit that no case exercises (a rule never tested is a bug
waiting: one public checker loops over the wrong list when checking strides).
"""

from __future__ import annotations

from functools import lru_cache

import pytest

import npuflow
from tests import limit_cases as L


@lru_cache(maxsize=None)
def _checked(file: str):
    cases = L.cases_for(file)
    report = npuflow.check(L.build_model(cases), L.FILE_TARGETS.get(file, file.removesuffix(".yaml")))
    return cases, report


def _rewritten(report) -> set[str]:
    """The case nodes a target rewrite changed: ``check`` notes it on the node, or on the parts replacing it."""
    return {n.name.split("/")[0] + "/node" for n in report.nodes
            if any(m.startswith("target rewrite") for m in n.messages)}


def _matching(reasons: list[str], case: L.Case) -> list[str]:
    kind, _, what = case.rule.partition(":")
    if kind == "expr":
        prefix = f"{case.label}: {what} is false" if case.label else f"{what} is false"
        return [r for r in reasons if r.startswith(prefix)]
    stem = what.rsplit("_", 1)[0]
    if stem in ("kernel", "stride", "dilation") and what.endswith(("_w", "_h")):
        return [r for r in reasons if r.startswith(f"{stem} ")]
    return [r for r in reasons if r.startswith(f"{what} ")]


def test_every_limit_in_every_target_file_has_cases():
    files = L.limit_files()
    assert {"_dpuczdx8g.yaml", "_dpucahx8l.yaml", "_dpucvdx8g.yaml", "_dpucahx8h.yaml", "_dpucadf8h.yaml",
            "_dpucvdx8h.yaml", "_dpucv2dx8g.yaml", "bernoulli2.yaml"} <= set(files)
    for file in files:
        cases = L.cases_for(file)  # raises for a formula without a case or an op without a builder
        covered = {(c.op, c.rule, c.ok) for c in cases}
        for op, rule in L.raw_limits(file).items():
            rules = [f"param:{p}" for p in rule.get("params") or {}]
            rules += [f"expr:{c['expr']}" for c in rule.get("constraints") or []]
            for r in rules:
                assert (op, r, True) in covered and (op, r, False) in covered, (file, op, r)


@pytest.mark.parametrize("file", sorted(L.FILE_TARGETS))
def test_limits_on_both_sides_of_each_boundary(file):
    cases, report = _checked(file)
    problems = []
    rewritten = _rewritten(report)
    names = {n.name for n in report.nodes}
    for i, case in enumerate(cases):
        name = f"case{i}/node"
        # check judges what a target rewrite made of a node (a Split's parts, a GAP's split, ...), as compile
        # lowers it: a failing case it turned into ops the target runs is placed by their rules, tested with it
        avoided = not case.ok and name in rewritten
        if avoided and name not in names:
            continue
        node = report.node(name)
        hits = _matching(node.reasons, case)
        if case.ok and hits:
            problems.append(f"{case.name} {case.rule}: should pass, got {hits}")
        if not case.ok and not avoided and (not hits or node.device != "CPU"):
            problems.append(f"{case.name} {case.rule}: should fail, got {node.device} {node.reasons} "
                            f"(params {node.params})")
    assert not problems, "\n".join(problems[:40])


def test_a_failing_case_names_value_and_range():
    cases, report = _checked("_dpuczdx8g.yaml")
    texts = {r for n in report.nodes for r in n.reasons}
    assert {"kernel 1x17 outside [1,16]x[1,16]", "kernel 17x1 outside [1,16]x[1,16]"} <= texts  # H x W
    assert any(t.startswith("In Size: kernel_w * kernel_h * ceil(input_channel / channel_parallel) <= bank_depth "
                            "is false (3*3*ceil(3648/16)=2052 > 2048)") for t in texts), sorted(texts)[:20]
