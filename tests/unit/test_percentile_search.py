"""The model-level percentile search of float-scale activations (``percentile_candidates``)."""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from npuflow.quant.algorithms.apply import relative_error
from npuflow.quant.algorithms.capture import run_outputs

from .quant_nets import conv_net, samples


def _data():
    # heavy-tailed inputs: the clipping percentile matters
    rng = np.random.default_rng(3)
    return [(rng.standard_t(2, size=(1, 3, 8, 8))).astype(np.float32) for _ in range(8)]


def test_search_picks_the_candidate_with_the_lowest_calibration_output_error():
    data = _data()
    q = npuflow.quantize(conv_net(), data, target="cpu-int8", config={"percentile_candidates": [99.0, 99.999]})
    record = q.info["algorithms"]["percentile_search"]
    errors = {float(p): e for p, e in record["output_errors"].items()}
    assert set(errors) == {99.0, 99.999} and record["checked_on"] == 8
    assert record["chosen"] == min(errors, key=errors.get)
    # each recorded error is what that single percentile gives without the search
    feeds = [{"x": x} for x in data]
    reference = run_outputs(q.float_model, feeds)
    for p, e in errors.items():
        fixed = npuflow.quantize(conv_net(), data, target="cpu-int8",
                                 config={"activation": {"percentile": p}, "include_bias_corr": False})
        assert "percentile_search" not in fixed.info.get("algorithms", {})
        np.testing.assert_allclose(relative_error(run_outputs(fixed.model, feeds), reference), e, rtol=1e-3)
    chosen = q.quant_params
    fixed = npuflow.quantize(conv_net(), data, target="cpu-int8",
                             config={"activation": {"percentile": record["chosen"]}, "include_bias_corr": False})
    act = [n for n, t in chosen.items() if t.kind == "activation"]
    assert act and all(np.allclose(chosen[n].scale, fixed.quant_params[n].scale) for n in act)


@pytest.mark.parametrize("config", [{"percentile_candidates": []}, {"percentile_candidates": [99.9]},
                                    {"activation": {"percentile": 99.9}},
                                    {"layers": [{"name_regex": ".*", "activation": {"percentile": 99.9}}]},
                                    {"activation": {"method": "minmax"}}])
def test_no_search_when_off_or_a_percentile_is_set(config):
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=4), target="cpu-int8", config=config)
    assert "percentile_search" not in q.info.get("algorithms", {})


def test_power_of_two_targets_do_not_search():
    q = npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=4), target="DPUCZDX8G_ISA1_B4096")
    assert "percentile_search" not in q.info.get("algorithms", {})


def test_candidates_out_of_range_are_a_coded_error():
    with pytest.raises(NpuflowError) as e:
        npuflow.quantize(conv_net(), samples([1, 3, 8, 8], n=2), target="cpu-int8",
                         config={"percentile_candidates": [99.9, 101]})
    assert e.value.code == "NPF_QUANT_BAD_CONFIG" and "101" in str(e.value)


def test_one_shot_iterator_is_read_once_and_gives_the_same_model():
    """Later steps (the search, bias correction) reuse the samples calibration kept."""
    data = _data()
    once = npuflow.quantize(conv_net(), iter(data), target="cpu-int8")
    listed = npuflow.quantize(conv_net(), data, target="cpu-int8")
    assert once.info["algorithms"] == listed.info["algorithms"] and "percentile_search" in once.info["algorithms"]
    for n, t in listed.quant_params.items():
        np.testing.assert_array_equal(once.quant_params[n].scale, t.scale)


def test_progress_counts_the_candidates():
    """A listener (the CLI's bar) hears each candidate tried, not only the stage's name."""
    seen: list[tuple[str, int, int | None]] = []
    npuflow.quantize(conv_net(), _data(), target="cpu-int8", config={"percentile_candidates": [99.0, 99.9, 99.999]},
                     progress=lambda stage, done, total: seen.append((stage, done, total)))
    search = [(done, total) for stage, done, total in seen if stage == "percentile search"]
    assert search == [(0, None), (1, 3), (2, 3), (3, 3)]


def test_candidates_scored_in_worker_processes_equal_the_serial_search():
    """With calib_workers each candidate runs in its own process; the errors are the serial run's."""
    data = _data()
    config = {"percentile_candidates": [99.0, 99.9, 99.999]}
    serial = npuflow.quantize(conv_net(), data, target="cpu-int8", config=config)
    pooled = npuflow.quantize(conv_net(), data, target="cpu-int8", config={**config, "calib_workers": 2})
    assert pooled.info["algorithms"]["percentile_search"] == serial.info["algorithms"]["percentile_search"]
    for n, t in serial.quant_params.items():
        np.testing.assert_array_equal(pooled.quant_params[n].scale, t.scale)
