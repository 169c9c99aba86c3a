"""Helpful errors (issue 20 item 5): the nearest valid name for a misspelt target, config key,
choice, op type or node name (one rule: npuflow.errors.did_you_mean)."""

from __future__ import annotations

import pytest

from npuflow.errors import NpuflowError, closest, did_you_mean
from npuflow.quant.config import QuantConfig
from npuflow.targets import load_target


def test_closest_ignores_case_and_refuses_far_names():
    assert closest("conv", ["Conv", "ConvTranspose"]) == "Conv"
    assert did_you_mean("zzzz", ["Conv"]) == ""


def test_unknown_target_suggests_the_nearest_bundled_name(cli):
    with pytest.raises(NpuflowError) as exc:
        load_target("DPUCZDX8G_ISA1_B409")
    assert exc.value.code == "NPF_TARGET_UNKNOWN"
    assert exc.value.hint.startswith("Did you mean 'DPUCZDX8G_ISA1_B4096'? ")
    r = cli("targets", "bernouli2")
    assert r.returncode == 2 and "Did you mean 'bernoulli2'?" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("config,code,text", [
    ({"actvation": {"method": "minmax"}}, "NPF_QUANT_BAD_CONFIG", "did you mean 'activation'?"),
    ({"activation": {"methd": "minmax"}}, "NPF_QUANT_BAD_CONFIG", "did you mean 'method'?"),
    ({"activation": {"method": "percentil"}}, "NPF_QUANT_BAD_CONFIG", "did you mean 'percentile'?"),
    ({"fast_finetune": {"iter": 3}}, "NPF_QUANT_BAD_CONFIG", "did you mean 'iters'?"),
    ({"op_types": {"Conv": {"activaton": {}}}}, "NPF_QUANT_BAD_CONFIG", "did you mean 'activation'?"),
    ({"layers": [{"name": "a", "weight": {"round_mod": "x"}}]}, "NPF_QUANT_BAD_CONFIG", "did you mean 'round_mode'?"),
    ({"op_types": {"conv": {}}}, "NPF_QUANT_UNKNOWN_OP_TYPE", "Did you mean 'Conv'?"),
])
def test_quant_config_typos_name_the_nearest_key_or_choice(config, code, text):
    with pytest.raises(NpuflowError) as exc:
        QuantConfig.from_dict(config)
    assert exc.value.code == code and text in exc.value.render()


def test_unknown_node_names_suggest_the_nearest_node():
    cfg = QuantConfig.from_dict({"keep_float": ["/model.0/conv/Cnv"]})
    with pytest.raises(NpuflowError) as exc:
        cfg.check_names(["/model.0/conv/Conv", "/model.1/conv/Conv"])
    assert exc.value.code == "NPF_QUANT_UNKNOWN_LAYER" and "Did you mean '/model.0/conv/Conv'?" in exc.value.hint


def test_calibration_errors_name_the_file(tmp_path, capsys):
    """Issue 20: "calibration sample 1" named no file; the error now names the file's path."""
    import numpy as np
    import onnx

    from npuflow.cli.app import main

    from .quant_nets import conv_net, samples

    onnx.save(conv_net(), str(tmp_path / "net.onnx"))
    calib = tmp_path / "calib"
    calib.mkdir()
    good, bad = samples([1, 3, 8, 8], n=2)
    bad[0, 0, 0, 0] = np.nan
    np.save(calib / "a.npy", good)
    np.save(calib / "b.npy", bad)
    assert main(["quantize", str(tmp_path / "net.onnx"), "-t", "cpu-int8", "--calib", str(calib),
                 "-o", str(tmp_path / "o"), "-v", "0"]) == 2
    err = capsys.readouterr().err
    assert "ERROR [NPF_QUANT_CALIB_NONFINITE]" in err and str(calib / "b.npy") in err, err
