"""Shared check for compiler tests: compile, run with a dump, compare with ONNX Runtime."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

import npuflow
from npuflow import ort_kernels
from npuflow.analyze.compare import similarity
from npuflow.compiler import foreign
from npuflow.model import load
from npuflow.targets import load_target
from tests.qdq_builder import ort_values
from tests.unit.quant_nets import run, samples


def integer_tensors(compiled) -> list[str]:
    """Every integer tensor an accelerator subgraph writes (the dump names)."""
    names = []
    for sg in compiled.subgraphs:
        if sg.on_accelerator:
            for op in sg.ops:
                names += [o for o in op["outputs"] if compiled.manifest["tensors"][o]["dtype"] != "float32"]
    return names


def compare_with_ort(model, feeds: dict, target: str, levels=("disable",)) -> dict[str, int]:
    """Max |difference| in LSB per integer tensor of the accelerator subgraphs (and outputs)."""
    compiled = npuflow.compile(model, target)
    sess = npuflow.Session(compiled)
    with tempfile.TemporaryDirectory() as d:
        outs = sess.run(feeds, dump_dir=d)
        index = __import__("json").loads((Path(d) / "index.json").read_text())
        names = integer_tensors(compiled)
        assert names, "nothing ran on the accelerator"
        diffs = {}
        for level in levels:
            ref = reference_values(model, feeds, names + list(outs), target, level)
            for n in names:
                got = np.load(Path(d) / index[n])
                assert got.dtype == ref[n].dtype and got.shape == ref[n].shape, n
                diffs[f"{level}:{n}"] = int(np.abs(got.astype(np.int64) - ref[n].astype(np.int64)).max(initial=0))
    return diffs


def accelerator_ops(compiled) -> list[dict]:
    """Every op of the accelerator subgraphs, in execution order."""
    return [op for sg in compiled.subgraphs if sg.on_accelerator for op in sg.ops]


def reference_values(model, feeds: dict, names: list[str], target: str, level: str) -> dict[str, np.ndarray]:
    """ORT's values of ``names``, all from one run: of ``model`` itself, or, when the compiler's
    legalisation changes it (a quantize step after a grid-preserving op, QOperator ops split into
    QDQ, uint8 centred to int8), of the legalised model, which keeps the arithmetic ORT runs and
    holds every tensor the compiled ops read and write.

    One run: at level "all" the Q/DQ groups ORT fuses depend on the graph, so two runs compute
    other codes for the same tensor; an op fed one run's inputs and compared with another run's
    outputs differs by what the runs differ (NNCF PP-OCRv4 rec: 28 LSB on a Reshape, a copy).
    The run exposes the tensors the check compares: which tensors are graph outputs changes the
    groups ORT fuses too (an exposed int8 tensor is not moved to uint8), and a run exposing fewer
    tensors computed other codes upstream (PP-OCRv4 rec: 3 LSB on a Squeeze).  Whether the
    legalisation kept the model's meaning is the output-cosine check's question."""
    loaded = load(model)  # the compiler's own front end: normalised as it loads it
    legal = load(model)
    foreign.legalize(legal, load_target(target))
    if legal.SerializeToString() == loaded.SerializeToString():
        have = {o for n in model.graph.node for o in n.output}
        return ort_values(model, feeds, [n for n in names if n in have], level)
    return ort_values(legal, feeds, names, level)


def compare_layerwise_with_ort(model, feeds: dict, target: str, levels=("all", "disable")) -> dict[str, int]:
    """Max |difference| in LSB per integer output of every accelerator op, each op fed ORT's inputs.

    ONNX Runtime computes every tensor of the quantized model (at each graph optimisation level
    of ``levels``: "all" fuses Q/DQ groups into its integer ``QLinear*`` kernels, "disable" runs
    them in float32); each accelerator op then runs alone (``Session.run_op``) on the values ORT
    computed for its inputs, and its integer outputs are compared with ORT's codes for the same
    tensors; the result is the larger difference over the levels.  A difference here is that
    op's own arithmetic, not one carried in from earlier layers (the per-layer check of
    rknn-toolkit2's accuracy analysis and of Vitis AI's dump comparison).
    """
    compiled = npuflow.compile(model, target)
    sess = npuflow.Session(compiled)
    ops = accelerator_ops(compiled)
    assert ops, "nothing ran on the accelerator"
    tensors = compiled.manifest["tensors"]
    wanted = sorted({t for op in ops for t in [*op["inputs"], *op["outputs"]] if t not in feeds})
    diffs: dict[str, int] = {}
    for level in levels:
        ref = {**feeds, **reference_values(model, feeds, wanted, target, level)}
        for op in ops:
            outs = sess.run_op(op["name"], {t: ref[t] for t in op["inputs"]})
            for name, got in outs.items():
                if tensors[name]["dtype"] == "float32":
                    continue
                want = ref[name]
                assert got.dtype == want.dtype and got.shape == want.shape, name
                lsb = int(np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0))
                diffs[name] = max(diffs.get(name, 0), lsb)
    return diffs


def output_cosines(model, feeds: dict, target: str, levels=("all", "disable")) -> dict[str, float]:
    """Cosine similarity of each model output of the compiled model to ORT's, per level.

    Keys are ``level:output``; two all-zero outputs count as equal (1.0)."""
    outs = npuflow.Session(npuflow.compile(model, target)).run(feeds)
    result = {}
    for level in levels:
        ref = ort_values(model, feeds, list(outs), level)
        for name, got in outs.items():
            result[f"{level}:{name}"] = similarity(ref[name], got)[0]
    return result


def random_sample_npuf(model: str | Path, target: str, input_name: str, shape: list[int], count: int, path: Path,
                       low: float = -1.0) -> tuple[Path, list[dict]]:
    """``model`` quantized for ``target`` on ``count`` uniform samples in ``[low, 1)`` of ``shape`` (seed 0),
    compiled and saved at ``path``: the path and the samples (runtime memory tests load it fresh)."""
    rng = np.random.default_rng(0)
    samples = [{input_name: rng.uniform(low, 1, shape).astype(np.float32)} for _ in range(count)]
    quantized = npuflow.quantize(str(model), samples, target=target, input_shapes={input_name: list(shape)})
    npuflow.compile(quantized.model, target).save(path)
    return path, samples


def assert_one_subgraph_equal_to_ort(model, shape: list[int], target: str, device: str = "DPU") -> None:
    """Quantize ``model`` (input ``x``, output ``y``) on 8 random samples, compile it for ``target``
    and check that it is one ``device`` subgraph whose every layer and output equal ONNX Runtime's."""
    q = npuflow.quantize(model, samples(shape, n=8), target=target)
    compiled = npuflow.compile(q.model, target)
    assert [sg["device"] for sg in compiled.manifest["subgraphs"]] == [device]
    x = samples(shape, n=1, seed=3)[0]
    assert max(compare_layerwise_with_ort(q.model, {"x": x}, target).values()) == 0
    np.testing.assert_array_equal(npuflow.Session(compiled).run({"x": x})["y"], run(q.model, {"x": x})[0])


