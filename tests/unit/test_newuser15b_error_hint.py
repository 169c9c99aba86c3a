"""A coded error's hint reaches Python users, once (new-user round 15b, open items 1 and #11).

Before: ``str(NpuflowError)`` was ``[CODE] message`` alone, so an error a script did not catch
ended in ``NpuflowError: [NPF_X] message`` with no word of what to do (only the CLI printed the
hint, and the torch.compile backend added it by hand).  Now the hint is the second line of
``str(exc)``; the CLI's ``ERROR [CODE] message`` / ``hint:`` pair and the Dynamo message keep it
once.  And ``npuflow.ort.InferenceSession``, which compiles a quantized model itself, named
``npuflow compile --input-shape`` for a batch the model was not compiled at, not its own
``input_shapes=`` argument."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import npuflow
import npuflow.ort as nort
from npuflow.errors import NpuflowError

REPO = Path(__file__).resolve().parents[2]
TARGET = "cpu-int8"


def test_uncaught_error_in_a_script_shows_code_message_and_hint_once(tmp_path):
    script = tmp_path / "user.py"
    script.write_text("import npuflow\nnpuflow.Session('missing.npuf')\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    err = NpuflowError("NPF_COMPILE_FILE_NOT_FOUND", path="missing.npuf")
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.rstrip().endswith(f"NpuflowError: [NPF_COMPILE_FILE_NOT_FOUND] {err.message}\n  hint: {err.hint}")
    shown = r.stderr[r.stderr.index("npuflow.errors.NpuflowError:"):]  # above it: the traceback's source lines
    assert shown.count("NPF_COMPILE_FILE_NOT_FOUND") == 1 and r.stderr.count("hint:") == 1


def test_str_and_attributes():
    from npuflow.errors import error_text

    err = NpuflowError("NPF_MODEL_NOT_FOUND", path="m.onnx")
    assert str(err) == f"[NPF_MODEL_NOT_FOUND] {err.message}\n  hint: {err.hint}"
    assert err.message == "model file m.onnx does not exist" and "[" not in err.message and "hint" not in err.message
    assert err.render() == f"ERROR [NPF_MODEL_NOT_FOUND] {err.message}\n  hint: {err.hint}"
    assert error_text(err) == f"[NPF_MODEL_NOT_FOUND] {err.message}" and error_text(ValueError("v")) == "v"


def test_cli_prints_the_hint_once(cli, tmp_path):
    r = cli("info", str(tmp_path / "missing.npuf"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("[NPF_") == 1 and r.stderr.count("hint:") == 1
    assert r.stderr.startswith("ERROR [NPF_COMPILE_FILE_NOT_FOUND]")


def test_torch_compile_shows_the_hint_once():
    import torch  # optional for npuflow, installed by the test extras: missing, this test fails
    import torch._dynamo

    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    compiled = torch.compile(net, backend="npuflow", dynamic=False, options={"calib_data": torch.rand(2, 1, 8, 8)})
    try:
        with pytest.raises(Exception) as err, torch.no_grad():
            compiled(torch.rand(1, 1, 8, 8))
    finally:
        torch._dynamo.reset()
    text = str(err.value)
    assert text.count("[NPF_TORCH_BAD_BACKEND_OPTION]") == 1 and text.count("hint:") == 1, text


@pytest.fixture(scope="module")
def dynamic_batch(tmp_path_factory):
    """The bundled MNIST CNN with a dynamic batch (input and output dimension 0 named, the
    flatten before the classifier per sample, as ``torch.onnx.export(dynamic_axes=...)`` makes
    them), quantized for cpu-int8 and saved: ``quantized_model.onnx`` keeps the batch open."""
    root = tmp_path_factory.mktemp("hint15b")
    model = onnx.load(REPO / "examples/mnist_cnn.onnx")
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    (flatten,) = [n for n in model.graph.node if n.op_type == "Constant"]  # the Reshape's [1, -1]
    flatten.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array([-1, 1152], np.int64)))
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:8].reshape(-1, 1, 1, 28, 28)
    feeds = [(d / 255.0).astype(np.float32) for d in digits]
    npuflow.quantize(model, feeds[:4], TARGET, warn=False).save(root / "q")
    return root / "q" / "quantized_model.onnx", np.concatenate(feeds[4:])


def test_ort_session_shape_hint_names_its_input_shapes_argument(dynamic_batch, tmp_path):
    qpath, x4 = dynamic_batch
    sess = nort.InferenceSession(str(qpath), target=TARGET, cache_dir=tmp_path)  # the batch compiles at 1
    with pytest.raises(NpuflowError) as err:
        sess.run(None, {"input": x4})
    assert err.value.code == "NPF_RUNTIME_INPUT_SHAPE"
    assert "npuflow.ort.InferenceSession(..., input_shapes={'input': [4, 1, 28, 28]})" in err.value.hint
    assert "npuflow compile" not in err.value.hint and str(err.value).count("hint:") == 1
    # what the hint says works, and equals the batch-1 session sample by sample
    at4 = nort.InferenceSession(str(qpath), target=TARGET, cache_dir=tmp_path, input_shapes={"input": [4, 1, 28, 28]})
    one = [sess.run(None, {"input": x4[k:k + 1]})[0] for k in range(4)]
    assert np.array_equal(at4.run(None, {"input": x4})[0], np.concatenate(one))


def test_npuf_session_and_runtime_keep_the_compile_step(dynamic_batch, tmp_path):
    """A ``.npuf`` was compiled elsewhere: the hint names the CLI step and npuflow.compile's argument."""
    qpath, x4 = dynamic_batch
    npuf = npuflow.compile(qpath, TARGET).save(tmp_path / "m.npuf")
    for run in (lambda: nort.InferenceSession(str(npuf)).run(None, {"input": x4}),
                lambda: npuflow.Session(npuf).run({"input": x4})):
        with pytest.raises(NpuflowError) as err:
            run()
        assert err.value.code == "NPF_RUNTIME_INPUT_SHAPE"
        assert "npuflow compile --input-shape NAME DIMS" in err.value.hint and "input_shapes=" in err.value.hint
        assert "InferenceSession" not in err.value.hint


def test_ort_session_too_large_hint_names_its_shape_sets(dynamic_batch, tmp_path):
    qpath, x4 = dynamic_batch
    sets = [{"input": [1, 1, 28, 28]}, {"input": [2, 1, 28, 28]}]
    sess = nort.InferenceSession(str(qpath), target=TARGET, cache_dir=tmp_path, input_shapes=sets)
    with pytest.raises(NpuflowError) as err:
        sess.run(None, {"input": x4})
    assert err.value.code == "NPF_RUNTIME_SHAPE_TOO_LARGE"
    assert "npuflow.ort.InferenceSession(..., input_shapes=[{'NAME': DIMS}, ...])" in err.value.hint
    assert "--input-shape" not in err.value.hint and str(err.value).count("hint:") == 1
