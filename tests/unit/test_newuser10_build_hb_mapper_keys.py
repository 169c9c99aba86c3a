"""hb_mapper keys npuflow does not read (round 10): a user's hb_mapper YAML with
``remove_node_type: 'Dequantize'`` or ``compiler_parameters: jobs`` / ``input_source`` read
"Wrong keys" and the allowed list, with nothing to say what to do instead.  The hint now names
them as hb_mapper's and says what npuflow does in their place (``npuflow modify --remove``)."""

from __future__ import annotations

import pytest

from npuflow.build.config import parse_config
from npuflow.errors import NpuflowError

BASE = {
    "model_parameters": {"onnx_model": "m.onnx", "march": "bernoulli2", "output_model_file_prefix": "m",
                         "working_dir": "out"},
    "input_parameters": {"input_name": "x", "input_type_train": "rgb", "input_layout_train": "NCHW",
                         "input_type_rt": "rgb", "input_layout_rt": "NCHW", "input_shape": "1x3x16x16",
                         "norm_type": "no_preprocess"},
    "calibration_parameters": {"cal_data_dir": "cal", "calibration_type": "default"},
    "compiler_parameters": {"optimize_level": "O3"},
}


def _refused(group: str, extra: dict) -> NpuflowError:
    config = {k: dict(v) for k, v in BASE.items()}
    config[group].update(extra)
    with pytest.raises(NpuflowError) as exc:
        parse_config(config)
    assert exc.value.code == "NPF_BUILD_UNKNOWN_KEYS"
    return exc.value


def test_remove_node_type_points_to_npuflow_modify():
    err = _refused("model_parameters", {"remove_node_type": "Dequantize"})
    assert "'remove_node_type': hb_mapper key(s) npuflow does not read" in err.hint
    assert "npuflow modify MODEL.npuf --remove NODE" in err.hint


def test_compiler_keys_say_what_stands_in_for_them():
    err = _refused("compiler_parameters", {"jobs": 4, "input_source": {"x": "pyramid"}})
    assert "'jobs', 'input_source': hb_mapper key(s)" in err.hint
    assert "input_type_rt" in err.hint and "parallel-jobs" in err.hint


def test_a_misspelt_key_still_gets_its_suggestion_only():
    err = _refused("compiler_parameters", {"optimze_level": "O2"})
    assert "Did you mean 'optimize_level'?" in err.hint and "hb_mapper key" not in err.hint
