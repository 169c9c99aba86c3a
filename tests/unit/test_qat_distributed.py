"""Data-parallel QAT beyond the observers (issue 23): resumable label-free QAT, ``npuflow qat
--nproc``, BatchNorm statistics under DDP, and worker failures.

* the label-free QAT of the MNIST CNN, stopped during step 4 with a checkpoint at step 2 and
  resumed, writes the uninterrupted run's model byte for byte;
* ``npuflow qat --nproc 2`` exports the quantization parameters of one process on the same
  global batches (scales equal, integer weights equal up to a code at a rounding boundary:
  DDP averages two half-batch gradients instead of taking one), rank 0 alone writes;
* BatchNorms folded into convolutions (EfficientNet-Lite0's stem and first block) measure the
  global batch under DDP: the running statistics the compiled model folds equal one process's
  on the concatenated batch, not rank 0's half; a DDP checkpoint resumes in one process;
* a rank that fails while the other waits in a collective call, or dies while loading 10 MB
  of arguments, ends the launch with a coded error within seconds (no hang); a rank's own coded
  error keeps its code;
* ``qat_nproc`` in a build YAML reaches the QAT; 0 is a coded configuration error.
"""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from npuflow.errors import NpuflowError
from npuflow.torch import onnx_qat, qat_train
from npuflow.torch.distributed_launch import spawn
from npuflow.torch.onnx_qat import qat_onnx
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def digits(mnist_npy_folder):
    return mnist_npy_folder


@pytest.fixture(scope="module")
def serial(digits, tmp_path_factory):
    """The uninterrupted one-process run: 20 training digits, batches of 4, 5 steps; its final
    checkpoint holds the trained model whichever model the run keeps."""
    ckpt = tmp_path_factory.mktemp("serial") / "qat.ckpt"
    result = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, ptq_config={}, batch=4, checkpoint=ckpt)
    return result, torch.load(ckpt, weights_only=True)["model"]


def test_interrupted_onnx_qat_resumes_to_the_uninterrupted_model(serial, digits, tmp_path, monkeypatch):
    serial, trained = serial
    ckpt = tmp_path / "qat.ckpt"
    losses = {"calls": 0}
    real_loss = qat_train._distil_loss

    def stop_in_step_4(*args):
        losses["calls"] += 1
        if losses["calls"] == 4:
            raise KeyboardInterrupt  # Ctrl-C or a kill during step 4: step 3 is not in any checkpoint
        return real_loss(*args)

    monkeypatch.setattr(qat_train, "_distil_loss", stop_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, batch=4, ptq=serial.ptq,
                 checkpoint=ckpt, checkpoint_every=2)
    monkeypatch.undo()
    torch.manual_seed(99)  # another process's random state
    resumed = qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, batch=4, ptq=serial.ptq,
                       resume=ckpt, checkpoint=ckpt)
    assert resumed.report["resumed_at_step"] == 2 and resumed.steps == serial.steps == 5
    assert resumed.losses == serial.losses and resumed.trained_cosine == serial.trained_cosine
    assert resumed.model.SerializeToString() == serial.model.SerializeToString()
    resumed_state = torch.load(ckpt, weights_only=True)["model"]  # the trained model, kept or not
    assert all(torch.equal(resumed_state[k], v) for k, v in trained.items())

    with pytest.raises(NpuflowError) as err:  # another global batch: another run
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, batch=2, ptq=serial.ptq, resume=ckpt)
    assert err.value.code == "NPF_QAT_CHECKPOINT_MISMATCH"
    assert str(ckpt) in err.value.message and "batch: 4 in the checkpoint, 2 here" in err.value.message


