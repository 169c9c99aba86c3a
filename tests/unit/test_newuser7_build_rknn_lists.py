"""``mean_value``/``scale_value`` as YAML lists, as rknn-toolkit2's ``config(mean_values=[[...]])`` writes them.

New-user round 7a: ``mean_value: [100, 60, 155]`` or ``[[100, 60, 155]]`` was refused
(``NPF_BUILD_BAD_VALUE`` "Input should be a valid string"); the text form ``'100 60 155'`` was needed.
"""
from __future__ import annotations

import copy

import pytest

from npuflow.build import load_config, resolve_inputs
from npuflow.errors import NpuflowError

BASE = {
    "model_parameters": {"onnx_model": "m.onnx", "march": "bernoulli2", "output_model_file_prefix": "m"},
    "input_parameters": {"input_type_train": "rgb", "input_layout_train": "NCHW", "input_type_rt": "rgb",
                         "norm_type": "data_mean_and_scale", "mean_value": "0", "scale_value": "1"},
    "calibration_parameters": {"cal_data_dir": "a; b", "calibration_type": "default"},
    "compiler_parameters": {"optimize_level": "O3"},
}


def _resolve(inputs: dict[str, list[int]], **values) -> list:
    conf = copy.deepcopy(BASE)
    conf["input_parameters"].update(values)
    if len(inputs) == 1:
        conf["calibration_parameters"]["cal_data_dir"] = "a"
    else:
        conf["input_parameters"].update(input_name="; ".join(inputs), input_type_train="rgb; gray",
                                        input_type_rt="rgb; gray", input_layout_train="NCHW; NCHW",
                                        norm_type="data_mean_and_scale; data_mean_and_scale")
    return resolve_inputs(load_config(conf), inputs)


@pytest.mark.parametrize("mean", [[100, 60, 155], [[100, 60, 155]], [100.0, 60, 155.0]])
def test_list_forms_read_as_text(mean) -> None:
    spec = _resolve({"images": [1, 3, 32, 32]}, mean_value=mean, scale_value=[[0.0125, 0.02, 0.0143]])[0]
    assert spec.mean == (100.0, 60.0, 155.0) and spec.scale == (0.0125, 0.02, 0.0143)


def test_one_list_per_input() -> None:
    a, b = _resolve({"a": [1, 3, 8, 8], "b": [1, 1, 8, 8]}, mean_value=[[1, 2, 3], [4]], scale_value=[[0.5], [0.25]])
    assert (a.mean, b.mean, a.scale, b.scale) == ((1.0, 2.0, 3.0), (4.0,), (0.5,), (0.25,))


def test_other_lists_still_refused() -> None:
    with pytest.raises(NpuflowError) as e:
        _resolve({"images": [1, 3, 32, 32]}, mean_value=[["a"]])
    assert e.value.code == "NPF_BUILD_BAD_VALUE"
