"""``bench_qat.py --onnx-ptq-method adaquant --onnx-ptq-learn-threshold``: QAT of an ONNX model
starts from AdaQuant with learned power-of-two weight thresholds, the best PTQ of PP-OCRv4 rec
(docs/accuracy.md), and the results name that start."""

from __future__ import annotations

import numpy as np

from npuflow.torch.onnx_qat import qat_onnx
from benchmarks import bench_qat
from tests.unit.test_onnx_qat import DPU, _tiny_model_with_cpu_tail


def test_adaquant_learn_threshold_start_is_what_qat_trains_from():
    args = bench_qat.parser().parse_args(["--onnx", "--onnx-ptq-method", "adaquant", "--onnx-ptq-learn-threshold",
                                      "--onnx-ptq-iters", "20", "--onnx-ptq-calib", "8", "--onnx-ptq-seed", "1"])
    config = bench_qat.ptq_config(args)
    assert config == {"fast_finetune": {"method": "adaquant", "iters": 20, "learn_threshold": True, "seed": 1},
                      "max_calib_samples": 8}
    assert bench_qat.ptq_label(args) == "AdaQuant with learned weight thresholds (`learn_threshold`), seed 1"

    rng = np.random.default_rng(3)
    samples = [(rng.standard_normal((1, 3, 16, 16)) * 2).astype(np.float32) for _ in range(12)]
    result = qat_onnx(_tiny_model_with_cpu_tail(), DPU, samples, epochs=1, ptq_config=config, batch=4)
    ran = result.ptq.info["algorithms"]["fast_finetune"]
    assert ran["method"] == "adaquant" and ran["iters"] == 20
    assert "fix_moves" in ran  # the thresholds were learned (reported only under learn_threshold)
    assert result.report["weights_from_ptq"] == 1  # the student's conv took the AdaQuant start's weights


def test_default_start_stays_adaround_without_learned_thresholds():
    args = bench_qat.parser().parse_args(["--onnx"])
    assert bench_qat.ptq_config(args) == {"fast_finetune": {"method": "adaround", "iters": 500}, "max_calib_samples": 32}
    assert bench_qat.ptq_label(args) == "AdaRound"


def test_gptq_start_fits_every_calibration_sample_and_qat_trains_from_it():
    """EfficientNet-Lite0's best all-DPU PTQ is GPTQ on 256 crops (93.00 %, results/accuracy_effnet_s36.md):
    QAT can start from it, with GPTQ fitted on all the calibration samples rather than the default 64."""
    args = bench_qat.parser().parse_args(["--onnx", "--onnx-ptq-method", "gptq", "--onnx-ptq-calib", "12"])
    config = bench_qat.ptq_config(args)
    assert config == {"fast_finetune": {"method": "gptq", "iters": 500}, "max_calib_samples": 12,
                      "finetune_samples": 12}
    assert bench_qat.ptq_label(args) == "GPTQ"

    rng = np.random.default_rng(5)
    samples = [(rng.standard_normal((1, 3, 16, 16)) * 2).astype(np.float32) for _ in range(12)]
    result = qat_onnx(_tiny_model_with_cpu_tail(), DPU, samples, epochs=1, ptq_config=config, batch=4)
    assert result.ptq.info["algorithms"]["fast_finetune"]["method"] == "gptq"
    assert result.report["weights_from_ptq"] == 1  # the student's conv took GPTQ's integer weights
    assert result.report["ptq_config"]["fast_finetune"]["method"] == "gptq"


def test_gpu_driver_offers_the_gptq_start_on_256_crops():
    """``qat_gpu.py prepare --start gptq``: the GPTQ start the 300-crop QAT row trains from, calibrated
    and fitted on the 256 crops its 93.00 % was measured on; AdaRound on 32 stays the default."""
    from benchmarks import qat_gpu

    assert qat_gpu.start_config("gptq") == (256, {"fast_finetune": {"method": "gptq", "iters": 500},
                                                  "max_calib_samples": 256, "finetune_samples": 256})
    assert qat_gpu.start_config("adaround") == (32, {"fast_finetune": {"method": "adaround", "iters": 500},
                                                     "max_calib_samples": 32, "finetune_samples": 32})
    assert qat_gpu.start_config("gptq", 64)[0] == 64
    args = ["prepare", "--start", "gptq"]
    import sys
    from unittest import mock
    with mock.patch.object(sys, "argv", ["qat_gpu.py", *args]), mock.patch.object(qat_gpu, "prepare") as prep:
        qat_gpu.main()
    assert prep.call_args.args[0].start == "gptq"
