"""Issue 19, peak memory of a load: a ``Session`` whose fused plans are stored parses no integer op.

The manifest's ops were parsed at every load, though a stored plan (``runtime/fused_cache.py``)
covers them all; the small objects of that parse stayed in the process's memory (PP-OCR cls on
B4096: 3,800 of them).  They are now read when something asks for them (``compiler/lazy_ops.py``):
dump mode, ``run_op``, a plan built, a description; the stored plan is named by the manifest's
SHA-256 and the program's place in it, so any other byte of the manifest names another plan."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import onnx
import pytest

import npuflow
from npuflow.compiler.compiled import CompiledModel
from npuflow.compiler.lazy_ops import LazyOps
from npuflow.runtime import fused, fused_cache
from tests import onnx_builders
from tests.compile_check import random_sample_npuf

TARGET = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def small_npuf(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy")
    onnx_path = folder / "blocks.onnx"
    onnx.save(onnx_builders.conv_bn_relu_blocks(2, channels=8, size=8), onnx_path)
    return random_sample_npuf(onnx_path, TARGET, "input", [1, 8, 8, 8], 2, folder / "blocks.npuf")


def _integer_ops(session: npuflow.Session) -> list:
    return [sg["ops"] for p in session.compiled.programs for sg in p["subgraphs"] if sg["engine"] == "integer"]


def _no_build(*args, **kwargs):
    raise AssertionError("the plan was built, not read from the cache")


def test_a_load_whose_plan_is_stored_parses_no_op(monkeypatch, fused_cache_on, small_npuf, tmp_path):
    path, samples = small_npuf
    first = npuflow.Session(path)  # validates the manifest and stores the plan
    monkeypatch.setattr(fused, "_build", _no_build)
    read = npuflow.Session(path)
    ops = _integer_ops(read)
    assert ops and all(isinstance(o, LazyOps) and not o.parsed for o in ops)
    ref = npuflow.Session(path, fuse=False)
    for x in samples:
        out, want = read.run(x), ref.run(x)
        assert all(np.array_equal(out[k], want[k]) for k in want)
    assert not any(o.parsed for o in ops)
    # dump mode writes the runs again from their ops: read now, the same tensors as the first load's
    first.run(samples[0], dump_dir=tmp_path / "first")
    read.run(samples[0], dump_dir=tmp_path / "read")
    names = sorted(p.name for p in (tmp_path / "first").glob("*.npy"))
    assert len(names) > 5 and names == sorted(p.name for p in (tmp_path / "read").glob("*.npy"))
    assert all(np.array_equal(np.load(tmp_path / "first" / n), np.load(tmp_path / "read" / n)) for n in names)
    assert all(o.parsed for o in ops)
    assert ops[0] == _integer_ops(first)[0] and list(ops[0]) == ref.compiled.manifest["subgraphs"][0]["ops"]


def test_run_op_reads_the_ops_of_a_stored_plan(monkeypatch, fused_cache_on, small_npuf):
    path, samples = small_npuf
    npuflow.Session(path)
    read = npuflow.Session(path)
    ref = npuflow.Session(path, fuse=False)
    op = next(o for o in ref.compiled.manifest["subgraphs"][0]["ops"] if o["op"] == "conv")
    tensors = ref.compiled.manifest["tensors"]
    x = {name: np.zeros(tensors[name]["shape"], tensors[name]["dtype"]) for name in op["inputs"]}
    got, want = read.run_op(op["nodes"][0], x), ref.run_op(op["nodes"][0], x)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def _changed(path, tmp_path, change) -> str:
    """A copy of ``path`` with ``change`` applied to its manifest, written and loaded once (its
    manifest validated); the plan name of its first integer program."""
    c = CompiledModel.load(path)
    manifest = copy.deepcopy(c.manifest)
    change(manifest)
    out = CompiledModel(manifest, reader=c.blob).save(tmp_path / f"changed{len(list(tmp_path.iterdir()))}.npuf")
    CompiledModel.load(out, lazy_ops=True)
    return _key(out)


def _key(path) -> str:
    c = CompiledModel.load(path, lazy_ops=True)
    sg = c.manifest["subgraphs"][0]
    assert isinstance(sg["ops"], LazyOps)
    return fused_cache.key(sg, c.manifest["tensors"], c.blob, 1)


def test_the_stored_plan_is_named_by_every_byte_of_the_manifest(fused_cache_on, small_npuf, tmp_path):
    path, _ = small_npuf
    npuflow.Session(path)
    same = _key(path)
    assert same == _key(path) and same is not None
    (tmp_path / "copy.npuf").write_bytes(path.read_bytes())
    assert _key(tmp_path / "copy.npuf") == same  # named by the content, not the file's path

    def op_attr(m):
        m["subgraphs"][0]["ops"][0]["attrs"]["scale"] *= 2

    def quant(m):
        name = m["subgraphs"][0]["ops"][1]["outputs"][0]
        m["tensors"][name]["quant"]["scale"] *= 2

    def op_name(m):
        m["subgraphs"][0]["ops"][-1]["name"] += "_renamed"

    keys = [_changed(path, tmp_path, change) for change in (op_attr, quant, op_name)]
    assert len({same, *keys}) == 4


def test_a_lazily_read_model_is_written_and_copied_as_it_was_read(fused_cache_on, small_npuf):
    path, _ = small_npuf
    CompiledModel.load(path)  # the manifest's verdict stored
    lazy = CompiledModel.load(path, lazy_ops=True)
    ops = lazy.manifest["subgraphs"][0]["ops"]
    assert isinstance(ops, LazyOps) and not ops.parsed
    assert lazy.to_bytes() == path.read_bytes()
    parsed = CompiledModel.load(path).manifest["subgraphs"][0]["ops"]
    assert pickle.loads(pickle.dumps(ops)) == parsed and copy.deepcopy(ops) == parsed
    assert type(copy.deepcopy(lazy.manifest)["subgraphs"][0]["ops"]) is list


@pytest.fixture(scope="module")
def three_programs(tmp_path_factory):
    """conv -> Sigmoid -> conv -> Sigmoid -> conv on B4096: integer programs with CPU tables between."""
    folder = tmp_path_factory.mktemp("lazy3")
    nodes, inits, x = [], [], "input"
    for k in range(3):
        node, w = onnx_builders.conv_node(f"conv{k}", x, f"c{k}", 8, 8)
        nodes.append(node)
        inits.append(w)
        x = f"c{k}"
        if k < 2:
            nodes.append(onnx.helper.make_node("Sigmoid", [x], [f"s{k}"], name=f"sig{k}"))
            x = f"s{k}"
    onnx.save(onnx_builders.model(nodes, [onnx_builders.vi("input", [1, 8, 8, 8])], [onnx_builders.vi(x, [1, 8, 8, 8])],
                                  inits), folder / "three.onnx")
    return random_sample_npuf(folder / "three.onnx", TARGET, "input", [1, 8, 8, 8], 2, folder / "three.npuf")


def test_each_program_s_ops_are_read_alone_and_equal_the_whole_parse(fused_cache_on, three_programs):
    path, samples = three_programs
    whole = CompiledModel.load(path)  # the manifest's verdict stored
    lazy = CompiledModel.load(path, lazy_ops=True)
    integer = [k for k, sg in enumerate(lazy.manifest["subgraphs"]) if sg["engine"] == "integer"]
    assert len(integer) >= 2
    last = lazy.manifest["subgraphs"][integer[-1]]["ops"]
    assert list(last) == whole.manifest["subgraphs"][integer[-1]]["ops"]
    assert lazy._file._whole is None  # the list alone was parsed, not the manifest again
    assert not lazy.manifest["subgraphs"][integer[0]]["ops"].parsed
    assert all(lazy.manifest["subgraphs"][k]["ops"] == whole.manifest["subgraphs"][k]["ops"] for k in integer)
    # a Session merges the programs with the tables between them: the same codes as the kernels
    npuflow.Session(path)
    read = npuflow.Session(path)
    ref = npuflow.Session(path, fuse=False)
    for x in samples:
        out, want = read.run(x), ref.run(x)
        assert all(np.array_equal(out[k], want[k]) for k in want)


def test_ops_keys_the_text_does_not_match_read_the_manifest_whole(fused_cache_on, three_programs):
    path, _ = three_programs
    whole = CompiledModel.load(path)
    lazy = CompiledModel.load(path, lazy_ops=True)
    lazy._file._hidden_lists += 1  # as if an op's attributes held an "ops" key of their own
    k = next(k for k, sg in enumerate(lazy.manifest["subgraphs"]) if sg["engine"] == "integer")
    assert list(lazy.manifest["subgraphs"][k]["ops"]) == whole.manifest["subgraphs"][k]["ops"]
    assert lazy._file._whole is not None
