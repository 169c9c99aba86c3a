"""The estimator on real third-party models, through the checker's placement."""

from __future__ import annotations

import pytest

from npuflow.perf import perf

pytestmark = pytest.mark.models

B4096 = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def lite0(models):
    return perf(models.efficientnet_lite0(), B4096)


def test_efficientnet_lite0_depthwise_layers_reach_a_small_share_of_peak(lite0):
    dw = [layer for layer in lite0.layers if layer.engine == "depthwise"]
    conv = [layer for layer in lite0.layers if layer.engine == "conv" and layer.macs > 1_000_000]
    assert dw and conv
    assert max(layer.utilisation for layer in dw) <= 1 / 16
    assert sum(layer.macs for layer in conv) / sum(layer.cycles for layer in conv) > \
        sum(layer.macs for layer in dw) / sum(layer.cycles for layer in dw)
    assert lite0.fps_single_core < lite0.fps_all_cores <= 3 * lite0.fps_single_core


def test_yolov8n_cpu_parts_are_measured_and_transfers_counted(models):
    r = perf(models.yolov8n(), B4096, {"images": [1, 3, 320, 320]})
    cpu = [s for s in r.subgraphs if s.device == "CPU"]
    assert cpu and all("host CPU" in s.source for s in cpu)
    assert r.cpu_ms > 0 and r.transfers and r.transfer_ms > 0
    assert r.latency_ms == pytest.approx(r.npu_ms + r.cpu_ms + r.transfer_ms)
    assert r.ddr_mb_per_frame * 1e6 == pytest.approx(
        r.loaded_bytes_per_frame + r.stored_bytes_per_frame + sum(t.bytes for t in r.transfers))
