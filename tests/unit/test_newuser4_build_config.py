"""A misspelt group of a build config is named with the nearest valid one (newuser round 4).
Before, ``calibration_parameter:`` was reported as "Missing keys: 'calibration_parameters'",
which sends the user looking for a group that is there, misspelt."""

from __future__ import annotations

import pytest

from npuflow.build.config import parse_config
from npuflow.errors import NpuflowError
from tests.unit.test_build_config import BASE

GROUPS = {"model_parameters": {}, "input_parameters": {}, "calibration_parameters": {}, "compiler_parameters": {}}


def test_misspelt_group_is_named_with_the_valid_one():
    data = {**GROUPS, "calibration_parameter": GROUPS["calibration_parameters"]}
    del data["calibration_parameters"]
    with pytest.raises(NpuflowError) as err:
        parse_config(data)
    # the empty groups' missing keys come in the same error (session 34: every problem at once)
    assert err.value.code == "NPF_BUILD_CONFIG_PROBLEMS"
    assert "Wrong keys: 'calibration_parameter' (Did you mean 'calibration_parameters'?" in str(err.value)
    assert "Missing keys: 'calibration_parameters'" not in str(err.value)


def test_misspelt_group_alone_is_its_own_code():
    data = {k: BASE[k] for k in BASE if k != "calibration_parameters"}
    data["calibration_parameter"] = BASE["calibration_parameters"]
    with pytest.raises(NpuflowError) as err:
        parse_config(data)
    assert err.value.code == "NPF_BUILD_UNKNOWN_KEYS"
    assert "'calibration_parameter'" in str(err.value) and "Did you mean 'calibration_parameters'" in err.value.hint


def test_a_missing_group_without_a_near_spelling_is_still_missing():
    data = {k: v for k, v in GROUPS.items() if k != "compiler_parameters"}
    data["unrelated_section"] = {}
    with pytest.raises(NpuflowError) as err:
        parse_config(data)
    assert err.value.code == "NPF_BUILD_CONFIG_PROBLEMS"  # with the unknown section and the empty groups' keys
    assert "[NPF_BUILD_MISSING_KEYS] Key 'config' error: Missing keys: 'compiler_parameters'" in str(err.value)
    assert "[NPF_BUILD_UNKNOWN_KEYS] Key 'config' error: Wrong keys: 'unrelated_section'" in str(err.value)
