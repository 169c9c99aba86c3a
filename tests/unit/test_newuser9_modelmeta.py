"""``npuflow.ort.InferenceSession(...).get_modelmeta()``, the drop-in for ONNX Runtime's (new-user
round 9: a model with ``model_version``, ``domain`` and doc strings, which applications read for
their label files and versions): it returned version 0 and empty descriptions, while
``onnxruntime.InferenceSession`` on the same ``quantized_model.onnx`` returned the model's.  The
``.npuf`` now stores them, and every field equals ONNX Runtime's."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort

import npuflow
import npuflow.ort
from tests.fixture_models import mnist_cnn


def test_modelmeta_equals_onnx_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path / "cache"))
    model = onnx.load(mnist_cnn())
    model.model_version, model.domain, model.producer_name = 7, "com.example.digits", "my-trainer"
    model.doc_string, model.graph.doc_string = "digits, second line ü", "graph doc"
    onnx.helper.set_model_props(model, {"labels": "0,1,2,3,4,5,6,7,8,9", "author": "me"})
    rng = np.random.default_rng(0)
    q = npuflow.quantize(model, [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(2)], "cpu-int8",
                         warn=False)
    path = str(q.save(tmp_path / "q")["quantized_model"])
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).get_modelmeta()
    got = npuflow.ort.InferenceSession(path, target="cpu-int8").get_modelmeta()
    for name in (f.name for f in dataclasses.fields(got)):
        assert getattr(got, name) == getattr(want, name), name
    assert got.version == 7 and got.custom_metadata_map["labels"].startswith("0,1")
