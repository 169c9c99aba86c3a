"""``npuflow compare``: per-layer accumulated and single errors of a QDQ model and of a ``.npuf``
against the float model, the jump, the written report, and the dump-folder comparison."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from onnx import numpy_helper

import npuflow
from npuflow.analyze.compare import Pooled, compare, similarity
from npuflow.analyze.dumps import compare_dumps
from npuflow.errors import NpuflowError
from tests.unit.quant_nets import conv_net, samples

REPO = Path(__file__).resolve().parents[2]
DPU = "DPUCZDX8G_ISA1_B4096"


def test_similarity_is_pooled_over_samples():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50)), rng.normal(size=(2, 50))
    pooled = Pooled()
    for x, y in zip(a, b):
        pooled.add(x, y)
    cos, rel = similarity(a, b)
    assert pooled.cosine == pytest.approx(cos) and pooled.rel_error == pytest.approx(rel)
    assert cos == pytest.approx(float(a.ravel() @ b.ravel() / np.linalg.norm(a) / np.linalg.norm(b)))
    assert rel == pytest.approx(float(np.linalg.norm(b - a) / np.linalg.norm(a)))
    assert similarity(a, 2 * a) == pytest.approx((1.0, 1.0))
    assert similarity(np.zeros(3), np.zeros(3)) == (1.0, 0.0)
    assert similarity(np.zeros(3), np.ones(3))[0] == 0.0


def _damaged(target: str):
    """conv_net quantized, with conv2's int8 weights rounded to multiples of 32 (a broken layer)."""
    data = [{"x": s} for s in samples([1, 3, 8, 8], 8)]
    q = npuflow.quantize(conv_net(), data[:4], target, config={"include_bias_corr": False})
    for init in q.model.graph.initializer:
        if init.name == "w2_quantized":
            w = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array((np.round(w / 32) * 32).clip(-128, 127).astype(np.int8), init.name))
    return q, data[4:]


@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_jump_and_worst_layer_point_at_the_damaged_layer(target):
    q, data = _damaged(target)
    for quantized in (q.model, npuflow.compile(q.model, target)):
        r = compare(q.float_model, quantized, data)
        assert r.samples == 4 and r.unmatched == []
        by = {row.tensor: row for row in r.layers}
        assert r.jump is by["c2"] and r.worst(1) == [by["c2"]]
        # single: the layers after the damaged one are fed float inputs, so their own error is small
        assert by["sum"].single_rel_error < 0.3 * by["sum"].rel_error
        assert by["c2"].single_rel_error > 0.05
        assert [row.tensor for row in r.layers] == [t for t in ["x", "c1", "r1", "p1", "c2", "c3", "cat", "p1cat",
                                                                "sum", "gap", "flat", "y"] if t in by]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """The bundled example model quantized and compiled for the DPU, and 6 digits as an .npz each."""
    images = np.load(REPO / "examples/mnist/eval_images.npy")[:10].reshape(-1, 1, 1, 28, 28)
    feeds = [{"input": (im / 255.0).astype(np.float32)} for im in images]
    q = npuflow.quantize(str(REPO / "examples/mnist_cnn.onnx"), feeds[:4], DPU)
    root = tmp_path_factory.mktemp("mnist")
    paths = {"float": root / "float.onnx", "qdq": root / "quantized.onnx", "npuf": root / "model.npuf"}
    npuflow.model.save(q.float_model, paths["float"])
    npuflow.model.save(q.model, paths["qdq"])
    npuflow.compile(q.model, DPU).save(paths["npuf"])
    data = root / "data"
    data.mkdir()
    for k, f in enumerate(feeds[4:]):
        np.save(data / f"{k:02d}.npy", f["input"])
    np.savez(root / "one.npz", input=feeds[4]["input"])
    return paths, data, root


