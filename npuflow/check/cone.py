"""The float input cones of an op that needs its input's relative precision (``Log``) or its
absolute precision over many periods (``Sin``, ``Cos``) and of a peak test (``Equal(MaxPool(t), t)``).

An 8-bit linear grid keeps no value below half a step of its calibrated maximum, so a power
spectrum that spans 80 dB reads 0 in every bin more than ~48 dB down, and ``Log`` turns those zeros
into -inf or a floor.  A sine of a phase many periods wide is noise on that grid (a NeRF positional
encoding ``sin(p * 2**k * pi)``: steps of 0.8 rad).  Keeping ``Log`` (or ``Sin``) alone in float
does not help: the damage is done by the quantize steps of the tensors that feed it.  The cone is
what must stay float with it: the ops that carry the wide-range quantity to it
(:data:`npuflow.operators.RANGE_CARRYING_OPS`), walked back from its input while *every* reader of
a producer is already in the cone, so a tensor that other work also reads (a shared feature map) is
never pulled into float.

One function for every stage: the checker places the cone on the CPU (:mod:`.place`) and the
quantizer keeps it float on CPU targets (:func:`npuflow.quant.plan.build_plan`), so ``check``,
``quantize`` and ``compile`` agree.  openWakeWord's mel front end: the cone of ``Log_17`` is the
STFT convolutions, their layout ops, the squares, ``Add_14``, the mel ``MatMul_15`` and the
``Clip_16`` floor.

A peak test compares a tensor with the largest value of each window of it: on a grid, equal codes
tie and a monotone op after the grid keeps the ties, so the test keeps several peaks where float
keeps one.  Its cone is the window op and the chain computing the tensor back to the layer that
computes it (CenterNet's ``MaxPool``, ``Sigmoid`` and heatmap ``Conv``), tensors other work reads
included: float serves them at least as well as the grid.  Vitis AI and RKNN deployments leave
the same peak test to float post-processing on the CPU.
"""

from __future__ import annotations

from ..graph import GraphView
from ..operators import (GRID_OPS, PEAK_TEST_OPS, PERIODIC_OPS, PHASE_CARRYING_OPS, RANGE_CARRYING_OPS,
                         RELATIVE_PRECISION_OPS, STANDARD_DOMAINS)


def float_cones(view: GraphView, folded: frozenset[int] = frozenset()) -> dict[int, int]:
    """Node index -> the op whose float input cone it belongs to: :func:`relative_precision_cones`
    and :func:`peak_test_cones`, the one rule the checker places and the quantizer keeps float by."""
    return {**peak_test_cones(view, folded), **relative_precision_cones(view, folded)}


def peak_test_cones(view: GraphView, folded: frozenset[int] = frozenset()) -> dict[int, int]:
    """Node index -> index of the peak test (``PEAK_TEST_OPS["compare"]`` reading ``t`` and a
    ``PEAK_TEST_OPS["window"]`` op of ``t``) whose cone it belongs to: the window op, then from
    ``t``'s producer back through :data:`~npuflow.operators.PEAK_TEST_OPS` ``["monotone"]`` ops,
    :data:`~npuflow.operators.GRID_OPS` (their outputs lie on their input's grid, and compile
    lowers them on the accelerator when their input is 8-bit: placement-agreement generator seeds
    692 ``Conv -> MaxPool 2x2 -> Relu`` and 1238 ``Conv -> Transpose -> Relu``) and ``folded``
    nodes (a per-channel scale the checker fuses into the layer before it) to the first other op,
    which computes the values compared and is the cone's last member.  The test itself is not a
    member (no target lowers a comparison)."""
    root: dict[int, int] = {}
    for i, node in enumerate(view.nodes):
        if node.domain not in STANDARD_DOMAINS or node.op_type not in PEAK_TEST_OPS["compare"]:
            continue
        found = _window_of_other_input(view, i)
        if found is None:
            continue
        window, t = found
        root.setdefault(window, i)
        p = view.data_producer(t)
        while p is not None and p not in root:
            root[p] = i
            step = view.nodes[p]
            if step.op_type not in PEAK_TEST_OPS["monotone"] | GRID_OPS and p not in folded:
                break
            reads = view.data_inputs(p)
            p = view.data_producer(reads[0]) if len(reads) == 1 else None
    return root


