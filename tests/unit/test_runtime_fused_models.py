"""Fused runs equal the op-by-op kernels bit for bit on real models, every output.

The synthetic cases of ``test_runtime_fused.py`` pin each fused form; these run whole networks
whose ops meet them all together (YOLOv8n: SiLU tables on float scales, DPU/CPU boundaries
spliced into one program;
PP-OCRv4 det: transposed convolutions and global averages of its attention blocks; the MNIST
CNN), compiled from npuflow's own quantization, on power-of-two and float-scale targets.
"""

from __future__ import annotations

import numpy as np
import pytest

import npuflow
from npuflow.runtime import fused, fused_qlinear, joined
from tests import fixture_models

MODELS = {
    "mnist": (fixture_models.mnist_cnn, "input", [1, 1, 28, 28]),
    "yolov8n": (fixture_models.yolov8n, "images", [1, 3, 320, 320]),
    "ppocr_det": (fixture_models.ppocr_det, "x", [1, 3, 128, 128]),
}


@pytest.mark.parametrize("key,target", [("mnist", "DPUCZDX8G_ISA1_B4096"), ("mnist", "cpu-int8"),
                                        ("yolov8n", "DPUCZDX8G_ISA1_B4096"), ("yolov8n", "bernoulli2"),
                                        ("yolov8n", "cpu-int8"), ("ppocr_det", "bernoulli2"),
                                        ("ppocr_det", "DPUCZDX8G_ISA1_B4096"),
                                        ("ppocr_det", "cpu-int8")])
def test_fused_equals_kernels_on_real_models(key, target):
    fetch, name, shape = MODELS[key]
    rng = np.random.default_rng(0)
    samples = [{name: rng.uniform(-1 if key == "ppocr_det" else 0, 1, shape).astype(np.float32)} for _ in range(4)]
    quantized = npuflow.quantize(str(fetch()), samples, target=target, input_shapes={name: shape})
    compiled = npuflow.compile(quantized.model, target)
    fast, ref = npuflow.Session(compiled), npuflow.Session(compiled, fuse=False)
    for x in samples[:2]:
        a, b = fast.run(x), ref.run(x)
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), (k, int(np.sum(a[k] != b[k])))
    reasons = [why for ex in fast._executors if hasattr(ex, "plan") for why in ex.plan.reasons.values()]
    runs = sum(isinstance(it, fused.FusedRun) for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items)
    assert runs >= 1
    if key == "ppocr_det":  # every op of the detector is one fused run now
        assert runs == 1 and not reasons, reasons
    if key == "yolov8n" and target.startswith("DPU"):
        # SiLU's sigmoids are CPU subgraphs on the DPU (100 subgraphs, 50 on the DPU, since 4607682 runs
        # the C2f splits as slices on the DPU): their tables are spliced into the integer programs,
        # which then run as one fused run up to the box decoding's softmax
        steps = fast._programs[0].steps
        assert len(compiled.subgraphs) >= 100 and len(steps) <= 6 \
            and len(steps[0].indices) >= len(compiled.subgraphs) - 5, [s.indices for s in steps]
        events = []
        fast.add_listener(events.append)
        fast.run(samples[0])
        # a joined step (runtime/joined.py; here the last two CPU subgraphs) runs its parts for listeners
        assert [e.subgraphs for e in events] == [p.indices for s in steps for p in
                                                 (s.executor.parts if isinstance(s.executor, joined.Joined) else [s])]
        first = steps[0].executor.parts[0] if isinstance(steps[0].executor, joined.Joined) else steps[0]
        assert events[0].name == "+".join(sg.name for sg in compiled.subgraphs[:len(first.indices)])
    if target == "bernoulli2":  # every dense fixed-point convolution on QLinearConv, whole or split by channels
        ops = [op for ex in fast._executors if hasattr(ex, "plan") for op in ex._ops]
        dense = [op for op in ops if op["op"] == "conv" and op["attrs"].get("group", 1) == 1
                 and op["attrs"]["epilogue"]["mode"] == "fixed"]
        nodes = [n.op_type for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
                 if isinstance(it, fused.FusedRun) for n in it.graph().nodes]
        assert dense and nodes.count("QLinearConv") >= len(dense), (len(dense), nodes.count("QLinearConv"))
        if key == "ppocr_det":  # the FPN's float adds: a Sum of two DequantizeLinear, one QuantizeLinear
            writer = {o: n for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
                      if isinstance(it, fused.FusedRun) for n in it.graph().nodes for o in n.output}
            sums = [n for n in writer.values() if n.op_type == "QuantizeLinear" and writer[n.input[0]].op_type == "Sum"]
            assert len(sums) >= 5, len(sums)  # 7 here; before: none (a division, rounding and clamp each)
            # so the six upsamplings of the FPN and head read bytes: uint8 Resize (session 29: 5 Expand of float codes)
            assert (nodes.count("Expand"), nodes.count("Resize")) == (0, 6), nodes.count("Resize")
    if key == "ppocr_det" and target.startswith("DPU"):  # the neck's 3x3 layers of 96 channels: int8 GEMMs
        heavy = [op for ex in fast._executors if hasattr(ex, "plan") for op in ex._ops
                 if op["op"] == "conv" and op["attrs"]["epilogue"]["mode"] == "shift"
                 and fused_qlinear.heavy(np.asarray(ex._blob(op["blobs"]["w"])), op["attrs"].get("group", 1))]
        kernels = [[a.ints for a in n.attribute if a.name == "kernel_shape"][0]
                   for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
                   if isinstance(it, fused.FusedRun) for n in it.graph().nodes if n.op_type == "QLinearConv"]
        wide = [op for op in heavy if list(op["attrs"]["kernel"]) == [3, 3]]
        assert len(wide) >= 4 and kernels.count([3, 3]) >= len(wide), (len(wide), kernels)
    if target == "cpu-int8" and key != "mnist":  # uint8: the convolutions on ONNX Runtime's integer kernels
        kinds = {n.op_type for ex in fast._executors if hasattr(ex, "plan") for it in ex.plan.items
                 if isinstance(it, fused.FusedRun) for n in it.graph().nodes}
        assert "QLinearConv" in kinds and "Conv" not in kinds, kinds
