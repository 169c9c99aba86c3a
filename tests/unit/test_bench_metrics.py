"""The accuracy benchmark's box matching (``benchmarks.datasets.box_match``): PP-OCRv4 det rows count
an FP32 box as kept when a quantized box overlaps it at polygon IoU >= 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.datasets import box_match


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_identical_and_shifted_boxes_match_at_half_iou() -> None:
    ref = np.stack([_rect(0, 0, 100, 20), _rect(0, 40, 100, 60)])
    # first box shifted by 30 % of its width: IoU 70/130 = 0.54 -> kept; second by 40 %: 60/140 = 0.43 -> lost
    cand = np.stack([_rect(30, 0, 130, 20), _rect(40, 40, 140, 60)])
    assert box_match(ref, ref) == (2, 2)
    assert box_match(ref, cand) == (1, 2)
    assert box_match(ref, cand, min_iou=0.4) == (2, 2)


def test_rotated_boxes_use_polygon_iou_not_their_hulls() -> None:
    # a thin line rotated by 45 degrees against the same line unrotated: their axis-aligned hulls
    # overlap a lot, the polygons hardly at all
    line = _rect(-50, -5, 50, 5)
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rotated = line @ np.array([[c, s], [-s, c]])
    assert box_match(line[None], rotated[None]) == (0, 1)


def test_one_candidate_cannot_match_two_references() -> None:
    # two adjacent words merged into one box: it matches the larger word only
    ref = np.stack([_rect(0, 0, 60, 20), _rect(64, 0, 100, 20)])
    merged = _rect(0, 0, 100, 20)[None]
    assert box_match(ref, merged) == (1, 2)


def test_no_boxes() -> None:
    empty = np.zeros((0, 4, 2))
    assert box_match(empty, empty) == (0, 0)
    assert box_match(_rect(0, 0, 10, 10)[None], empty) == (0, 1)


def test_accuracy_bench_method_list() -> None:
    # ``--methods ''`` (cheap rows only) used to become ('',) and fail with a KeyError after the
    # cheap rows had run; an unknown name must fail before any model is quantized
    from benchmarks.bench_accuracy import method_list

    assert method_list("") == ()
    assert method_list("adaround, adaquant_qdrop") == ("adaround", "adaquant_qdrop")
    try:
        method_list("adaround,adarond")
    except ValueError as exc:
        assert "adarond" in str(exc)
    else:
        raise AssertionError("an unknown fast-finetune method was accepted")


def test_accuracy_bench_post_activation_row() -> None:
    """``adaround_post`` is AdaRound (a method npuflow knows) with ``post_activation`` on."""
    from benchmarks.bench_accuracy import finetune_configs

    (label, cfg), = finetune_configs({}, 500, ["adaround_post"])
    assert cfg["fast_finetune"] == {"method": "adaround", "iters": 500, "post_activation": True}
    assert "post-activation" in label


def test_accuracy_bench_learned_threshold_row_with_a_seed() -> None:
    """``adaquant_tqt`` is AdaQuant with ``learn_threshold`` (the best all-DPU rec PTQ); ``--seed``
    reaches fast finetune's config and the row's label."""
    from benchmarks.bench_accuracy import finetune_configs

    (label, cfg), = finetune_configs({}, 500, ["adaquant_tqt"], seed=2)
    assert cfg["fast_finetune"] == {"method": "adaquant", "iters": 500, "learn_threshold": True, "seed": 2}
    assert label.endswith("seed 2)")


def test_weights_only_reference_rounds_each_output_channel_to_its_own_int8_grid() -> None:
    """The reference row rounds Conv weights per output channel (axis 0) and MatMul weights per
    column (axis 1) to 255 symmetric levels, leaves biases and activations alone."""
    import onnx
    from onnx import helper, numpy_helper

    from benchmarks.accuracy_peers import weights_only

    rng = np.random.default_rng(0)
    conv_w = (rng.normal(size=(4, 3, 3, 3)) * np.array([1e-3, 1.0, 10.0, 0.1])[:, None, None, None]).astype(np.float32)
    mm_w = (rng.normal(size=(4, 6)) * np.array([1e-2, 1, 3, 5, 7, 100])).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("GlobalAveragePool", ["c"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("MatMul", ["f", "mw"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(conv_w, "cw"), numpy_helper.from_array(bias, "cb"), numpy_helper.from_array(mm_w, "mw")])
    model = helper.make_model(graph)
    out = {t.name: numpy_helper.to_array(t) for t in weights_only(model).graph.initializer}
    np.testing.assert_array_equal(out["cb"], bias)
    for name, w, axis in (("cw", conv_w, 0), ("mw", mm_w, 1)):
        q = out[name]
        for c in range(w.shape[axis]):
            wc, qc = np.take(w, c, axis), np.take(q, c, axis)
            step = np.abs(wc).max() / 127
            codes = qc / step
            np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)  # on the channel's own grid
            assert np.abs(qc - wc).max() <= step / 2 * (1 + 1e-5)           # nearest level
            assert np.abs(codes).max() == pytest.approx(127, abs=1e-3)      # the largest weight is +-127
    # the input model is left as it was
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), conv_w)


def test_accuracy_bench_without_forward_fold_keeps_the_affine_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--no-forward-fold`` (the fold's A/B): the float passes for an accelerator target keep a
    scale/shift after an activation that they fold into the next convolution by default."""
    import onnx
    from onnx import helper, numpy_helper

    import npuflow.passes.optimize as optimize
    from benchmarks.bench_accuracy import without_forward_fold
    from npuflow.targets import load_target

    monkeypatch.setattr(optimize, "accelerator_forward_folds", optimize.accelerator_forward_folds)  # restored after
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in
             (("w1", (4, 3, 3, 3)), ("b1", (4,)), ("s", (1, 4, 1, 1)), ("t", (1, 4, 1, 1)), ("w2", (5, 4, 1, 1)),
              ("b2", (5,)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Mul", ["r", "s"], ["m"]),
         helper.make_node("Add", ["m", "t"], ["a"]),
         helper.make_node("Conv", ["a", "w2", "b2"], ["y"])],
        "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    target = load_target("DPUCZDX8G_ISA1_B4096")

    def ops() -> list[str]:
        return [n.op_type for n in optimize.optimize_float(model, target).graph.node]

    assert "Mul" not in ops() and "Add" not in ops()  # folded by default
    without_forward_fold()
    assert ops().count("Mul") == 1 and ops().count("Add") == 1


def test_det_bench_cos_text_leaves_out_the_near_empty_inputs() -> None:
    """PP-OCRv4 det's ``cos_text``: a map that is wrong only on an input where FP32 finds fewer than
    ``TEXT_BOXES`` boxes lowers ``cos`` but not ``cos_text`` (the first 8 evaluation inputs: the 8th,
    a photo crop, has 2 boxes)."""
    from benchmarks import datasets as D
    from benchmarks.bench_accuracy import TEXT_BOXES, det_bench

    bench = det_bench(1, 8)
    xs = D.ocr_pages("eval", 8)
    reference = D.ort_session(bench.path)
    counts = [len(D.db_boxes(reference.run(None, x)[0])) for x in xs]
    near_empty = [i for i, c in enumerate(counts) if c < TEXT_BOXES]
    assert near_empty == [7]

    class WrongOnNearEmpty:
        def run(self, names, feed):
            out = reference.run(names, feed)
            if any(np.array_equal(feed["x"], xs[i]["x"]) for i in near_empty):
                out = [np.flip(out[0], axis=-1).copy()]
            return out

    scores = bench.evaluate(WrongOnNearEmpty())
    assert scores["cos_text"] == pytest.approx(1.0, abs=1e-6)
    assert scores["cos"] < 0.999


def test_accuracy_bench_finetune_samples_reach_every_row(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--finetune-samples`` is the quantize config's ``finetune_samples`` in each row (fast finetune read the
    first 64 samples whatever ``--calib`` gave), and ``--cheap none`` starts fast finetune from the defaults,
    labelled so (the row said "from plain" while running the defaults).  MNIST CNN on the DPU, real digits."""
    from benchmarks.bench_accuracy import run_model
    from benchmarks.bench_quant import Bench
    from tests import fixture_models
    from tests.unit.test_block_accept import _digits

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    bench = Bench("digits", fixture_models.mnist_cnn(), {"input": [1, 1, 28, 28]}, _digits(80),
                  lambda session: {"cos": 1.0}, "cos", "stub")
    rows = run_model(bench, 20, 0.99, peers=False, methods=("adaround",), mixed=False, cheap=("none",),
                     finetune_samples=72)
    (name, row), = [(k, r) for k, r in rows.items() if k != "FP32"]
    assert name.endswith("(from npuflow defaults)")
    assert row["config"]["finetune_samples"] == 72 and row["algorithms"]["fast_finetune"]["samples"] == 72


def test_restarts_bench_reads_every_calibration_sample(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``bench_restarts.py --calib N`` fast-finetunes on all N samples (it read at most 64 whatever the
    calibration count), and refuses rec calibration lines that would reach its held-out lines.  MNIST CNN on
    the DPU, real digits."""
    from benchmarks.bench_quant import Bench
    from benchmarks.bench_restarts import HELD, TRAIN, quantize_row, setup
    from npuflow.model import load as npuflow_load
    from tests import fixture_models
    from tests.unit.test_block_accept import _digits

    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="held-out"):
        setup("rec", TRAIN - HELD + 1)
    bench = Bench("digits", fixture_models.mnist_cnn(), {"input": [1, 1, 28, 28]}, _digits(80),
                  lambda session: {"cos": 1.0}, "cos", "stub")
    row, q = quantize_row(npuflow_load(bench.path, bench.input_shapes), bench, {"method": "adaround", "iters": 20, "seed": 0}, list(bench.calib), "digits")
    assert row["calib"] == 80 and row["algorithms"]["samples"] == 80
    assert row["eval"] == {"cos": 1.0} and q.model is not None
