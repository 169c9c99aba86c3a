"""Model tools (issue 22 item 5): ``npuflow modify``, ``pack``, ``graph`` and ``info`` on real compiled models.

* modify: the MNIST CNN without its input quantize and output dequantize, fed the int8 codes the
  original run quantized, writes the codes the original run dequantized (DPU and cpu-int8, whose
  zero points are not 0); a build-style preprocessed MNIST (uint8 NHWC camera input) loses its
  cast, transpose, quantize and mean step one by one, each result running identically on the
  tensor that became the input; the removed nodes' parameters stay in ``info``;
* PP-OCR's direction classifier compiled for two line widths loses the quantize in both programs
  and ``info``/``perf`` describe each program;
* pack: three models in one file with shared weights stored once; ``Session(path, model=NAME)``,
  ``run --model``, ``info`` and ``perf`` on it; coded errors for a missing or unknown name,
  different targets and clashing names, with no output written;
* graph: SVG with device clusters, Graphviz source, and the source with a warning without ``dot``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import pytest

import npuflow
import npuflow.cli.commands  # noqa: F401  (registers the commands in their documented order, as main does)
from npuflow.cli.app import main
from npuflow.cli.info_cmd import describe, describe_op
from npuflow.compiler import CompiledModel, artifact
from npuflow.compiler.modify import remove, removable_names
from npuflow.compiler.pack import pack
from npuflow.errors import NpuflowError
from npuflow.passes.preprocess import InputPreprocess, insert_preprocessing
from npuflow.perf.from_npuf import npuf_units
from npuflow.perf.model_perf import perf_compiled

DPU = "DPUCZDX8G_ISA1_B4096"


def _minor(path: Path) -> int:
    return struct.unpack_from("<8sHH", path.read_bytes())[2]


def _version(path: Path) -> tuple[int, int]:
    return struct.unpack_from("<8sHH", path.read_bytes())[1:]


def _digits(n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"input": rng.random((1, 1, 28, 28), dtype=np.float32)} for _ in range(n)]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tools")


@pytest.fixture(scope="module")
def mnist(models, work) -> dict[str, Path]:
    """The MNIST CNN compiled for the DPU (power-of-two, zero point 0) and cpu-int8 (zero points)."""
    out = {}
    for target, stem in ((DPU, "mnist"), ("cpu-int8", "mnist_cpu")):
        q = npuflow.quantize(str(models.mnist_cnn()), _digits(4), target)
        out[target] = npuflow.compile(q.model, target).save(work / f"{stem}.npuf")
    return out


@pytest.fixture(scope="module")
def preprocessed(models, work) -> Path:
    """MNIST behind the build's preprocessing: the camera feeds uint8 NHWC, the model normalises."""
    pre = InputPreprocess(name="input", shape=(1, 1, 28, 28), type_train="gray", layout_train="NCHW",
                          type_rt="gray", layout_rt="NHWC", mean=(128.0,), scale=(1 / 128,))
    model = insert_preprocessing(onnx.load(str(models.mnist_cnn())), [pre])
    rng = np.random.default_rng(1)
    feeds = [{"input": rng.integers(0, 256, (1, 28, 28, 1)).astype(np.uint8)} for _ in range(4)]
    q = npuflow.quantize(model, feeds, "cpu-int8")
    return npuflow.compile(q.model, "cpu-int8", preprocessing={"input": asdict(pre)}).save(work / "pre.npuf")


@pytest.fixture(scope="module")
def cls(models, work) -> Path:
    """PP-OCR's direction classifier (batch fixed to 1) compiled for lines 192 and 320 wide."""
    model = onnx.load(str(models.ppocr_cls()))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    calib = work / "cls_calib"
    calib.mkdir()
    rng = np.random.default_rng(2)
    for i in range(3):
        np.save(calib / f"{i}.npy", rng.uniform(-1, 1, (1, 3, 48, 192)).astype(np.float32))
    q = npuflow.quantize(model, str(calib), DPU)
    shapes = [{"x": [1, 3, 48, 192]}, {"x": [1, 3, 48, 320]}]
    return npuflow.compile(q.dynamic_model, DPU, input_shapes=shapes).save(work / "cls.npuf")


