"""The accuracy benchmark's box matching (``benchmarks.datasets.box_match``): PP-OCRv4 det rows count
an FP32 box as kept when a quantized box overlaps it at polygon IoU >= 0.5."""

from __future__ import annotations

import numpy as np

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
