"""What ``check`` places on the accelerator, ``compile`` lowers, for models loaded with their dynamic
dimensions (no ``input_shapes``: what ``quantize`` gets when the user gives no shape).

The quantizer then optimises the one dynamic graph and freezes views of it at the first sample's
shape: ``q.float_model`` (what ``check`` judges) and ``q.model`` (what ``compile`` lowers).  A target
rewrite that needs a node's size used to run on the frozen float view only, inside check: PP-OCRv4
rec's last ``AveragePool`` (3 x 2, stride 3 x 2, over 3 rows at height 48) was on the NPU in check and
on the CPU in the compiled bernoulli2 model, 22 subgraphs against 20 for the fixed-shape load.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import npuflow
from npuflow.graph import is_qdq
from tests.models.test_check_compile_agree import MODELS, _samples

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_placement_agreement import _sides, compiled_devices  # noqa: E402

pytestmark = pytest.mark.models

TARGETS = ("DPUCZDX8G_ISA1_B4096", "bernoulli2", "cpu-int8")
KEYS = ("ppocr_rec", "ppocr_det", "ppocr_cls", "yolov8n", "mnist")


def _quantized(models, key: str, target: str, fixed: bool) -> npuflow.QuantizedModel:
    source, name, shape = MODELS[key]
    calib, _ = _samples(key)
    return npuflow.quantize(str(getattr(models, source)()), calib, target=target,
                            input_shapes={name: shape} if fixed else None, warn=False)


def _compiled_sides(q: npuflow.QuantizedModel, target: str) -> dict[str, str]:
    """Compute node -> ``ACC``/``CPU`` in the compiled ``q.model`` (Q/DQ steps left out)."""
    qdq = {n.name for n in q.model.graph.node if is_qdq(n)}
    return {n: side for n, side in compiled_devices(npuflow.compile(q.model, target)).items() if n not in qdq}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("key", KEYS)
def test_check_of_a_dynamic_load_places_as_compile_lowers(models, key, target):
    q = _quantized(models, key, target, fixed=False)
    checked = _sides(npuflow.check(q.float_model, target))
    compiled = _compiled_sides(q, target)
    common = [n for n in checked if n in compiled]
    assert len(common) > len(checked) // 2, (len(common), len(checked))
    assert [(n, checked[n], compiled[n]) for n in common if checked[n] != compiled[n]] == []


def test_ppocr_rec_on_bernoulli2_compiles_alike_loaded_with_dynamic_and_fixed_shapes(models):
    """The pool's stride rewrite reaches the dynamic graph (as a stride-1 pool and a 1 x 1 subsampling,
    exact at every height), so both loads compile to the same 20 subgraphs, 10 on the BPU."""
    runs = {fixed: _quantized(models, "ppocr_rec", "bernoulli2", fixed) for fixed in (False, True)}
    sides = {fixed: _compiled_sides(q, "bernoulli2") for fixed, q in runs.items()}
    pool = "p2o.AveragePool.0"
    assert sides[False][pool] == sides[True][pool] == "ACC"
    assert {n: s for n, s in sides[False].items() if sides[True].get(n, s) != s} == {}
    counts = {fixed: len(npuflow.compile(q.model, "bernoulli2").subgraphs) for fixed, q in runs.items()}
    assert counts[False] == counts[True], counts
    stride1 = [n for n in runs[False].dynamic_model.graph.node if n.name == f"{pool}/stride1"]
    assert [n.op_type for n in stride1] == ["AveragePool"]