def _window_of_other_input(view: GraphView, i: int) -> tuple[int, str] | None:
    """``(window op, t)`` when node ``i`` reads exactly ``t`` and a window op whose data input is ``t``."""
    reads = [view.data_source(t) for t in view.nodes[i].input[:2]]
    if len(reads) != 2:
        return None
    for k, t in enumerate(reads):
        w = view.producer.get(t)
        if w is None or view.nodes[w].domain not in STANDARD_DOMAINS or \
                view.nodes[w].op_type not in PEAK_TEST_OPS["window"]:
            continue
        other = reads[1 - k]
        if [view.data_source(s) for s in view.data_inputs(w)] == [other]:
            return w, other
    return None


def relative_precision_cones(view: GraphView, folded: frozenset[int] = frozenset()) -> dict[int, int]:
    """Node index -> index of the :data:`~npuflow.operators.RELATIVE_PRECISION_OPS` or
    :data:`~npuflow.operators.PERIODIC_OPS` op whose input cone it belongs to (the op itself is
    not a member).  ``folded``: nodes the float passes
    fold into the layer before them (a per-channel ``Div`` after a ``Conv``, which the checker
    fuses); they carry the range as that layer does, so the cone of the float model is the cone
    the quantizer's checker finds on the optimised one (seed 1569 of
    ``tests/unit/test_placement_agreement.py``: ``Conv -> Conv -> Div(c) -> Mul(x, x) -> Add ->
    Log`` left both Convs on the accelerator in check and in float in quantize and compile).

    Graph order is topological, so one pass from the back sees every reader of a node before the
    node: a node joins when it is range-carrying (phase-carrying,
    :data:`~npuflow.operators.PHASE_CARRYING_OPS`, for a Sin's cone; a ``folded`` scale belongs to
    its layer there), its outputs are no graph outputs, and each of its outputs is read, as data,
    only by members (or the ops themselves) of cones; read by several (``Sin`` and ``Cos`` of one
    phase), it joins the first in graph order."""
    root: dict[int, int] = {}
    for i in range(len(view.nodes) - 1, -1, -1):
        node = view.nodes[i]
        if node.domain not in STANDARD_DOMAINS:
            continue
        if node.op_type in RELATIVE_PRECISION_OPS | PERIODIC_OPS:
            root[i] = i
            continue
        if node.op_type not in RANGE_CARRYING_OPS | PHASE_CARRYING_OPS and i not in folded:
            continue
        owners = _reader_roots(view, i, root)
        if not owners:
            continue
        first = min(owners)
        if view.nodes[first].op_type in PERIODIC_OPS:  # a phase: built by elementwise and layout ops
            joins = node.op_type in PHASE_CARRYING_OPS and i not in folded
        else:
            joins = node.op_type in RANGE_CARRYING_OPS or i in folded
        if joins:
            root[i] = first
    return {i: r for i, r in root.items() if i != r}


def _reader_roots(view: GraphView, i: int, root: dict[int, int]) -> set[int] | None:
    """The cones every data reader of node ``i``'s outputs belongs to; ``None`` when an output is
    a graph output, is unread, or has a reader outside every cone (or reads it as a parameter)."""
    owners: set[int] = set()
    for t in view.nodes[i].output:
        if not t:
            continue
        readers = view.data_consumers(t)
        if not readers or view.reaches_output(t):
            return None
        for c in readers:
            if c not in root or t not in view.data_inputs(c):
                return None
            owners.add(root[c])
    return owners or None


def cone_reason(op_name: str, op_type: str) -> str:
    """Why a cone member runs in float on the CPU (the checker's reason, the docs' wording)."""
    if op_type in PERIODIC_OPS:
        return (f"feeds {op_type} {op_name!r}, which needs its input's absolute precision over many periods: an "
                f"8-bit phase steps 1/255 of its range (0.8 rad at 100 rad), so the ops feeding it stay in float "
                f"on the CPU")
    if op_type in PEAK_TEST_OPS["compare"]:
        return (f"feeds the peak test {op_type} {op_name!r} (a value against the largest of its window): on an "
                f"8-bit grid neighbouring values tie and extra peaks survive, so the values compared stay in float "
                f"on the CPU")
    return (f"feeds {op_type} {op_name!r}, which needs its input's relative precision: an 8-bit input reads values "
            f"below 1/255 of its maximum as 0, so the ops feeding it stay in float on the CPU")
