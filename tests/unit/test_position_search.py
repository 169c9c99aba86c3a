"""Power-of-two activation positions refined by the model's output error (``position_search``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import npuflow
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms.apply import relative_error
from npuflow.quant.algorithms.capture import run_outputs
from npuflow.quant.config import PositionSearch
from npuflow.quant.export import export_qdq
from npuflow.quant.position_search import Scorer, search

from .quant_nets import _init, conv_net, model_from

TARGET = "DPUCZDX8G_ISA1_B4096"


def _outlier_net() -> onnx.ModelProto:
    """x -> conv(3x3)+relu -> conv(1x1) -> y, where channel 3 of the relu output is about 50 and no
    output reads it (zero weights): min/max gives ``r1`` a step of 0.5 (fix position 1), four codes
    for the channels that matter; a finer position clips only the unread channel."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    b1, w2 = rng.normal(0, 0.2, 4), rng.normal(0, 0.5, (2, 4, 1, 1))
    b1[3], w2[:, 3] = 50.0, 0.0
    inits = [_init("w1", rng.normal(0, 0.5, (4, 3, 3, 3))), _init("b1", b1), _init("w2", w2),
             _init("b2", rng.normal(0, 0.2, 2))]
    return model_from(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])])


def _outlier_data() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.uniform(-1, 1, (1, 3, 6, 6)).astype(np.float32) for _ in range(8)]


def _error(model: onnx.ModelProto, float_model: onnx.ModelProto, xs: list[np.ndarray]) -> float:
    feeds = [{"x": x} for x in xs]
    return relative_error(run_outputs(model, feeds), run_outputs(float_model, feeds))


def test_search_moves_a_wrong_position_and_lowers_the_output_error():
    xs = _outlier_data()
    plain = npuflow.quantize(_outlier_net(), xs, target=TARGET, config={"include_bias_corr": False})
    start = int(plain.quant_params["r1"].fix_pos)
    assert start == 1  # the unread channel's position
    q = npuflow.quantize(_outlier_net(), xs, target=TARGET,
                         config={"include_bias_corr": False, "position_search": {}})
    record = q.info["algorithms"]["position_search"]
    assert record["moved"]["r1"] >= 3 and int(q.quant_params["r1"].fix_pos) == start + record["moved"]["r1"]
    assert record["error_after"] < record["error_before"] / 10
    # the recorded errors are those of the exported models, measured without the search's probe
    np.testing.assert_allclose(_error(plain.model, plain.float_model, xs), record["error_before"], rtol=1e-3)
    np.testing.assert_allclose(_error(q.model, q.float_model, xs), record["error_after"], rtol=1e-3)


def _scorer(model, xs, target=TARGET):
    """The search's scorer on ``model`` as quantize would build it (plain, every point)."""
    from npuflow.model import infer_static_shapes
    from npuflow.quant import calibrate, legalize, plan as qplan
    from npuflow.quant.assign import assign
    from npuflow.quant.config import QuantConfig
    from npuflow.quant.position_search import searched_groups
    from npuflow.targets import load_target

    tgt = load_target(target)
    leg = infer_static_shapes(legalize.legalize(model, tgt))
    plan = qplan.build_plan(leg, tgt, QuantConfig())
    feeds = [{"x": x} for x in xs]
    stats, _ = calibrate.collect(leg, list(plan.points), set(), iter(feeds), keep_outputs=len(feeds))
    groups = searched_groups(plan, assign(leg, plan, stats))
    scorer = Scorer(leg, plan, stats, groups, feeds, stats.outputs, target_name=tgt.name,
                    scale_type=tgt.numerics.scale_type)
    return scorer, leg, plan, tgt, feeds


def test_a_candidate_moves_its_whole_scale_group_and_scores_as_the_exported_model():
    """conv_net's concat and pow2 add join points in groups; moving a group moves every member (the
    model stays compilable), and the probe session's error is the exported model's."""
    xs = [np.random.default_rng(i).standard_t(3, (1, 3, 8, 8)).astype(np.float32) for i in range(4)]
    scorer, leg, plan, tgt, feeds = _scorer(conv_net(), xs)
    shared = {g: ms for g, ms in scorer.groups.items() if len(ms) > 1}
    assert shared, "conv_net has scale groups"
    base = scorer.assignment({})
    for root, members in shared.items():
        start = int(base.params[members[0]].fix_pos)
        asg = scorer.assignment({root: start + 1})
        assert {int(asg.params[m].fix_pos) for m in members} == {start + 1}
        others = [p for g, ms in scorer.groups.items() if g != root for p in ms]
        assert all(np.array_equal(asg.params[p].scale, base.params[p].scale) for p in others)
        exported = export_qdq(leg, plan, asg, target_name=tgt.name, scale_type=tgt.numerics.scale_type)
        expected = relative_error(run_outputs(exported, feeds), scorer.reference)
        np.testing.assert_allclose(scorer.error({root: start + 1}), expected, rtol=1e-4)