def test_cli_nproc_2_exports_the_one_process_model(cli, serial, digits, tmp_path):
    serial, trained = serial
    out, ckpt = tmp_path / "out", tmp_path / "qat.ckpt"
    cfg = tmp_path / "ptq.json"
    cfg.write_text("{}")  # the serial run's PTQ start (the default quantizer, not AdaRound)
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", digits, "--epochs", "1", "--batch", "4",
              "-c", cfg, "--nproc", "2", "--checkpoint", ckpt, "-o", out)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("kept the") == 1 and "qat: train" in res.stderr  # one summary, rank 0's bar
    assert "Traceback" not in res.stderr and "Warning" not in res.stderr
    report = __import__("json").loads((out / "qat_report.json").read_text())
    assert report["processes"] == 2 and report["batch"] == 4 and report["steps"] == serial.steps
    ddp = {t.name: numpy_helper.to_array(t) for t in onnx.load(out / "quantized_model.onnx").graph.initializer}
    one = {t.name: numpy_helper.to_array(t) for t in serial.model.graph.initializer}
    assert ddp.keys() == one.keys()
    for name, value in one.items():
        if name.endswith(("_scale", "_zero_point")):
            assert np.array_equal(ddp[name], value), name
        elif np.issubdtype(value.dtype, np.integer):  # integer weights: a code may sit on a rounding boundary
            diff = np.abs(ddp[name].astype(np.int64) - value.astype(np.int64))
            assert diff.max() <= 1 and np.count_nonzero(diff) <= max(1, value.size // 1000), name
        else:
            np.testing.assert_allclose(ddp[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
    assert ckpt.is_file() and not list(tmp_path.glob(".*.tmp"))  # rank 0 wrote it, whole
    state = torch.load(ckpt, weights_only=True)
    assert state["world"] == 2 and len(state["rng"]) == 2 and state["step"] == serial.steps
    assert report["trained_cosine"] == pytest.approx(serial.trained_cosine, rel=1e-6)
    for name, value in trained.items():  # the trained models, whichever one each run kept
        if value.is_floating_point():
            np.testing.assert_allclose(state["model"][name].numpy(), value.numpy(), rtol=1e-5, atol=1e-7,
                                       err_msg=name)
        else:
            assert torch.equal(state["model"][name], value), name


def test_folded_batchnorm_measures_the_global_batch_under_ddp(tmp_path):
    from npuflow.torch.qat import load_checkpoint

    _bn_run(0, 1, str(tmp_path / "init"), str(tmp_path / "single"), 8)
    _bn_run(0, 1, str(tmp_path / "init"), str(tmp_path / "half"), 4)  # what rank 0 alone would measure
    torch.multiprocessing.spawn(_bn_run, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), 8), nprocs=2)
    single, half, ddp0, ddp1 = (np.load(tmp_path / f"{n}.npz") for n in ("single", "half", "ddp-rank0", "ddp-rank1"))
    stats = [k for k in single.files if k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 6  # stem, depthwise and projection BatchNorms, folded
    for k in single.files:
        np.testing.assert_array_equal(ddp0[k], ddp1[k])  # every rank holds the same statistics
        np.testing.assert_allclose(ddp0[k], single[k], rtol=2e-5, atol=1e-6, err_msg=k)
    # a half batch's statistics are clearly others: the comparison above can tell them apart
    assert max(float(np.max(np.abs(half[k] - single[k]))) for k in stats) > 1e-3
    qat = _bn_model()
    state = load_checkpoint(tmp_path / "ddp.ckpt", qat)  # the DDP run's checkpoint resumes in one process
    assert state.world == 2 and state.step == 2
    for name, value in qat.state_dict().items():
        if name.replace(".", "_") in ddp0.files:
            np.testing.assert_array_equal(value.numpy(), ddp0[name.replace(".", "_")])


def test_a_failing_rank_is_a_coded_error_not_a_hang():
    start = time.perf_counter()
    with pytest.raises(NpuflowError) as err:  # rank 1 fails while rank 0 waits in a barrier
        spawn(_fail_on_rank_1, 2, ("crash",))
    assert err.value.code == "NPF_SCALEOUT_WORKER_FAILED"
    assert "rank 1" in err.value.message and "RuntimeError: disk on fire" in err.value.message
    with pytest.raises(NpuflowError) as err:
        spawn(_fail_on_rank_1, 2, ("coded",))
    assert err.value.code == "NPF_QAT_BAD_BUDGET" and "rank 1 refused" in err.value.message
    with pytest.raises(NpuflowError) as err:  # rank 1 dies while loading 10 MB of arguments
        spawn(_fail_on_rank_1, 2, ("never run", b"x" * 10_000_000, _ExitOnRank1()))
    assert err.value.code == "NPF_SCALEOUT_WORKER_FAILED" and "rank 1: exited with status 3" in err.value.message
    assert time.perf_counter() - start < 180  # three launches of two processes each; nobody waited for a dead rank


class _ExitOnRank1:
    """Kills rank 1 as it unpickles its arguments (a process dying on start-up, before any
    exception handler of its own: the exit status is all the parent learns)."""

    def __reduce__(self):
        return (_exit_on_rank_1, ())


def _exit_on_rank_1() -> None:
    import os

    if os.environ.get("RANK") == "1":
        os._exit(3)


def test_bad_nproc_is_coded(digits):
    for value in (0, True, 2.5):
        with pytest.raises(NpuflowError) as err:
            qat_onnx(fixture_models.mnist_cnn(), DPU, str(digits), epochs=1, nproc=value)
        assert err.value.code == "NPF_SCALEOUT_BAD_WORKERS" and "--nproc" in err.value.message


def _fail_on_rank_1(report, mode: str, *ballast) -> str:
    import torch.distributed as dist

    if dist.get_rank() == 1:
        if mode == "coded":
            raise NpuflowError("NPF_QAT_BAD_BUDGET", reason="rank 1 refused")
        raise RuntimeError("disk on fire")
    dist.barrier()
    return "unreachable"


def _bn_model():
    from torch import nn

    from npuflow.torch import prepare_qat

    net = fixture_models.efficientnet_lite0_torch()
    stem_and_block = nn.Sequential(net._conv_stem, net._bn0, nn.ReLU6(), net._blocks[0])
    return prepare_qat(stem_and_block, torch.zeros(1, 3, 32, 32), DPU)


def _bn_run(rank: int, world: int, init: str, out: str, rows: int) -> None:
    """Calibrate (observers then frozen), then 2 SGD steps with live BatchNorm on global batches
    of 8 photo crops (the first ``rows`` of each when alone); rank ``r`` of ``world`` gets rows
    ``r * 8 / world ...``.  Writes ``{out}-rank{r}.npz`` (or ``{out}.npz``): BN statistics and
    weights; the DDP run also a checkpoint (``{out}.ckpt``, rank 0)."""
    import torch.distributed as dist
    from skimage import data as skdata

    from npuflow.torch.qat import distributed, save_checkpoint

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    photo = skdata.astronaut()
    crops = np.stack([photo[64 * (i // 6):64 * (i // 6) + 32, 64 * (i % 6):64 * (i % 6) + 32].transpose(2, 0, 1)
                      for i in range(24)])
    images = torch.from_numpy(((crops / 255.0 - 0.5) / 0.25).astype(np.float32))
    qat = _bn_model()
    qat.calibrate([images[16:24]])
    model = distributed(qat) if world > 1 else qat
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    qat.train()
    for b in (0, 1):
        batch = images[8 * b:8 * b + 8][:rows]
        opt.zero_grad()
        model(batch.chunk(world)[rank]).pow(2).mean().backward()
        opt.step()
    state = {n.replace(".", "_"): t.detach().numpy() for n, t in qat.state_dict().items()
             if n.endswith(("running_mean", "running_var", "weight"))}
    np.savez(f"{out}-rank{rank}.npz" if world > 1 else f"{out}.npz", **state)
    if world > 1:
        save_checkpoint(f"{out}.ckpt", model, step=2)
        dist.destroy_process_group()


def test_build_key_qat_nproc_reaches_the_qat_and_is_validated(tmp_path, monkeypatch, capsys):
    """``calibration_parameters: qat_nproc`` goes to the QAT as ``nproc`` (the QAT itself is
    stubbed: the processes are what the tests above run); 0 is a coded configuration error."""
    import yaml

    from npuflow.build.config import parse_config
    from npuflow.cli.app import main
    from tests.unit.test_build_config import BASE, _conv_model

    conf = yaml.safe_load(yaml.safe_dump(BASE))
    conf["calibration_parameters"]["qat_nproc"] = 0
    with pytest.raises(NpuflowError) as err:
        parse_config(conf, base_dir=str(tmp_path))
    assert err.value.code == "NPF_BUILD_BAD_VALUE" and "qat_nproc" in err.value.message

    _conv_model(tmp_path / "m.onnx")
    (tmp_path / "calib").mkdir()
    for i in range(2):
        np.full((1, 3, 8, 8), 16 * i, np.uint8).tofile(tmp_path / "calib" / f"{i}.bgr")
    conf["input_parameters"]["input_type_rt"] = "bgr"
    conf["calibration_parameters"].update(qat_epochs=1, qat_nproc=2)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(conf))
    seen = {}

    def stub(*args, **kwargs):
        seen.update(kwargs)
        raise NpuflowError("NPF_QAT_BAD_BUDGET", reason="stub")

    monkeypatch.setattr(onnx_qat, "qat_onnx", stub)
    assert main(["build", str(tmp_path / "c.yaml")]) == 2 and "stub" in capsys.readouterr().err
    assert seen["nproc"] == 2 and seen["epochs"] == 1