# --- modify -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", [DPU, "cpu-int8"])
def test_removed_quantize_and_dequantize_run_on_the_codes_identically(mnist, target, work, capsys):
    path = mnist[target]
    original = CompiledModel.load(path)
    assert removable_names(original) == ["input_q", "logits_dq"]
    out = work / f"int8_{path.stem}.npuf"
    assert main(["modify", str(path), "--remove", "input_q", "--remove", "logits_dq", "-o", str(out)]) == 0
    codes = "int8" if target == DPU else "uint8"  # the target's activation type
    assert f"the model input is now input_q {codes} 1x1x28x28" in capsys.readouterr().out
    # only files using 1.2 fields say 1.2; cpu-int8's per-channel multipliers are blobs (2.0, which has them all)
    assert (_version(out), _version(path)) == (((1, 2), (1, 0)) if target == DPU else ((2, 0), (2, 0)))
    modified = CompiledModel.load(out)  # the reader's schema accepts it
    (inp,), (outp,) = modified.inputs, modified.outputs
    assert (inp["name"], inp["dtype"], outp["name"], outp["dtype"]) == ("input_q", codes, "logits_q", codes)
    removed = {r["name"]: r for r in modified.removed}
    assert removed["input_q"]["attrs"]["scale"] == inp["quant"]["scale"] == original.inputs[0]["quant"]["scale"]
    assert removed["logits_dq"]["attrs"]["zp"] == outp["quant"]["zero_point"]
    assert modified.manifest["subgraphs"][0]["op_counts"].get("quantize") is None
    assert modified.peak_activation_bytes < original.peak_activation_bytes  # no float input/output buffers
    for k, x in enumerate(_digits(3)):
        ref = npuflow.Session(original).run(x, dump_dir=work / f"dump_{path.stem}_{k}")
        codes = np.load(work / f"dump_{path.stem}_{k}" / "input_q.npy")
        got = npuflow.Session(out).run({"input_q": codes})["logits_q"]
        np.testing.assert_array_equal(got, np.load(work / f"dump_{path.stem}_{k}" / "logits_q.npy"))
        q = outp["quant"]
        np.testing.assert_array_equal((got.astype(np.float32) - q["zero_point"]) * np.float32(q["scale"]),
                                      ref["logits"])
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "removed nodes" in text and "input float32 1x1x28x28" in text and '"scale": ' in text
    doc = describe_op(modified, "input_q")  # info --op finds a removed node with its parameters
    assert doc["removed"] and doc["outputs"][0]["quant"]["scale"] == inp["quant"]["scale"]