def test_npuf_equals_qdq_on_a_power_of_two_target(mnist):
    """Bit-exact integer programs: the .npuf's dequantized dump and its ops run alone give the same
    errors as ONNX Runtime on the QDQ model, layer for layer."""
    paths, data, _ = mnist
    qdq = compare(paths["float"], paths["qdq"], data, samples=4)
    npuf = compare(paths["float"], paths["npuf"], data, samples=4)
    assert qdq.kind == "qdq" and npuf.kind == "npuf" and qdq.samples == npuf.samples == 4
    rows = {r.tensor: r for r in qdq.layers}
    assert len(npuf.layers) >= 8 and npuf.unmatched == [] and qdq.unmatched == []
    for r in npuf.layers:
        assert r.cosine == pytest.approx(rows[r.tensor].cosine, abs=1e-12), r.tensor
        assert r.rel_error == pytest.approx(rows[r.tensor].rel_error, abs=1e-12), r.tensor
        if r.single_cosine is not None:
            assert r.single_rel_error == pytest.approx(rows[r.tensor].single_rel_error, abs=1e-12), r.tensor
    assert sum(r.single_cosine is not None for r in npuf.layers) >= 8
    assert npuf.jump.tensor == qdq.jump.tensor
    assert 0.999 < rows["logits"].cosine < 1.0


def test_report_files(mnist, tmp_path):
    paths, data, _ = mnist
    r = compare(paths["float"], paths["qdq"], data, samples=2)
    files = r.write(tmp_path)
    doc = json.loads(files["json"].read_text())
    assert doc["jump"] == r.jump.tensor and len(doc["layers"]) == len(r.layers)
    lines = files["csv"].read_text().splitlines()
    assert lines[0].startswith("index,tensor,node,op_type,compared,cosine,rel_error") and len(lines) == len(r.layers) + 1
    page = files["html"].read_text()
    assert page.count("<svg") == 2 and f"jump: {r.jump.tensor}" in page


def test_cli_model_mode(mnist, cli, tmp_path):
    paths, _, root = mnist
    res = cli("compare", paths["float"], paths["npuf"], "--data", root / "one.npz", "--top", "3", "-o", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "<- jump" in res.stdout and "the accumulated error jumps at" in res.stdout
    assert {p.name for p in tmp_path.iterdir()} == {"compare.json", "compare.csv", "compare.html"}
    assert json.loads((tmp_path / "compare.json").read_text())["samples"] == 1
    res = cli("compare", paths["float"], paths["qdq"])
    assert res.returncode == 2 and "NPF_COMPARE_USAGE" in res.stderr and "Traceback" not in res.stderr


def test_unrelated_models_are_refused(mnist):
    paths, data, _ = mnist
    data_x = [{"x": s} for s in samples([1, 3, 8, 8], 1)]
    q = npuflow.quantize(conv_net(), data_x, DPU)
    with pytest.raises(NpuflowError) as e:
        compare(paths["float"], q.model, data)
    assert e.value.code == "NPF_COMPARE_INPUTS_DIFFER"  # its inputs are checked before any tensor name


def test_models_without_a_common_tensor_name_are_refused():
    """Same inputs, every other tensor renamed and the input not quantized (a float model given as
    the quantized one): nothing can be matched layer by layer."""
    renamed = conv_net()
    names = {o: f"z_{o}" for n in renamed.graph.node for o in n.output}
    for node in renamed.graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names[o] for o in node.output]
    for out in renamed.graph.output:
        out.name = names[out.name]
    with pytest.raises(NpuflowError) as e:
        compare(conv_net(), renamed, [{"x": s} for s in samples([1, 3, 8, 8], 2)])
    assert e.value.code == "NPF_COMPARE_NO_COMMON_TENSORS"


def _dump(mnist, folder: Path) -> Path:
    paths, data, _ = mnist
    npuflow.Session(paths["npuf"]).run({"input": np.load(sorted(data.iterdir())[0])}, dump_dir=folder)
    return folder


