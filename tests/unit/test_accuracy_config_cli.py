"""The accuracy switches through ``npuflow quantize --config``: they run and are recorded."""

from __future__ import annotations

import json

import numpy as np
import onnx

from npuflow.cli.app import main
from npuflow.graph import get_array

from .quant_nets import samples, two_conv_net

DPU = "DPUCZDX8G_ISA1_B4096"


def test_quantize_config_switches_run_cle_bias_correction_and_fast_finetune(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NPUFLOW_CACHE", str(tmp_path / "cache"))
    onnx.save(two_conv_net(), str(tmp_path / "net.onnx"))
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, x in enumerate(samples([1, 3, 6, 6], n=6)):
        np.save(calib / f"{i:03d}.npy", x)
    outs = {}
    for name, cfg in {
        "plain": {},
        "all": {"include_cle": True, "include_bias_corr": True,
                "fast_finetune": {"method": "adaquant", "iters": 20, "batch": 64}},
        "adaround": {"include_cle": True, "cle_clip_policy": "per_channel",
                     "fast_finetune": {"method": "adaround", "iters": 20, "lr": 0.01, "backend": "numpy"}},
    }.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        rc = main(["quantize", str(tmp_path / "net.onnx"), "--target", DPU, "--calib", str(calib),
                   "--config", str(tmp_path / f"{name}.json"), "-o", str(tmp_path / name), "--no-nodes"])
        assert rc == 0, capsys.readouterr().err
        outs[name] = tmp_path / name
    info = json.loads((outs["all"] / "quant_info.json").read_text())
    assert info["cle"] and info["bias_corrected"] and info["fast_finetuned"]
    assert not json.loads((outs["plain"] / "quant_info.json").read_text())["cle"]
    plain = onnx.load(str(outs["plain"] / "quantized_model.onnx"))
    tuned = onnx.load(str(outs["all"] / "quantized_model.onnx"))
    biases = [t.name for t in plain.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert biases and any(not np.array_equal(get_array(plain, b), get_array(tuned, b)) for b in biases)
    assert (tmp_path / "cache" / "fast_finetune").is_dir()