def test_preprocessing_nodes_come_off_one_by_one(preprocessed, work):
    current = CompiledModel.load(preprocessed)
    assert current.inputs[0]["dtype"] == "uint8"
    frames = [np.random.default_rng(k).integers(0, 256, (1, 28, 28, 1)).astype(np.uint8) for k in range(2)]
    dumps = []
    for k, frame in enumerate(frames):
        ref = npuflow.Session(current).run({"input": frame}, dump_dir=work / f"pre_dump{k}")
        dumps.append((ref["logits"], work / f"pre_dump{k}"))
    feeds = {
        "input_pre_cast": lambda f, d: f.astype(np.float32),
        "input_pre_nchw": lambda f, d: np.ascontiguousarray(f.astype(np.float32).transpose(0, 3, 1, 2)),
        "input_pre_nchw_q": lambda f, d: np.load(d / "input_pre_nchw_q.npy"),
        "input_pre_sub_mean": lambda f, d: np.load(d / "input_pre_sub_mean_q.npy"),
    }
    for step, (name, feed) in enumerate(feeds.items()):
        assert name in removable_names(current)
        current = CompiledModel.load(remove(current, [name]).save(work / f"pre_{step}.npuf"))
        (inp,) = current.inputs
        for frame, (want, dump) in zip(frames, dumps):
            got = npuflow.Session(current).run({inp["name"]: feed(frame, dump)})["logits"]
            np.testing.assert_array_equal(got, want)
    cast, transpose, quantize, sub = current.removed
    assert cast["engine"] == "onnx" and cast["attrs"]["to"] == onnx.TensorProto.FLOAT
    assert cast["input"]["layout"] == "NHWC"  # the build's runtime layout, not the rank's guess
    # the one-channel frame's NHWC -> NCHW moves unit axes only: the float passes write it as a Reshape,
    # whose output is channels first all the same
    assert transpose["op"] == "Reshape" and transpose["output"]["layout"] == "NCHW"
    assert transpose["input"]["shape"] == [1, 28, 28, 1] and transpose["output"]["shape"] == [1, 1, 28, 28]
    # cpu-int8's uint8 codes of the frame's 0..255 values: the values themselves
    assert quantize["output"]["quant"]["zero_point"] == 0 and quantize["output"]["dtype"] == "uint8"
    assert quantize["output"]["quant"]["scale"] == 1.0
    assert sub["op"] == "eltwise" and current.inputs[0]["name"] == "input_pre_sub_mean_q"
    assert [s["engine"] for s in current.manifest["subgraphs"]] == ["integer"]  # the CPU subgraph is gone


def test_a_node_that_is_not_removable_is_named_with_the_removable_ones(mnist, work, cli):
    compiled = CompiledModel.load(mnist[DPU])
    with pytest.raises(NpuflowError) as exc:
        remove(compiled, ["/conv_layers/conv_layers.0/Conv"], "mnist.npuf")
    assert exc.value.code == "NPF_MODIFY_NOT_REMOVABLE"
    assert "/conv_layers/conv_layers.0/Conv" in exc.value.message and "conv op" in exc.value.message
    assert "Removable now: input_q, logits_dq" in exc.value.hint
    with pytest.raises(NpuflowError) as exc:
        remove(compiled, ["input_qq"])
    assert "no op or node of that name" in exc.value.message and "Did you mean 'input_q'?" in exc.value.hint
    with pytest.raises(NpuflowError) as exc:  # a node can go once
        remove(compiled, ["input_q", "input_q"])
    assert exc.value.code == "NPF_MODIFY_NOT_REMOVABLE" and "Removable now: logits_dq" in exc.value.hint
    out = work / "never.npuf"
    res = cli("modify", mnist[DPU], "--remove", "/fc_layers/fc_layers.0/Gemm", "-o", out)
    assert res.returncode == 2 and "NPF_MODIFY_NOT_REMOVABLE" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()


