"""Wall times of the scale-out paths with 1 and N workers (docs/scale-out.md).

* sensitivity analysis and the mixed-precision search on PP-OCR's text-direction classifier
  (ch_ppocr_mobile_v2.0_cls, 48x192 text lines, DPUCZDX8G_ISA1_B4096);
* sharded calibration of PP-OCRv4 rec (48x320 lines; percentile histograms on cpu-int8): the
  calibration pass of ``npuflow.quantize`` alone (worker start included) and the whole call;
* one QAT epoch of the MNIST CNN (B4096, 4,096 digits, global batch 32, observers active) in one
  process and in N gloo DDP processes (``npuflow.torch.qat.distributed``), one torch thread each.

Every parallel result is checked against the serial one (equal reports, equal scales).
``python benchmarks/bench_scaleout.py --workers 1 2``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.datasets import ocr_lines  # noqa: E402
from npuflow.analyze import mixed_precision, sensitivity  # noqa: E402
from npuflow.quant import quantize  # noqa: E402
from tests import fixture_models  # noqa: E402

DPU = "DPUCZDX8G_ISA1_B4096"


def cls_lines(n: int) -> list[dict]:
    """Text lines cut to the classifier's 48x192 input."""
    lines, _ = ocr_lines("calib", n)
    return [{"x": s["x"][..., :192].copy()} for s in lines]


def sweeps(workers: list[int], n_calib: int, n_feeds: int) -> list[str]:
    lines = cls_lines(n_calib + n_feeds)
    q = quantize(str(fixture_models.ppocr_cls()), lines[:n_calib], DPU, input_shapes={"x": [1, 3, 48, 192]},
                 config={"min_output_cosine": 0})
    feeds = lines[n_calib:]
    rows, first_sens, first_mp = [], None, None
    target = None
    for w in workers:
        t = time.perf_counter()
        rep = sensitivity.analyze(q, feeds, workers=w)
        t_sens = time.perf_counter() - t
        first_sens = first_sens or asdict(rep)
        assert asdict(rep) == first_sens, "parallel sensitivity differs from serial"
        target = target or rep.quantized_score + 0.5 * (1.0 - rep.quantized_score)
        t = time.perf_counter()
        mp = mixed_precision.search(q, feeds, min_similarity=target, workers=w)
        t_mp = time.perf_counter() - t
        first_mp = first_mp or mp.summary()
        assert mp.summary() == first_mp, "parallel mixed precision differs from serial"
        rows.append(f"| PP-OCR cls sensitivity ({len(rep.layers)} layers x 2 variants, {n_feeds} feeds) | {w} | "
                    f"{t_sens:.1f} |")
        rows.append(f"| PP-OCR cls mixed precision ({mp.evaluations} evaluations + sensitivity) | {w} | {t_mp:.1f} |")
        print(rows[-2], rows[-1], sep="\n", flush=True)
    return rows


def calibration(workers: list[int], n: int) -> list[str]:
    import npuflow.quant.pipeline as pipeline

    lines, _ = ocr_lines("calib", n)
    spent: list[float] = []
    collect = pipeline.collect

    def timed(*args, **kwargs):  # the calibration pass alone, pool start included
        t = time.perf_counter()
        out = collect(*args, **kwargs)
        spent.append(time.perf_counter() - t)
        return out

    pipeline.collect = timed
    rows, first = [], None
    for w in workers:
        t = time.perf_counter()
        q = quantize(str(fixture_models.ppocr_rec()), lines, "cpu-int8", input_shapes={"x": [1, 3, 48, 320]},
                     config={"include_bias_corr": False, "percentile_candidates": [], "min_output_cosine": 0,
                             "calib_workers": w})
        total = time.perf_counter() - t
        scales = {k: (p.scale.tobytes(), p.zero_point.tobytes()) for k, p in q.quant_params.items()}
        first = first or scales
        assert scales == first, "sharded calibration gives other scales"
        rows.append(f"| PP-OCRv4 rec calibration pass ({n} lines, cpu-int8; whole quantize {total:.1f} s) | {w} | "
                    f"{spent[-1]:.1f} |")
        print(rows[-1], flush=True)
    pipeline.collect = collect
    return rows


def qat_epoch(rank: int, world: int, init: str, result: str, frozen: bool) -> None:
    """One epoch on rank ``rank`` of ``world``; rank 0 writes the wall time of the loop.
    ``frozen``: observers calibrated on the first batch and frozen (no gathers during the epoch)."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from benchmarks.datasets import mnist
    from npuflow.torch import prepare_qat
    from npuflow.torch.qat import distributed

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    samples, labels = mnist("eval", 4096)
    images = torch.from_numpy(np.concatenate([s["input"] for s in samples]))
    targets = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    qat = prepare_qat(fixture_models.mnist_torch(), torch.zeros(1, 1, 28, 28), DPU)
    model = distributed(qat) if world > 1 else qat
    if frozen:
        qat.calibrate([images[:32].chunk(world)[rank]])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    t = time.perf_counter()
    for b in range(0, len(images), 32):
        opt.zero_grad()
        F.cross_entropy(model(images[b:b + 32].chunk(world)[rank]), targets[b:b + 32].chunk(world)[rank]).backward()
        opt.step()
    if rank == 0:
        Path(result).write_text(f"{time.perf_counter() - t:.2f}")
    if world > 1:
        dist.destroy_process_group()


def qat(workers: list[int]) -> list[str]:
    import tempfile

    import torch

    rows = []
    for frozen in (False, True):
        for w in workers:
            with tempfile.TemporaryDirectory() as tmp:
                args = (w, f"{tmp}/init", f"{tmp}/result", frozen)
                if w == 1:
                    qat_epoch(0, *args)
                else:
                    torch.multiprocessing.spawn(qat_epoch, args=args, nprocs=w)
                state = "frozen after calibration" if frozen else "observing"
                rows.append(f"| MNIST CNN QAT epoch (4,096 digits, batch 32, B4096, observers {state}) | {w} | "
                            f"{Path(args[2]).read_text()} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calib", type=int, default=64, help="calibration lines (rec)")
    ap.add_argument("--feeds", type=int, default=8, help="evaluation lines per variant (cls)")
    ap.add_argument("--only", choices=["sweeps", "calibration", "qat"], nargs="+",
                    default=["sweeps", "calibration", "qat"])
    args = ap.parse_args()
    parts = {"sweeps": lambda: sweeps(args.workers, 16, args.feeds),
             "calibration": lambda: calibration(args.workers, args.calib), "qat": lambda: qat(args.workers)}
    rows = [row for name in args.only for row in parts[name]()]
    print("\n| task | workers | wall s |\n| --- | ---: | ---: |\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
