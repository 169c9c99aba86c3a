"""The .npuf file: round trip, determinism, and refusal of damaged or foreign files."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import npuflow
from npuflow.compiler import CompiledModel
from npuflow.compiler import artifact
from npuflow.errors import NpuflowError
from tests.unit.test_compiler_kernels import _conv_model, _x

DPU = "DPUCZDX8G_ISA1_B4096"


@pytest.fixture(scope="module")
def compiled():
    return npuflow.compile(_conv_model("half_up", "relu"), DPU)


@pytest.fixture(scope="module")
def npuf(compiled, tmp_path_factory):
    path = tmp_path_factory.mktemp("npuf") / "m.npuf"
    compiled.save(path)
    return path


def test_round_trip_runs_identically_and_memory_maps_weights(compiled, npuf):
    loaded = CompiledModel.load(npuf)
    x = {"x": _x([1, 8, 13, 11], 1)}
    a = npuflow.Session(compiled).run(x)
    b = npuflow.Session(loaded).run(x)
    assert np.array_equal(a["y"], b["y"])
    w = loaded.blob("sg0.op1.w")
    assert w.dtype == np.int8 and not w.flags.writeable and not w.flags.owndata


def test_same_model_gives_byte_identical_files(compiled, npuf, tmp_path):
    again = npuflow.compile(_conv_model("half_up", "relu"), DPU)
    again.save(tmp_path / "again.npuf")
    assert (tmp_path / "again.npuf").read_bytes() == npuf.read_bytes()


def test_manifest_is_self_describing(npuf):
    m = CompiledModel.load(npuf).manifest
    assert m["target"]["name"] == DPU and m["target"]["fingerprint"]
    assert m["inputs"][0]["name"] == "x" and m["inputs"][0]["layout"] == "NCHW"
    assert m["inputs"][0]["quant"]["scale"] == 2.0 ** -5
    assert m["npuflow_version"] == npuflow.__version__
    assert m["memory"]["peak_activation_bytes"] > 0


def _expect_code(path, codes=("NPF_COMPILE_CORRUPT",)):
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(path)
    assert err.value.code in codes, err.value


def test_fuzzed_files_only_raise_the_coded_error(npuf, tmp_path):
    data = npuf.read_bytes()
    rng = np.random.default_rng(0)
    codes = ("NPF_COMPILE_CORRUPT", "NPF_COMPILE_NOT_NPUF", "NPF_COMPILE_VERSION")
    bad = tmp_path / "bad.npuf"
    for k in range(300):
        b = bytearray(data)
        if k % 3 == 0:
            b = b[:int(rng.integers(0, len(b)))]
        else:
            for _ in range(int(rng.integers(1, 4))):
                b[int(rng.integers(0, len(b)))] ^= 1 << int(rng.integers(0, 8))
        if bytes(b) == data:
            continue
        bad.write_bytes(bytes(b))
        _expect_code(bad, codes)


def test_truncated_and_altered_files_are_refused(npuf, tmp_path):
    data = npuf.read_bytes()
    (tmp_path / "cut.npuf").write_bytes(data[:-100])
    _expect_code(tmp_path / "cut.npuf")
    altered = bytearray(data)
    altered[len(data) // 2] ^= 0xFF
    (tmp_path / "alt.npuf").write_bytes(bytes(altered))
    _expect_code(tmp_path / "alt.npuf")


def test_unknown_format_version_is_refused(npuf, tmp_path):
    data = bytearray(npuf.read_bytes())
    struct.pack_into("<H", data, 8, artifact.FORMAT_MAJOR + 1)
    (tmp_path / "v2.npuf").write_bytes(bytes(data))
    _expect_code(tmp_path / "v2.npuf", ("NPF_COMPILE_VERSION",))


def test_foreign_and_missing_files(tmp_path, cli):
    (tmp_path / "x.npuf").write_bytes(b"PK\x03\x04 not a model")
    _expect_code(tmp_path / "x.npuf", ("NPF_COMPILE_NOT_NPUF",))
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(tmp_path / "missing.npuf")
    assert err.value.code == "NPF_COMPILE_FILE_NOT_FOUND"
    r = cli("info", tmp_path / "x.npuf")
    assert r.returncode == 2 and "NPF_COMPILE_NOT_NPUF" in r.stderr
    r = cli("info", tmp_path / "missing.npuf")
    assert r.returncode == 2 and "NPF_COMPILE_FILE_NOT_FOUND" in r.stderr


def test_cli_refuses_a_corrupt_file_without_running(npuf, tmp_path, cli):
    data = bytearray(npuf.read_bytes())
    data[200] ^= 1
    (tmp_path / "c.npuf").write_bytes(bytes(data))
    np.save(tmp_path / "x.npy", _x([1, 8, 13, 11]))
    r = cli("run", tmp_path / "c.npuf", "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "out")
    assert r.returncode == 2 and "NPF_COMPILE_CORRUPT" in r.stderr
    assert not (tmp_path / "out").exists()
    data = bytearray(npuf.read_bytes())
    struct.pack_into("<H", data, 8, 9)
    (tmp_path / "v.npuf").write_bytes(bytes(data))
    r = cli("info", tmp_path / "v.npuf")
    assert r.returncode == 2 and "NPF_COMPILE_VERSION" in r.stderr
