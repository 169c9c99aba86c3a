"""``npuflow.ort.InferenceSession`` takes what ONNX Runtime users hand it (new-user round 15b).

Before: an ``onnx.ModelProto`` was pathlib's uncoded ``TypeError``; a ``.npuf``'s bytes were
called "a quantized ONNX model: it needs a target"; a ``.npuf`` saved under another name was
compiled as ONNX; ``run("logits", feed)`` looked for outputs named ``l``, ``o`` ... ."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
import npuflow.ort as nort
from npuflow.errors import NpuflowError

REPO = Path(__file__).resolve().parents[2]
TARGET = "cpu-int8"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The bundled MNIST CNN quantized and compiled for cpu-int8, with one digit to run."""
    root = tmp_path_factory.mktemp("ort15b")
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:5].reshape(-1, 1, 1, 28, 28)
    feeds = [(d / 255.0).astype(np.float32) for d in digits]
    quantized = npuflow.quantize(str(REPO / "examples/mnist_cnn.onnx"), feeds[:4], TARGET)
    qpath = root / "quantized.onnx"
    npuflow.model.save(quantized.model, qpath)
    npuf = npuflow.compile(quantized, TARGET).save(root / "model.npuf")
    want = npuflow.Session(npuf).run({"input": feeds[4]})
    return root, qpath, npuf, feeds[4], want


def test_model_proto_is_compiled(built, tmp_path):
    _, qpath, _, x, want = built
    sess = nort.InferenceSession(onnx.load(qpath), target=TARGET, cache_dir=tmp_path)
    assert np.array_equal(sess.run(None, {"input": x})[0], want["logits"])


def test_npuf_bytes_are_a_coded_error_naming_the_file_form(built):
    _, _, npuf, _, _ = built
    with pytest.raises(NpuflowError) as err:
        nort.InferenceSession(Path(npuf).read_bytes())
    assert err.value.code == "NPF_MODEL_NOT_ONNX"
    assert ".npuf" in err.value.message and "target" not in err.value.message


def test_npuf_under_another_name_is_loaded(built, tmp_path):
    _, _, npuf, x, want = built
    renamed = shutil.copy(npuf, tmp_path / "model.bin")
    sess = nort.InferenceSession(renamed)
    assert np.array_equal(sess.run(None, {"input": x})[0], want["logits"])


def test_one_output_name_as_a_string(built):
    _, _, npuf, x, want = built
    sess = nort.InferenceSession(npuf)
    (out,) = sess.run("logits", {"input": x})
    assert np.array_equal(out, want["logits"])


def test_other_model_objects_are_coded(built):
    with pytest.raises(NpuflowError) as err:
        nort.InferenceSession(123, target=TARGET)
    assert err.value.code == "NPF_MODEL_NOT_ONNX"
