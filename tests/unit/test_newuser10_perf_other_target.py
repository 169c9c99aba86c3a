"""``npuflow perf MODEL.npuf -t OTHER``: the estimate says that it costs another target's partition.

Round 10: the MNIST-like ``.npuf`` compiled for DPUCZDX8G_ISA1_B4096 and estimated with ``-t cpu-int8``
printed "Model Performance Summary: m on cpu-int8" with one CPU subgraph of 0 OPs and nothing saying the
file was compiled for the DPU, while ``run`` and ``bench`` with the same ``-t`` refuse the file
(``NPF_RUNTIME_TARGET_MISMATCH``).  The what-if stays (the option costs a partition on another target's
figures), now with a note naming the compiled target and how to estimate what the other would run.
"""

from __future__ import annotations

import numpy as np

import npuflow
from npuflow.perf.model_perf import perf_compiled

DPU = "DPUCZDX8G_ISA1_B4096"


def test_perf_with_another_target_notes_the_compiled_one(models):
    rng = np.random.default_rng(0)
    q = npuflow.quantize(str(models.mnist_cnn()), [{"input": rng.random((1, 1, 28, 28), dtype=np.float32)}
                                                   for _ in range(2)], DPU)
    compiled = npuflow.compile(q.model, DPU)
    other = perf_compiled(compiled, "cpu-int8", measure_cpu=False)
    assert any(f"compiled for {DPU}: that target's partition is costed with cpu-int8's figures" in n
               and "-t cpu-int8" in n for n in other.notes), other.notes
    for same in (perf_compiled(compiled, measure_cpu=False), perf_compiled(compiled, DPU, measure_cpu=False)):
        assert not any("compiled for" in n for n in same.notes), same.notes
