"""Label-free QAT of PP-OCRv4 rec starts at the PTQ model (``npuflow.torch.ptq_init``).

The torch student, before any training step, must compute what the PTQ QDQ model computes in
ONNX Runtime: before the fix it agreed on 97.8 % of CTC steps (mean output cosine 0.979), because
it multiplied by PP-LCNet's learnable-affine constants in float where the PTQ model reads them as
int8, did not quantize four tensors the CPU attention hands back to the DPU through a
Squeeze/Reshape, and let the CPU sigmoid of two swish blocks read the quantized value where the
PTQ model reads the float one.  Since 2026-12-05 the attention's linear layers take their bias
``Add`` into the layer (no quantize step between ``MatMul`` and ``Add``: 144 -> 138 activation
points, 4 -> 2 added tensors) and the placement rules no longer leave the two swish sigmoids
reading a float value (2 -> 0 float reads); the student still equals the PTQ model.  Since the
affine blocks fold forward into the next layer on accelerator targets (29670b8), 37 of their
quantized outputs are gone (138 -> 101 activation points).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

import npuflow
from npuflow.ort_session import open_session
from npuflow.targets import load_target
from npuflow.torch.config import qat_config
from npuflow.torch.onnx_convert import load_onnx2torch
from npuflow.torch.onnx_qat import _build_student
from tests import fixture_models

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"


def _lines(split: str, n: int) -> list[dict[str, np.ndarray]]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from benchmarks import datasets

    return datasets.ocr_lines(split, n)[0]


def test_rec_student_before_training_is_the_ptq_model():
    torch.set_num_threads(1)
    target = load_target(DPU)
    ptq = npuflow.quantize(fixture_models.ppocr_rec(), _lines("calib", 16), target, {"include_bias_corr": False},
                           warn=False)
    student = _build_student(load_onnx2torch(), ptq, target, qat_config({"learnable": True}), _lines("calib", 8),
                             batch=8, seed=0)
    found = student.initialised
    # 103 activation points since 853ae55 (101 before): the LayerNorms are one node each, quantized at its
    # input and output as the written-out chain was not
    assert found["unmapped"] == 0 and found["weights"] == 38 and found["activations"] == 103
    assert found["constants"] > 0 and found["added"] == 2 and found["float_reads"] == 0
    session = open_session(ptq.model, threads=1)
    student.qat.eval()
    steps_equal, cosines = [], []
    for sample in _lines("eval", 20):
        expected = session.run(None, sample)[0]
        with torch.no_grad():
            got = student.qat(torch.from_numpy(sample["x"])).numpy()
        steps_equal.append(got.argmax(-1) == expected.argmax(-1))
        cosines.append(float((got * expected).sum() / (np.linalg.norm(got) * np.linalg.norm(expected))))
    assert np.concatenate(steps_equal, axis=None).mean() >= 0.999
    assert min(cosines) >= 0.999
