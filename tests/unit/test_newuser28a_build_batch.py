"""Round 28a of new-user flows: ``input_batch: 1`` in a build config for a model of two inputs.

A stereo network (left, right) and an optical-flow network (frame 1, frame 2) configured from
``npuflow build --template``, which writes ``input_batch: 1``, failed with ``NPF_BUILD_COUNT_MISMATCH``
("input_batch has 1 value(s) but input_name names 2 input(s)"): hb_mapper's ``input_batch`` is one
number for the model.  One value now applies to every input, as ``input_space_and_range`` does;
one value per input is still read, and any other count still fails.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from npuflow.build import TEMPLATE, load_config, resolve_inputs
from npuflow.errors import NpuflowError

MODEL_INPUTS = {"left": [1, 3, 8, 8], "right": [1, 3, 8, 8]}


def _two_input_config(batch) -> dict:
    """The template, edited as a user of a two-input featuremap model edits it."""
    conf = copy.deepcopy(yaml.safe_load(TEMPLATE))
    conf["input_parameters"].update({
        "input_name": "left; right", "input_type_train": "featuremap; featuremap",
        "input_layout_train": "NCHW; NCHW", "input_type_rt": "featuremap; featuremap",
        "input_layout_rt": "NCHW; NCHW", "input_shape": "1x3x8x8; 1x3x8x8", "input_batch": batch,
        "norm_type": "no_preprocess; no_preprocess", "mean_value": "None; None", "scale_value": "None; None"})
    conf["calibration_parameters"]["cal_data_dir"] = "./calib_left; ./calib_right"
    return conf


@pytest.mark.parametrize("batch", [1, "1", "1; 1"])
def test_one_batch_value_applies_to_both_inputs(batch):
    specs = resolve_inputs(load_config(_two_input_config(batch)), MODEL_INPUTS)
    assert [(s.name, s.batch) for s in specs] == [("left", 1), ("right", 1)]


def test_a_wrong_count_still_fails_naming_the_inputs():
    with pytest.raises(NpuflowError) as err:
        resolve_inputs(load_config(_two_input_config("1; 1; 1")), MODEL_INPUTS)
    assert err.value.code == "NPF_BUILD_COUNT_MISMATCH" and "left, right" in str(err.value)
