"""A model compiled for a user's own target file (``-t my_dpu.yaml``) carries that description.

Before: ``npuflow perf MODEL.npuf`` and ``npuflow bench MODEL.npuf`` (after its measurement) failed
with ``NPF_TARGET_UNKNOWN unknown target 'MyDPU'``: the file recorded only the target's name.
"""

from __future__ import annotations

import npuflow
from npuflow.compiler import CompiledModel
from npuflow.perf.model_perf import perf
from npuflow.targets import DATA_DIR, load_target

from .quant_nets import samples, two_conv_net


def test_npuf_for_a_target_file_is_estimated_on_it(tmp_path):
    text = (DATA_DIR / "DPUCZDX8G_ISA1_B4096.yaml").read_text()
    mine = tmp_path / "my_dpu.yaml"
    mine.write_text(text.replace("name: DPUCZDX8G_ISA1_B4096", "name: MyDPU").replace("clock_mhz: 281", "clock_mhz: 70.25"))
    qm = npuflow.quantize(two_conv_net(), samples((1, 3, 6, 6), n=4), "DPUCZDX8G_ISA1_B4096")
    path = npuflow.compile(qm, load_target(mine)).save(tmp_path / "m.npuf")
    compiled = CompiledModel.load(path)
    assert compiled.target() == load_target(mine)
    slow = perf(path, measure_cpu=False)
    fast = perf(path, "DPUCZDX8G_ISA1_B4096", measure_cpu=False)
    assert slow.npu_ms > fast.npu_ms  # a quarter of the clock
    bundled = npuflow.compile(qm, "DPUCZDX8G_ISA1_B4096")
    assert "spec" not in bundled.manifest["target"] and bundled.target().name == "DPUCZDX8G_ISA1_B4096"
