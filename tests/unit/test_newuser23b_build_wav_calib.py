"""Round 23b of new-user flows: ``npuflow build`` with ``cal_data_dir`` a folder of .wav clips.

``npuflow quantize --calib`` refuses a folder of audio clips with "an audio file: ... decode each
clip" (round 11), but ``build`` read the same clips as raw ``numpy.tofile`` float32 and said "has
8044 bytes; input 'wav' of shape 1x1x4000 needs 16000 (float32)" with a hint to save with
``numpy.tofile``; a clip of exactly the byte count would have been read as garbage samples.
Both now ask one function (``quant.data.not_raw_reason``) and refuse alike.
"""
from __future__ import annotations

import wave

import numpy as np
import onnx
import pytest
import yaml
from onnx import helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError


def _setup(tmp_path, samples: int) -> str:
    w = numpy_helper.from_array(np.full((4, 1, 9), 0.1, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["wav", "w"], ["y"], pads=[4, 4])], "a",
                              [helper.make_tensor_value_info("wav", onnx.TensorProto.FLOAT, [1, 1, samples])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    (tmp_path / "clips").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        with wave.open(str(tmp_path / "clips" / f"c{i}.wav"), "wb") as f:
            f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
            f.writeframes((rng.standard_normal(samples) * 3000).astype(np.int16).tobytes())
    conf = {"model_parameters": {"onnx_model": "m.onnx", "march": "DPUCZDX8G_ISA1_B4096",
                                 "output_model_file_prefix": "m", "working_dir": str(tmp_path / "out")},
            "input_parameters": {"input_type_train": "featuremap", "input_type_rt": "featuremap",
                                 "norm_type": "no_preprocess"},
            "calibration_parameters": {"cal_data_dir": "clips", "calibration_type": "default"},
            "compiler_parameters": {"optimize_level": "O3"}}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(conf))
    return str(tmp_path / "b.yaml")


# a 16-bit clip of n samples has 44 + 2n bytes: 400 samples fit no float32 size (refused as a wrong size);
# 22 samples are 88 bytes, 22 float32 values, which was read as a garbage sample without a word
@pytest.mark.parametrize("samples", [400, 22])
def test_a_folder_of_wav_clips_is_refused_as_quantize_refuses_it(tmp_path, samples):
    with pytest.raises(NpuflowError) as e:
        npuflow.build(_setup(tmp_path, samples))
    assert e.value.code == "NPF_QUANT_CALIB_SOURCE"
    assert "an audio file" in str(e.value) and "c0.wav" in str(e.value) and "tofile" not in e.value.message