def test_quantized_model_keeps_groups_equal_and_compiles_bit_exact():
    from tests.compile_check import compare_with_ort

    xs = [np.random.default_rng(i).standard_t(2, (1, 3, 8, 8)).astype(np.float32) for i in range(8)]
    q = npuflow.quantize(conv_net(), xs, target=TARGET,
                         config={"include_bias_corr": False, "position_search": {"min_gain": 0.0}})
    assert q.info["algorithms"]["position_search"]["moved"]
    groups: dict[int, set] = {}
    for t in q.quant_params.values():
        if t.group is not None and t.kind in ("input", "activation"):
            groups.setdefault(t.group, set()).add(float(t.scale))
    assert groups and all(len(scales) == 1 for scales in groups.values())
    diffs = compare_with_ort(q.model, {"x": xs[0]}, TARGET)
    assert max(diffs.values()) == 0, diffs


class _Bowl:
    """A scorer whose error is the squared distance of the positions to ``best`` (counts calls)."""

    def __init__(self, best: dict[str, int], clock=None) -> None:
        self.best, self.calls, self.clock = best, 0, clock

    def error(self, positions: dict[str, int]) -> float:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += 1.0
        return 1.0 + sum((positions[g] - b) ** 2 for g, b in self.best.items())


class _Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_coordinate_descent_walks_each_group_to_its_best_position():
    bowl = _Bowl({"a": 3, "b": -2, "c": 0})
    result = search(bowl, {"a": 0, "b": 0, "c": 0}, PositionSearch(sweeps=3, min_gain=0.0))
    assert result.positions == {"a": 3, "b": -2, "c": 0} and result.error_after == 1.0
    assert result.moved == {"a": 3, "b": -2} and result.sweeps == 2  # the second sweep finds nothing
    assert result.candidates == bowl.calls


def test_a_move_must_gain_min_gain_to_be_kept():
    bowl = _Bowl({"a": 1})  # one step: 2.0 -> 1.0, a 50 % drop
    assert search(bowl, {"a": 0}, PositionSearch(min_gain=0.6)).moved == {}
    assert search(_Bowl({"a": 1}), {"a": 0}, PositionSearch(min_gain=0.4)).moved == {"a": 1}


def test_the_budget_stops_the_search_with_the_best_positions_so_far():
    clock = _Clock()
    bowl = _Bowl({g: 5 for g in "abcd"}, clock)  # every candidate takes 1 s
    result = search(bowl, dict.fromkeys("abcd", 0), PositionSearch(budget_s=7.5), clock=clock)
    assert bowl.calls == 8 and result.seconds == 8.0  # the start and 7 candidates
    assert result.positions == {"a": 5, "b": 1, "c": 0, "d": 0}  # the best found, not the last tried
    assert result.error_after == bowl.error(result.positions)


def test_float_scale_targets_do_not_search():
    q = npuflow.quantize(_outlier_net(), _outlier_data(), target="cpu-int8", config={"position_search": {}})
    assert "position_search" not in q.info.get("algorithms", {})


def test_bad_settings_are_a_coded_error():
    with pytest.raises(NpuflowError) as e:
        npuflow.quantize(_outlier_net(), _outlier_data(), target=TARGET, config={"position_search": {"sweeps": 0}})
    assert e.value.code == "NPF_QUANT_BAD_CONFIG"


def test_precision_overrides_keep_the_searched_positions():
    xs = _outlier_data()
    q = npuflow.quantize(_outlier_net(), xs, target=TARGET, config={"include_bias_corr": False, "position_search": {}})
    position = int(q.quant_params["r1"].fix_pos)
    assert q.info["algorithms"]["position_search"]["moved"]["r1"]
    overridden = q.with_precisions({"conv2": "int16"})
    scale = next(t for t in overridden.model.graph.initializer if t.name == "r1_scale")
    assert float(onnx.numpy_helper.to_array(scale)) == 2.0 ** -position


def test_a_point_raised_to_int16_drops_its_8_bit_position():
    xs = _outlier_data()
    q = npuflow.quantize(_outlier_net(), xs, target=TARGET, config={"include_bias_corr": False, "position_search": {}})
    searched = int(q.quant_params["r1"].fix_pos)
    raised = q.with_precisions({"conv1": "int16"})  # conv1 + relu1 write r1
    scale = next(t for t in raised.model.graph.initializer if t.name == "r1_scale")
    assert float(onnx.numpy_helper.to_array(scale)) < 2.0 ** -(searched + 4)  # a 16-bit step, not the 8-bit one
