"""Round 23b of new-user flows: a build config that leaves a model input out of ``input_name``.

A two-input text classifier (``ids`` int64 token ids, ``pad`` its padding mask) built with
``input_name: 'ids'`` failed with ``NPF_MODEL_DYNAMIC_SHAPE`` on ``pad`` and the hint
``--input-shape pad 1x64`` (a flag ``build`` has not); with static inputs it failed at calibration
with ``NPF_QUANT_CALIB_MISMATCH`` and a hint about ``--input-shape``.  The config is now refused
where it is read against the model, naming the input left out and what to write.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

import npuflow
from npuflow.build import load_config, resolve_inputs
from npuflow.errors import NpuflowError

CONF = {
    "model_parameters": {"onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096", "output_model_file_prefix": "m"},
    "input_parameters": {"input_name": "ids", "input_type_train": "featuremap", "input_type_rt": "featuremap",
                         "input_shape": "1x32", "norm_type": "no_preprocess"},
    "calibration_parameters": {"cal_data_dir": "ids", "calibration_type": "default"},
    "compiler_parameters": {"optimize_level": "O3"},
}


def test_an_input_left_out_of_input_name_is_named():
    with pytest.raises(NpuflowError) as e:
        resolve_inputs(load_config(CONF), {"ids": [1, None], "pad": [1, None]})
    assert e.value.code == "NPF_BUILD_INPUT_NOT_NAMED"
    assert "'pad'" in str(e.value) and "freeze_input" in str(e.value)


def test_every_input_named_resolves():
    conf = {**CONF, "input_parameters": {**CONF["input_parameters"], "input_name": "ids; pad",
                                         "input_type_train": "featuremap; featuremap",
                                         "input_type_rt": "featuremap; featuremap", "input_shape": "1x32; 1x32",
                                         "norm_type": "no_preprocess; no_preprocess"},
            "calibration_parameters": {"cal_data_dir": "a; b", "calibration_type": "default"}}
    assert [s.name for s in resolve_inputs(load_config(conf), {"ids": [1, None], "pad": [1, None]})] == ["ids", "pad"]


def test_a_build_with_a_static_input_left_out_is_refused_before_calibration(tmp_path):
    w = numpy_helper.from_array(np.full((4, 2, 3, 3), 0.1, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Add", ["c", "y"], ["z"])],
        "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 8, 8]),
                helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    (tmp_path / "cx").mkdir()
    for i in range(2):
        np.save(tmp_path / "cx" / f"s{i}.npy", np.ones((1, 2, 8, 8), np.float32))
    conf = {**CONF, "model_parameters": {**CONF["model_parameters"], "working_dir": str(tmp_path / "out")},
            "input_parameters": {"input_name": "x", "input_type_train": "featuremap", "input_type_rt": "featuremap",
                                 "norm_type": "no_preprocess"},
            "calibration_parameters": {"cal_data_dir": "cx", "calibration_type": "default"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(NpuflowError) as e:
        npuflow.build(str(tmp_path / "b.yaml"))
    assert e.value.code == "NPF_BUILD_INPUT_NOT_NAMED" and "'y'" in str(e.value)