def test_multi_shape_file_loses_the_node_in_every_program_and_is_described_per_program(cls, work, capsys):
    original = CompiledModel.load(cls)
    modified = CompiledModel.load(remove(original, ["x_q"]).save(work / "cls_int8.npuf"))
    assert [s["x_q"][3] for s in modified.input_shapes] == [192, 320]
    rng = np.random.default_rng(3)
    for width in (192, 320, 250):
        x = rng.uniform(-1, 1, (1, 3, 48, width)).astype(np.float32)
        want = npuflow.Session(original).run({"x": x}, dump_dir=work / "cls_dump")
        got = npuflow.Session(modified).run({"x_q": np.load(work / "cls_dump" / "x_q.npy")})
        np.testing.assert_array_equal(got["save_infer_model/scale_0.tmp_1"], want["save_infer_model/scale_0.tmp_1"])
    doc = describe(modified)
    assert [p["input_shapes"]["x_q"][3] for p in doc["programs"]] == [192, 320]
    first, second = doc["programs"]
    assert second["memory"]["peak_activation_bytes"] > first["memory"]["peak_activation_bytes"]
    # (one DPU subgraph and the CPU tail: the quantizer's target rewrites put the SE blocks'
    # hard-sigmoids on the DPU)
    assert len(first["subgraphs"]) == len(second["subgraphs"]) >= 2
    assert main(["info", str(work / "cls_int8.npuf")]) == 0
    text = capsys.readouterr().out
    assert "subgraphs (program 2: x_q=1x3x48x320)" in text and "removed nodes" in text
    assert main(["graph", str(cls), "--program", "2", "-o", str(work / "cls2.gv")]) == 0
    assert "program 2 of 2" in (work / "cls2.gv").read_text()
    assert main(["graph", str(cls), "--program", "3", "-o", str(work / "cls3.gv")]) == 2
    assert "NPF_GRAPH_USAGE" in capsys.readouterr().err and not (work / "cls3.gv").exists()
    units = npuf_units(cls)
    assert [name for name, _, _ in units] == ["cls_program1", "cls_program2"]
    reports = [perf_compiled(c, name=name, measure_cpu=False) for name, _, c in units]
    assert reports[1].ops_per_frame > reports[0].ops_per_frame * 1.5  # 320 / 192 columns of work


# --- pack ---------------------------------------------------------------------------------------

