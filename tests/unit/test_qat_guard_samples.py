"""How many samples the QAT guard holds out (``qat_onnx(..., guard_samples=N)``, ``npuflow qat
--guard-samples N``): the default split is unchanged, N holds out exactly the last N samples for
the start-or-trained decision and trains on the rest (one process or several), and a value that
is not a positive integer leaving a training sample is a coded error."""
from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.errors import NpuflowError
from npuflow.torch.onnx_qat import _split, qat_onnx
from tests import fixture_models

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def ptq(mnist_npy_folder):
    """The PTQ start of the MNIST CNN on the 24 digits, shared by the runs below."""
    return npuflow.quantize(fixture_models.mnist_cnn(), str(mnist_npy_folder), DPU, {})


def _samples(n: int) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full((1,), i, np.float32)} for i in range(n)]


def _ids(samples: list[dict[str, np.ndarray]]) -> list[int]:
    return [int(s["x"][0]) for s in samples]


@pytest.mark.parametrize("n, held", [(5, 0), (24, 4), (400, 64), (4000, 64)])
def test_default_split_is_unchanged(n, held):
    train, guard, got = _split(_samples(n))
    assert got == held and len(train) == n - held
    assert _ids(guard) == (list(range(n - held, n)) if held else list(range(min(n, 64))))


@pytest.mark.parametrize("n, guard_samples", [(24, 10), (2304, 256), (5, 1), (5, 4)])
def test_guard_samples_holds_out_exactly_the_last_n(n, guard_samples):
    train, guard, held = _split(_samples(n), guard_samples)
    assert held == guard_samples
    assert _ids(train) == list(range(n - guard_samples)) and _ids(guard) == list(range(n - guard_samples, n))


def test_qat_trains_on_the_rest_and_the_guard_judges_on_n(ptq, mnist_npy_folder):
    kw = dict(epochs=1, batch=4, augment=False, ptq=ptq)
    default = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), **kw)
    larger = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), guard_samples=12, **kw)
    assert default.report["eval_samples"] == 4 and default.steps == 5  # 20 training digits, batch 4
    assert larger.report["eval_samples"] == 12 and larger.report["eval_held_out"] is True
    assert larger.report["samples"] == 24 and larger.steps == 3  # 12 training digits, batch 4


def test_two_processes_train_on_the_same_share(ptq, mnist_npy_folder):
    kw = dict(epochs=1, batch=4, augment=False, ptq=ptq, guard_samples=12)
    one = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), **kw)
    two = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), nproc=2, **kw)
    assert two.report["processes"] == 2 and two.steps == one.steps == 3
    assert two.report["eval_samples"] == 12
    np.testing.assert_allclose(two.losses, one.losses, rtol=1e-3)


@pytest.mark.parametrize("bad", [0, 24, 1.5, True])
def test_bad_guard_samples_is_a_coded_error(ptq, mnist_npy_folder, bad):
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq=ptq, guard_samples=bad)
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "guard_samples" in str(e.value)


@pytest.mark.parametrize("bad", ["24"])
def test_cli_bad_guard_samples_is_a_coded_error(cli, mnist_npy_folder, tmp_path, bad):
    res = cli("qat", fixture_models.mnist_cnn(), "-t", DPU, "--data", mnist_npy_folder, "--epochs", "1",
              "--guard-samples", bad, "-o", tmp_path / "out")
    assert res.returncode == 2
    assert "ERROR [NPF_QAT_BAD_OPTION]" in res.stderr and "guard_samples" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def test_after_restarts_the_guard_judges_on_the_samples_that_chose_the_start(mnist_npy_folder):
    """A PTQ start chosen among fast-finetune restarts on the last 8 digits (select_on): the guard
    holds out those 8, trains on the other 16 and scores the start as the restarts scored it (one
    held-out set, one measure); another guard_samples is a coded error, before any PTQ runs."""
    restarts = {"include_bias_corr": False,
                "fast_finetune": {"method": "adaround", "iters": 30, "restarts": 2, "select_on": 8}}
    result = qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, batch=4, augment=False,
                      ptq_config=restarts)
    info = result.ptq.info["algorithms"]["fast_finetune"]
    kept = next(r for r in info["restarts"] if r["seed"] == info["chosen_seed"])
    assert info["selected_on"] == 8 and result.report["eval_samples"] == 8 and result.steps == 4
    assert result.start_score == pytest.approx(kept["score"], abs=1e-9)
    with pytest.raises(NpuflowError) as e:
        qat_onnx(fixture_models.mnist_cnn(), DPU, str(mnist_npy_folder), epochs=1, ptq_config=restarts,
                 guard_samples=4)
    assert e.value.code == "NPF_QAT_BAD_OPTION" and "select_on" in str(e.value)
