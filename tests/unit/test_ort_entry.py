"""``npuflow.ort.InferenceSession``: an ONNX Runtime application runs a compiled model unchanged;
compile-at-start with a cache keyed by the model bytes, target and version."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import npuflow
import npuflow.ort as nort
from npuflow.errors import NpuflowError
from tests.unit.quant_nets import conv_net, samples

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The bundled example (MNIST CNN) and a synthetic net, quantized for the DPU."""
    root = tmp_path_factory.mktemp("ort")
    digits = np.load(REPO / "examples/mnist/eval_images.npy")[:6].reshape(-1, 1, 1, 28, 28)
    feeds = [{"input": (d / 255.0).astype(np.float32)} for d in digits]
    out = {}
    for name, source, data in (("mnist", str(REPO / "examples/mnist_cnn.onnx"), feeds[:4]),
                               ("conv", conv_net(), [{"x": s} for s in samples([1, 3, 8, 8], 3)])):
        path = root / f"{name}.onnx"
        npuflow.model.save(npuflow.quantize(source, data, DPU).model, path)
        out[name] = path
    return out, feeds[4:]


def _application(session_class, path, feeds):
    """An ONNX Runtime application: names and types from the session, outputs by name."""
    sess = session_class(str(path))
    inp = sess.get_inputs()[0]
    assert inp.type == "tensor(float)" and inp.shape == [1, 1, 28, 28]
    out = sess.get_outputs()[0].name
    return [sess.run([out], {inp.name: f["input"]})[0] for f in feeds]


def test_drop_in_for_onnxruntime(models, tmp_path):
    (paths, feeds) = models
    ort = _application(lambda p: onnxruntime.InferenceSession(p, providers=["CPUExecutionProvider"]), paths["mnist"], feeds)
    ours = _application(lambda p: nort.InferenceSession(p, target=DPU, cache_dir=tmp_path), paths["mnist"], feeds)
    compiled = npuflow.Session(npuflow.compile(str(paths["mnist"]), DPU))
    for f, a, b in zip(feeds, ort, ours):
        (want,) = compiled.run(f).values()
        assert np.array_equal(b, want)
        assert np.array_equal(a, want)  # power-of-two target: ONNX Runtime on the QDQ model, bit for bit


def test_description_matches_onnxruntime(models, tmp_path):
    paths, _ = models
    ref = onnxruntime.InferenceSession(str(paths["conv"]), providers=["CPUExecutionProvider"])
    sess = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path)
    for a, b in ((ref.get_inputs(), sess.get_inputs()), (ref.get_outputs(), sess.get_outputs())):
        assert [(x.name, x.shape, x.type) for x in a] == [(x.name, x.shape, x.type) for x in b]
    meta, ref_meta = sess.get_modelmeta(), ref.get_modelmeta()
    assert meta.custom_metadata_map == ref_meta.custom_metadata_map and meta.custom_metadata_map["character"] == "abc\ndef"
    assert meta.graph_name == ref_meta.graph_name
    assert sess.get_providers()[0] == "NpuflowExecutionProvider"
    x = samples([1, 3, 8, 8], 1, seed=5)[0]
    both = sess.run(None, {"x": x})
    assert len(both) == 1 and np.array_equal(both[0], sess.run(["y"], {"x": x})[0])
    with pytest.raises(NpuflowError) as e:
        sess.run(["nope"], {"x": x})
    assert e.value.code == "NPF_RUNTIME_UNKNOWN_OUTPUT" and "y" in e.value.hint


def test_cache_hit_rebuild_and_corrupt_entry(models, tmp_path, monkeypatch, caplog):
    paths, _ = models
    first = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path)
    second = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path)
    assert (first.from_cache, second.from_cache) == (False, True)
    (entry,) = tmp_path.iterdir()  # atomic writes leave no temporary file
    assert entry.suffix == ".npuf" and len(entry.stem) == 64
    monkeypatch.setenv(nort.CACHE_ENV, "0")
    assert nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path).from_cache is False
    monkeypatch.delenv(nort.CACHE_ENV)
    # a damaged entry: warned about, discarded, rebuilt
    entry.write_bytes(entry.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING, logger="npuflow.ort"):
        again = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path)
    assert again.from_cache is False and "damaged" in caplog.text and "NPF_COMPILE_" in caplog.text
    assert nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path).from_cache is True
    # the same cache_key for other bytes: the stored key does not match, so it is rebuilt
    a = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=tmp_path, cache_key="app")
    b = nort.InferenceSession(paths["mnist"], target=DPU, cache_dir=tmp_path, cache_key="app")
    assert (a.from_cache, b.from_cache) == (False, False) and b.get_inputs()[0].name == "input"
    assert nort.InferenceSession(paths["mnist"].read_bytes(), target=DPU, cache_dir=tmp_path,
                                 cache_key="app").from_cache is True
    # another target is another key
    assert nort.InferenceSession(paths["conv"], target="DPUCAHX8L_ISA0", cache_dir=tmp_path).from_cache is False


def test_npuf_and_refusals(models, tmp_path):
    paths, _ = models
    npuf = npuflow.compile(str(paths["conv"]), DPU).save(tmp_path / "conv.npuf")
    sess = nort.InferenceSession(npuf)
    assert sess.get_inputs()[0].name == "x"
    with pytest.raises(NpuflowError) as e:
        nort.InferenceSession(paths["conv"])
    assert e.value.code == "NPF_RUNTIME_NO_TARGET"
    with pytest.raises(NpuflowError) as e:
        nort.InferenceSession(npuf, target="bernoulli2")
    assert e.value.code == "NPF_RUNTIME_TARGET_MISMATCH"
    with pytest.raises(NpuflowError) as e:
        nort.InferenceSession(b"not a model", target=DPU, cache_dir=tmp_path)
    assert e.value.code == "NPF_MODEL_NOT_ONNX"


def test_unwritable_cache_warns_and_runs(models, tmp_path, caplog):
    paths, _ = models
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="npuflow.ort"):
        sess = nort.InferenceSession(paths["conv"], target=DPU, cache_dir=blocker / "cache")
    assert "NPF_IO_WRITE_FAILED" in caplog.text
    assert sess.run(None, {"x": samples([1, 3, 8, 8], 1)[0]})[0].shape == (1, 5)