def test_dump_folders(mnist, cli, tmp_path):
    golden, dump = _dump(mnist, tmp_path / "golden"), _dump(mnist, tmp_path / "dump")
    index = json.loads((dump / "index.json").read_text())
    assert compare_dumps(golden, dump).ok and len(index) >= 8
    res = cli("compare", "--golden", golden, "--dump", dump)
    assert res.returncode == 0 and f"all {len(index)} tensors" in res.stdout
    # one value off by one step: a mismatch (exit 1) unless the tolerance allows it
    name, fname = sorted(index.items())[2]
    a = np.load(dump / fname)
    a.flat[0] = a.flat[0] + 1 if a.flat[0] < np.iinfo(a.dtype).max else a.flat[0] - 1
    np.save(dump / fname, a)
    result = compare_dumps(golden, dump)
    assert [t.name for t in result.mismatched()] == [name] and result.mismatched()[0].mismatches == 1
    res = cli("compare", "--golden", golden, "--dump", dump, "-o", tmp_path / "out")
    assert res.returncode == 1 and name in res.stdout
    assert json.loads((tmp_path / "out/compare_dumps.json").read_text())["ok"] is False
    assert cli("compare", "--golden", golden, "--dump", dump, "--atol", "1").returncode == 0
    # a tensor the dump lacks is a mismatch
    del index[name]
    (dump / "index.json").write_text(json.dumps(index))
    assert compare_dumps(golden, dump, atol=1).mismatched()[0].reason == "missing from the dump"


def test_dump_folder_errors(mnist, cli, tmp_path):
    golden = _dump(mnist, tmp_path / "golden")
    broken = tmp_path / "broken"
    broken.mkdir()
    res = cli("compare", "--golden", golden, "--dump", broken)
    assert res.returncode == 2 and "NPF_COMPARE_DUMP_MISSING" in res.stderr and "index.json" in res.stderr
    (broken / "index.json").write_text("{not json")
    with pytest.raises(NpuflowError) as e:
        compare_dumps(golden, broken)
    assert e.value.code == "NPF_COMPARE_DUMP_CORRUPT"
    (broken / "index.json").write_text(json.dumps({"t": "t.npy"}))
    with pytest.raises(NpuflowError) as e:
        compare_dumps(golden, broken)
    assert e.value.code == "NPF_COMPARE_DUMP_MISSING" and "t.npy" in e.value.message
    (broken / "index.json").write_text(json.dumps({"t": "../golden/index.json"}))
    with pytest.raises(NpuflowError) as e:
        compare_dumps(broken, golden)
    assert e.value.code == "NPF_COMPARE_DUMP_CORRUPT"
    index = json.loads((golden / "index.json").read_text())
    name, fname = next(iter(index.items()))
    (broken / "index.json").write_text(json.dumps({name: fname}))
    (broken / fname).write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(NpuflowError) as e:
        compare_dumps(golden, broken)
    assert e.value.code == "NPF_COMPARE_DUMP_CORRUPT" and fname in e.value.message


def test_cli_data_errors_say_compare_data_and_name_the_file(mnist, cli, tmp_path):
    """Wrong samples given to ``compare --data`` were reported in quantize's words, "calibration
    sample 0 does not fit the model" (new-user round 9): the error now says it is compare's --data
    sample, names its file and the float model."""
    paths, data, _ = mnist
    good = np.load(sorted(data.iterdir())[0])
    cases = {"shape": good[0], "nan": np.where(good > 0.5, np.nan, good).astype(np.float32)}
    for case, sample in cases.items():
        bad = tmp_path / case
        bad.mkdir()
        np.save(bad / "00.npy", sample)
        res = cli("compare", paths["float"], paths["npuf"], "--data", bad, "-o", tmp_path / "out")
        text = " ".join(res.stderr.split())
        assert res.returncode == 2 and "NPF_COMPARE_DATA_MISMATCH" in text and "Traceback" not in text, text
        assert f"compare's --data sample 0 ({bad / '00.npy'}) does not fit the float model {paths['float']}" in text
        assert "calibration" not in text.split("hint:")[0]
    res = cli("compare", paths["float"], paths["qdq"], "--data", tmp_path / "shape")  # the QDQ model: same words
    assert "NPF_COMPARE_DATA_MISMATCH" in res.stderr and "has shape 1x28x28, the model wants 1x1x28x28" in " ".join(
        res.stderr.split())
    (tmp_path / "empty").mkdir()
    res = cli("compare", paths["float"], paths["qdq"], "--data", tmp_path / "empty")
    text = " ".join(res.stderr.split())
    assert res.returncode == 2 and f"NPF_COMPARE_DATA_SOURCE] cannot read compare's --data {tmp_path / 'empty'}" in text
    assert not (tmp_path / "out").exists()
