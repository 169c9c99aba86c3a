"""Round 11 of new-user flows: a folder of .wav clips passed as calibration data to a Conv1d audio
model.  It was read as raw ``numpy.tofile`` files and refused with "raw file without a shape: set
calib_shapes", advice that reads the clip's header bytes as samples; the refusal now says to decode
the clips into the model's input arrays."""

from __future__ import annotations

import wave

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import npuflow
from npuflow.errors import NpuflowError


def test_a_folder_of_wav_clips_is_refused_with_how_to_decode_them(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 9)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[4, 4])], "a",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 400])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 400])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for i in range(2):
        with wave.open(str(tmp_path / f"clip{i}.wav"), "wb") as f:
            f.setnchannels(1), f.setsampwidth(2), f.setframerate(16000)
            f.writeframes((rng.standard_normal(400) * 3000).astype(np.int16).tobytes())
    with pytest.raises(NpuflowError) as info:
        npuflow.quantize(model, str(tmp_path), "cpu-int8", warn=False)
    assert info.value.code == "NPF_QUANT_CALIB_SOURCE"
    assert "an audio file" in info.value.message and "calib_shapes" not in info.value.message, info.value.message
