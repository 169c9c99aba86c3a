"""Single-op A/B (issue 19): one hard-swish of a [1, 16, 24, 96] uint8 tensor (PP-OCR cls's first
scales) as npuflow's byte table (``Cast``, ``Reshape``, ``GatherElements``, ``Reshape``) against
the float form ``fused_tables.float_form`` writes (``DequantizeLinear``, ``HardSwish``,
``QuantizeLinear``), one thread, interleaved rounds of CPU time; the two outputs are checked equal."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from npuflow.runtime import fused_tables  # noqa: E402

SX, ZX, SY, ZY = 0.06605391949415207, 107, 0.03976715728640556, 9
SHAPE = [1, 16, 24, 96]


def _session(nodes: list, inits: list) -> ort.InferenceSession:
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.UINT8, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, SHAPE)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main(rounds: int = 30, runs: int = 200) -> None:
    x = (np.arange(256) - ZX) * np.float32(SX)
    table = np.clip(np.rint(x * np.clip(x / 6 + .5, 0, 1) / np.float32(SY)) + ZY, 0, 255).astype(np.uint8)
    lookup = _session([helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32),
                       helper.make_node("Reshape", ["i", "m1"], ["f"]),
                       helper.make_node("GatherElements", ["tab", "f"], ["r"], axis=0),
                       helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["r", "s"], ["y"])],
                      [numpy_helper.from_array(table, "tab"), numpy_helper.from_array(np.array([-1], np.int64), "m1")])
    scales = [numpy_helper.from_array(v, n) for v, n in (
        (np.float32(SX), "sx"), (np.uint8(ZX), "zx"), (np.float32(SY), "sy"), (np.uint8(ZY), "zy"))]
    sessions = {"table": lookup, "float": _session(fused_tables._form_nodes(), scales)}
    feed = {"x": np.random.default_rng(0).integers(0, 256, SHAPE).astype(np.uint8)}
    assert np.array_equal(lookup.run(None, feed)[0], sessions["float"].run(None, feed)[0])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        for name in (list(sessions) if r % 2 else list(sessions)[::-1]):
            start = time.process_time()
            for _ in range(runs):
                sessions[name].run(None, feed)
            times[name].append((time.process_time() - start) / runs * 1e6)
    for name, t in times.items():
        print(f"{name}: median {np.median(t):.1f} us (p10-p90 {np.percentile(t, 10):.1f}-{np.percentile(t, 90):.1f})")
    ratios = [a / b for a, b in zip(times["table"], times["float"])]
    print(f"table / float per round: median {np.median(ratios):.3f}, float faster in "
          f"{sum(q > 1 for q in ratios)} of {rounds}")


if __name__ == "__main__":
    main()
