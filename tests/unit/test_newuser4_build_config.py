"""A misspelt group of a build config is named with the nearest valid one (newuser round 4).
Before, ``calibration_parameter:`` was reported as "Missing keys: 'calibration_parameters'",
which sends the user looking for a group that is there, misspelt."""

from __future__ import annotations

import pytest

from npuflow.build.config import parse_config
from npuflow.errors import NpuflowError

GROUPS = {"model_parameters": {}, "input_parameters": {}, "calibration_parameters": {}, "compiler_parameters": {}}


def test_misspelt_group_is_named_with_the_valid_one():
    data = {**GROUPS, "calibration_parameter": GROUPS["calibration_parameters"]}
    del data["calibration_parameters"]
    with pytest.raises(NpuflowError) as err:
        parse_config(data)
    assert err.value.code == "NPF_BUILD_UNKNOWN_KEYS"
    assert "'calibration_parameter'" in str(err.value) and "Did you mean 'calibration_parameters'" in err.value.hint


def test_a_missing_group_without_a_near_spelling_is_still_missing():
    data = {k: v for k, v in GROUPS.items() if k != "compiler_parameters"}
    data["unrelated_section"] = {}
    with pytest.raises(NpuflowError) as err:
        parse_config(data)
    assert err.value.code == "NPF_BUILD_MISSING_KEYS" and "'compiler_parameters'" in str(err.value)