def one_accelerator_program_equal_to_ort(model, calib: list[dict], target: str, path: Path, output: str = "y"):
    """``model`` quantized for ``target`` on ``calib``, compiled, saved at ``path`` and loaded: assert it is
    one accelerator subgraph whose outputs equal ONNX Runtime's on the QDQ model for the first two samples;
    return the quantize result and the compiled model (a rewrite's end-to-end test)."""
    q = npuflow.quantize(model, calib, target, warn=False)
    compiled = npuflow.compile(q.model, target)
    assert [sg.on_accelerator for sg in compiled.subgraphs] == [True]
    session = npuflow.Session(npuflow.CompiledModel.load(compiled.save(path)))
    for feeds in calib[:2]:
        np.testing.assert_array_equal(session.run(feeds)[output], ort_values(q.model, feeds, [output])[output])
    return q, compiled


def assert_session_equals_qdq_and_op_by_op(session, quantized, compiled, calibration: list[dict], count: int,
                                           seed: int) -> None:
    """``session``'s outputs byte-equal, on ``count`` calibration samples and a rescaled, noisy copy of each,
    to ONNX Runtime on the quantizer's QDQ model with exact weights and to the op-by-op Session."""
    reference = ort.InferenceSession(ort_kernels.exact_weights(quantized.model).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
    names = [o.name for o in reference.get_outputs()]
    op_by_op = npuflow.Session(compiled, fuse=False)
    rng = np.random.default_rng(seed)
    for sample in calibration[:count]:
        (name, x), = sample.items()
        for feed in (x, (x * rng.uniform(0.5, 1.5) + rng.standard_normal(x.shape) * x.std()).astype(np.float32)):
            got = session.run({name: feed})
            want = dict(zip(names, reference.run(None, {name: feed})))
            assert all(got[k].tobytes() == want[k].tobytes() for k in want)
            assert all(got[k].tobytes() == v.tobytes() for k, v in op_by_op.run({name: feed}).items())
