"""``npuflow.ort.InferenceSession(...)`` as the README writes it, after a plain ``import npuflow``:
an AttributeError traceback before (the submodule had to be imported by name)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests import fixture_models

ROOT = Path(__file__).resolve().parents[2]


def test_npuflow_ort_and_ort_export_after_a_plain_import(tmp_path):
    code = ("import sys, numpy as np, npuflow\n"
            "q = npuflow.quantize(sys.argv[1], [np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)], 'cpu-int8')\n"
            "q.save(sys.argv[2])\n"
            "s = npuflow.ort.InferenceSession(sys.argv[2] + '/quantized_model.onnx', target='cpu-int8')\n"
            "print('outputs', [o.name for o in s.get_outputs()], callable(npuflow.ort_export.export))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(fixture_models.mnist_cnn()), str(tmp_path / "q")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "outputs ['logits'] True" in proc.stdout


def test_other_missing_attributes_stay_attribute_errors():
    import npuflow

    try:
        npuflow.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("npuflow.no_such_thing resolved")
