"""The bundled end-to-end demo: check -> build -> run -> perf estimate on the MNIST CNN.

    pip install -e . && python examples/demo.py

Uses only npuflow's core dependencies.  Steps, each timed:

1. ``npuflow.check``: which nodes the DPU (DPUCZDX8G_ISA1_B4096) runs, which stay on the CPU;
2. ``npuflow.build("examples/mnist_dpu.yaml")``: preprocessing (uint8 grey -> normalised float)
   inserted into the model, calibration on 100 digits, quantization, compilation to ``.npuf``;
3. accuracy on the 1,000 labelled digits (``--eval N`` for fewer) of the float model, the
   quantized ONNX model (ONNX Runtime) and the compiled model (npuflow's integer runtime), all
   fed the same uint8 images;
4. the static performance estimate (``npuflow perf``) of the compiled model on the DPU.

``examples/make_example_data.py`` records how the model and the digits were made.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing, too

import npuflow  # noqa: E402
from npuflow.build import load_config  # noqa: E402
from npuflow.perf.model_perf import perf  # noqa: E402

CONFIG = HERE / "mnist_dpu.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="output folder (default: the config's working_dir, examples/mnist_dpu_output)")
    parser.add_argument("--eval", type=int, default=1000, help="number of evaluation digits (max 1000)")
    args = parser.parse_args(argv)

    config = load_config(CONFIG)
    if args.workdir is not None:
        mp = config.model_parameters.model_copy(update={"working_dir": str(args.workdir.resolve())})
        config = config.model_copy(update={"model_parameters": mp})
    images = np.load(HERE / "mnist" / "eval_images.npy")[: args.eval]
    labels = np.load(HERE / "mnist" / "eval_labels.npy")[: args.eval]
    timings: dict[str, float] = {}
    march = config.model_parameters.march

    t0 = time.perf_counter()
    report = npuflow.check(str(config.path(config.model_parameters.onnx_model)), march)
    timings["check"] = time.perf_counter() - t0
    s = report.summary
    print(f"[check]  {s['npu_nodes']} of {s['nodes']} nodes on the {report.target.device_label}, "
          f"{s['cpu_nodes']} on the CPU, {s['npu_subgraphs']} accelerator subgraph(s)")

    t0 = time.perf_counter()
    result = npuflow.build(config)
    timings["build"] = time.perf_counter() - t0
    files = result.files
    print(f"[build]  {files['compiled']} ({files['compiled'].stat().st_size / 1024:.0f} KiB) and "
          f"{len(files) - 1} other artefacts in {files['compiled'].parent}")

    name = result.inputs[0].name
    feeds = [{name: img[None]} for img in images]  # uint8 1x1x28x28: what the device feeds
    accuracy: dict[str, float] = {}
    for label, path in (("float", files["original"]), ("quantized", files["quantized"])):
        run = _onnx_runner(path)
        t0 = time.perf_counter()
        accuracy[label] = _accuracy(run, feeds, labels)
        timings[f"run {label}"] = time.perf_counter() - t0
    from npuflow.runtime import Session

    session = Session(files["compiled"])
    t0 = time.perf_counter()
    accuracy["compiled"] = _accuracy(lambda f: next(iter(session.run(f).values())), feeds, labels)
    timings["run compiled"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    estimate = perf(files["compiled"])
    timings["perf estimate"] = time.perf_counter() - t0
    print(f"[perf]   estimated {estimate.latency_ms:.3f} ms per frame on one core "
          f"({estimate.fps_single_core:.0f} fps; {estimate.fps_all_cores:.0f} fps on {estimate.cores} cores), "
          f"{estimate.ddr_mb_per_frame:.2f} MB DDR traffic per frame")

    print()
    print(f"accuracy on {len(labels)} MNIST digits ({march}):")
    for label, acc in accuracy.items():
        print(f"  {label:<10} {100 * acc:6.2f} %")
    print("time per step:")
    for step, seconds in timings.items():
        print(f"  {step:<14} {seconds:7.2f} s")
    print(f"demo finished: float {100 * accuracy['float']:.2f} %, quantized {100 * accuracy['quantized']:.2f} %, "
          f"compiled {100 * accuracy['compiled']:.2f} %")
    return 0


def _onnx_runner(path: Path) -> Callable[[dict], np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # bit-exact QDQ semantics
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda feed: sess.run(None, feed)[0]


def _accuracy(run: Callable[[dict], np.ndarray], feeds: list[dict], labels: np.ndarray) -> float:
    predictions = np.array([int(np.argmax(run(f))) for f in feeds])
    return float(np.mean(predictions == labels))


if __name__ == "__main__":
    sys.exit(main())