def test_packed_models_run_and_describe_by_name(mnist, cls, work, capsys):
    int8 = remove(CompiledModel.load(mnist[DPU]), ["input_q"]).save(work / "mnist_int8.npuf")
    packed = work / "all.npuf"
    assert main(["pack", "-o", str(packed), str(mnist[DPU]), str(int8), str(cls)]) == 0
    assert "3 models (mnist, mnist_int8, cls)" in capsys.readouterr().out
    assert _minor(packed) == 2
    # the two MNIST files share every weight: stored once
    assert packed.stat().st_size < mnist[DPU].stat().st_size + int8.stat().st_size + cls.stat().st_size - 300_000
    models = CompiledModel.load_all(packed)
    assert list(models) == ["mnist", "mnist_int8", "cls"] and models["cls"].packed
    x = _digits(1)[0]
    want = npuflow.Session(mnist[DPU]).run(x)["logits"]
    np.testing.assert_array_equal(npuflow.Session(packed, model="mnist").run(x)["logits"], want)
    line = np.random.default_rng(4).uniform(-1, 1, (1, 3, 48, 300)).astype(np.float32)
    prob = "save_infer_model/scale_0.tmp_1"
    np.testing.assert_array_equal(npuflow.Session(packed, model="cls").run({"x": line})[prob],
                                  npuflow.Session(cls).run({"x": line})[prob])
    with pytest.raises(NpuflowError) as exc:
        npuflow.Session(packed)
    assert exc.value.code == "NPF_PACK_MODEL_REQUIRED" and "mnist, mnist_int8, cls" in exc.value.hint
    with pytest.raises(NpuflowError) as exc:
        npuflow.Session(packed, model="mnsit")
    assert exc.value.code == "NPF_PACK_UNKNOWN_MODEL" and "Did you mean 'mnist'?" in exc.value.hint
    np.save(work / "digit.npy", x["input"])
    digit = f"input={work / 'digit.npy'}"
    assert main(["run", str(packed), "--model", "mnist", "-i", digit, "-o", str(work / "o")]) == 0
    np.testing.assert_array_equal(np.load(work / "o" / "logits.npy"), want)
    capsys.readouterr()
    assert main(["info", str(packed)]) == 0
    text = capsys.readouterr().out
    assert "packed file, 3 models" in text and f"{packed} model cls" in text and "program 2" in text
    assert main(["info", str(packed), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in doc["packed"]] == ["mnist", "mnist_int8", "cls"]
    assert main(["info", str(packed), "--model", "mnist_int8", "--op", "input_q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert main(["perf", str(packed), "--model", "mnist", "-o", str(work / "perf")]) == 0
    assert (work / "perf" / "perf_result" / "mnist" / "mnist.html").is_file()
    assert main(["info", str(packed), "--op", "input_q"]) == 2  # several models: name one
    assert "NPF_PACK_MODEL_REQUIRED" in capsys.readouterr().err
    # a packed file unpacks by saving one model
    alone = CompiledModel.load(models["mnist"].save(work / "unpacked.npuf"))
    assert len(alone.manifest["blobs"]) == len(CompiledModel.load(mnist[DPU]).manifest["blobs"])
    np.testing.assert_array_equal(npuflow.Session(alone).run(x)["logits"], want)


def test_pack_refuses_other_targets_and_clashing_names_without_writing(mnist, work, cli):
    out = work / "bad.npuf"
    res = cli("pack", "-o", out, mnist[DPU], mnist["cpu-int8"])
    assert res.returncode == 2 and "NPF_PACK_TARGET_MISMATCH" in res.stderr and "cpu-int8" in res.stderr
    with pytest.raises(NpuflowError) as exc:
        pack([mnist[DPU], mnist[DPU]], out)
    assert exc.value.code == "NPF_PACK_DUPLICATE_NAME" and exc.value.fields["name"] == "mnist"
    with pytest.raises(NpuflowError) as exc:
        pack([mnist[DPU], work / "missing.npuf"], out)
    assert exc.value.code == "NPF_COMPILE_FILE_NOT_FOUND"
    assert not out.exists() and not list(work.glob(".bad.npuf.*"))


# --- graph --------------------------------------------------------------------------------------

def test_graph_draws_device_clusters_and_falls_back_to_the_source(preprocessed, work, capsys, monkeypatch):
    svg = work / "pre.svg"
    assert main(["graph", str(preprocessed), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert "subgraph_0_cpu: CPU (ONNX Runtime)" in text and "subgraph_1_npu: CPU&#45;INT8 (integer program)" in text
    assert "input_pre_cast" in text and "/conv_layers/conv_layers.0/Conv" in text
    gv = work / "pre.gv"
    assert main(["graph", str(preprocessed), "-o", str(gv)]) == 0
    assert "cluster_1" in gv.read_text()
    assert main(["graph", str(preprocessed), "-o", str(work / "pre.jpeg")]) == 2
    assert "NPF_GRAPH_USAGE" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(work / "no-graphviz-here"))
    assert main(["graph", str(preprocessed), "-o", str(work / "nodot.png")]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "dot" in err and not (work / "nodot.png").exists()
    assert "cluster_0" in (work / "nodot.gv").read_text()


def test_the_reader_refuses_a_packed_file_mixing_targets_or_names(mnist, work):
    """What pack refuses is also corrupt when read: a crafted file is checked model by model."""
    dpu, cpu = (CompiledModel.load(mnist[t]) for t in (DPU, "cpu-int8"))
    blobs = {f"a/{n}": dpu.blob(n) for n in dpu.blob_names()}
    entry = {k: v for k, v in dpu.manifest.items() if k != "blobs"}
    entry["subgraphs"] = [{**sg, "ops": [{**op, "blobs": {r: f"a/{b}" for r, b in op["blobs"].items()}}
                                          for op in sg["ops"]]} for sg in entry["subgraphs"]]
    for name, second, field in (("b", {**entry, "target": cpu.manifest["target"]}, "packed[1].manifest.target"),
                                ("a", entry, "packed[1].name")):
        path = artifact.write(work / "crafted.npuf", {"format": "npuf", "npuflow_version": npuflow.__version__,
                                                      "packed": [{"name": "a", "manifest": entry},
                                                                 {"name": name, "manifest": second}]}, blobs)
        with pytest.raises(NpuflowError) as exc:
            CompiledModel.load(path, model="a")
        assert exc.value.code == "NPF_COMPILE_CORRUPT" and field in exc.value.message
