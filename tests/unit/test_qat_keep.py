"""``bench_qat.py --onnx-keep``: what a run keeps is enough to investigate a ``.npuf`` vs torch gap
after the run -- the trained student rebuilt from the kept files gives the kept torch outputs bit
for bit, and the kept ``.npuf`` gives the kept ``.npuf`` outputs."""

from __future__ import annotations

import types

import numpy as np
import onnx
import torch

import npuflow
from npuflow.torch import onnx_qat
from npuflow.torch.config import qat_config
from npuflow.torch.onnx_convert import load_onnx2torch
from npuflow.torch.onnx_qat import qat_onnx
from benchmarks import bench_qat
from tests.unit.test_onnx_qat import DPU, _tiny_model_with_cpu_tail


def test_kept_files_rebuild_the_trained_student_and_its_npuf(tmp_path):
    rng = np.random.default_rng(1)
    samples = [(rng.standard_normal((1, 3, 16, 16)) * 2).astype(np.float32) for _ in range(16)]
    torch.manual_seed(0)
    result = qat_onnx(_tiny_model_with_cpu_tail(), DPU, samples, epochs=1, ptq_config={}, batch=4, loss="ctc")
    result.qat.eval()
    feeds = samples[:3]
    with torch.no_grad():
        qat_out = [result.qat(torch.from_numpy(x)).numpy() for x in feeds]
    npuf = npuflow.compile(result.model, DPU)
    npuf_out = [npuflow.Session(npuf).run({"x": x})["y"] for x in feeds]
    folder = tmp_path / "tiny_seed0"
    bench_qat._keep(folder, result, npuf, feeds, qat_out, npuf_out)

    kept = np.load(folder / "compare.npz")
    np.testing.assert_array_equal(kept["max_abs_diff"], [np.abs(n - q).max() for n, q in zip(npuf_out, qat_out)])
    ptq = types.SimpleNamespace(float_model=onnx.load(str(folder / "ptq_float.onnx")),
                                model=onnx.load(str(folder / "ptq_model.onnx")))
    student = onnx_qat._build_student(load_onnx2torch(), ptq, npuflow.load_target(DPU), qat_config({"learnable": True}),
                                      [{"x": x} for x in kept["inputs"]], 4, 0)
    student.qat.load_state_dict(torch.load(folder / "qat_state.pt", weights_only=True))
    student.qat.eval()
    session = npuflow.Session(str(folder / "model.npuf"))
    for x, t, n in zip(kept["inputs"], kept["torch"], kept["npuf"]):
        with torch.no_grad():
            np.testing.assert_array_equal(student.qat(torch.from_numpy(x)).numpy(), t)
        np.testing.assert_array_equal(session.run({"x": x})["y"], n)
    assert onnx.load(str(folder / "qdq.onnx")).graph.node  # the returned QDQ model
