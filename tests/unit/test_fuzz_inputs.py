"""Property-based fuzzing of every reader of hostile input (issue 21, item 4).

Property: whatever the bytes, a reader either accepts the input or refuses it with a coded
``NpuflowError`` -- never another exception (a traceback for a CLI user).  Readers: the ONNX
loader (through ``npuflow.check``), the ``.npuf`` reader (raw byte mutations, and manifest
mutations re-sealed with valid checksums so that they reach the manifest schema) through
``Session`` construction, ``info``'s ``describe`` and one run, the build YAML and the quantize
config.  Mutators are shared with ``benchmarks/bench_fuzz.py`` (which runs more cases); hypothesis
drives them, derandomized so that every run tries the same cases.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import onnx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import bench_fuzz as bf
from npuflow.build import load_config
from npuflow.compiler import CompiledModel, artifact, manifest_schema
from npuflow.errors import NpuflowError
from npuflow.quant.config import QuantConfig

def fuzz(cases: int) -> settings:
    """Deterministic (derandomized, no example database) and free of timing health checks."""
    return settings(max_examples=cases, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

#: JSON values a manifest field may be replaced with (beyond the mutators' hand-picked pool).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


@pytest.fixture(scope="module")
def work():
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


@pytest.fixture(scope="module")
def samples(work):
    """Compiled MNIST CNN and conv net for a power-of-two (DPU) and a float-scale (cpu-int8) target."""
    return bf.compiled_samples(work)


def _accepted_or_coded(fn) -> bool:
    """True when ``fn`` runs, False when it refuses with a code; any other exception fails the test."""
    try:
        fn()
    except NpuflowError:
        return False
    return True


# --- ONNX loader ---------------------------------------------------------------------------------

_DATA = bf.MNIST.read_bytes()
_BASE = onnx.load_from_string(_DATA)


@fuzz(700)
@given(rng=st.randoms(use_true_random=False))
def test_onnx_loader_accepts_or_refuses_with_a_code(rng, work):
    import npuflow

    label, files = bf.onnx_case(rng, _DATA, _BASE)
    folder = Path(tempfile.mkdtemp(dir=work)) / "a" / "b"  # '..' leads to empty folders, never to data
    path = bf.write_case(folder, files)
    _accepted_or_coded(lambda: npuflow.check(str(path), "DPUCZDX8G_ISA1_B4096"))


def test_onnx_cli_prints_codes_not_tracebacks(cli, tmp_path):
    cases = [c for c in bf.onnx_cases(40, seed=3) if c[0] in ("bit flip", "external data outside/missing",
                                                               "attribute string", "input/output shape")]
    assert len(cases) >= 4
    for k, (label, files) in enumerate(cases[:4]):
        path = bf.write_case(tmp_path / str(k) / "a", files)
        r = cli("check", path, "--target", "DPUCZDX8G_ISA1_B4096", cwd=tmp_path)
        assert "Traceback" not in r.stderr + r.stdout, (label, r.stderr[-2000:])
        assert r.returncode == 0 or "ERROR [NPF_" in r.stderr + r.stdout, (label, r.stderr[-2000:])


# --- .npuf reader ---------------------------------------------------------------------------------

@fuzz(500)
@given(rng=st.randoms(use_true_random=False), which=st.integers(0, 3))
def test_npuf_raw_mutations_are_refused_with_a_code(rng, which, samples, work):
    data = samples[sorted(samples)[which]]
    mutated = bf.npuf_raw_case(rng, data)
    path = work / "raw.npuf"
    path.write_bytes(mutated)
    assert not _accepted_or_coded(lambda: bf.open_npuf(path)) or mutated == data


@fuzz(1200)
@given(rng=st.randoms(use_true_random=False), which=st.integers(0, 3), data=st.data())
def test_resealed_manifest_mutations_are_accepted_or_refused_with_a_code(rng, which, data, samples, work):
    blob = samples[sorted(samples)[which]]
    label, manifest = bf.mutate_manifest(rng, bf.manifest_of(blob))
    if data.draw(st.booleans()):  # a value from hypothesis's own JSON strategy at a random place
        paths = [p for p in bf._paths(manifest) if p]
        target = data.draw(st.sampled_from(paths))
        parent = manifest
        for key in target[:-1]:
            parent = parent[key]
        parent[target[-1]] = data.draw(JSON)
    try:
        sealed = bf.reseal(blob, manifest)
    except ValueError:  # a float JSON cannot hold (nan/inf): no writer could seal it
        return
    path = work / "sealed.npuf"
    path.write_bytes(sealed)
    _accepted_or_coded(lambda: bf.open_npuf(path))


def test_every_sample_the_compiler_writes_validates(samples, work):
    for name, data in samples.items():
        path = work / "ok.npuf"
        path.write_bytes(data)
        bf.open_npuf(path)  # Session, describe and a run: raises on any refusal


def _resealed(samples, work, edit, minor: int | None = None, reserved: bytes | None = None) -> Path:
    data = samples[sorted(samples)[0]]
    manifest = bf.manifest_of(data)
    edit(manifest)
    sealed = bytearray(bf.reseal(data, manifest))
    if minor is not None or reserved is not None:
        head = list(artifact._HEADER.unpack_from(sealed, 0))
        head[2] = head[2] if minor is None else minor
        head[10] = head[10] if reserved is None else reserved
        sealed[:artifact.HEADER_SIZE] = artifact._HEADER.pack(*head)
        sealed[-artifact.TRAILER_SIZE:] = hashlib.sha256(bytes(sealed[:-artifact.TRAILER_SIZE])).digest()
    path = work / "edited.npuf"
    path.write_bytes(bytes(sealed))
    return path


def _integer_sg(m: dict) -> dict:
    return next(sg for sg in m["subgraphs"] if sg["engine"] == "integer")


def _conv(m: dict) -> dict:
    return next(op for sg in m["subgraphs"] if sg["engine"] == "integer" for op in sg["ops"] if op["op"] == "conv")


@pytest.mark.parametrize("edit, field", [
    (lambda m: _integer_sg(m)["memory"].update(arena_bytes=10 ** 12), "memory"),
    (lambda m: _conv(m)["attrs"].update(strides=[0, 1]), "attrs.strides"),
    (lambda m: _conv(m)["attrs"]["epilogue"].update(shift=5000), "epilogue"),
    (lambda m: _conv(m)["attrs"]["epilogue"].update(zp=300), "epilogue.zp"),
    (lambda m: _conv(m)["attrs"].update(kernel=[5, 5]), "blobs.w"),
    (lambda m: _conv(m).update(inputs=["no_such_tensor"]), "inputs"),
    (lambda m: m["target"].update(fingerprint="0x1"), "target.fingerprint"),
    (lambda m: m["inputs"][0].update(shape=[1, 3, 100000, 100000]), "inputs[0]"),
    (lambda m: m.update(unknown_field=1), "unknown_field"),
    (lambda m: m["tensors"][next(iter(m["tensors"]))].update(shape=[2 ** 40, 2 ** 40]), "tensors"),
])
def test_schema_refuses_with_the_field_named(samples, work, edit, field):
    path = _resealed(samples, work, edit)
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(path)
    assert err.value.code == "NPF_COMPILE_CORRUPT" and field in err.value.message, err.value.message


def test_newer_minor_version_ignores_unknown_fields_and_reserved_bytes_must_be_zero(samples, work):
    newer = max(manifest_schema.READABLE.values()) + 1  # newer than this reader's, whatever the sample's major
    path = _resealed(samples, work, lambda m: m.update(added_in_1_1={"x": 1}), minor=newer)
    CompiledModel.load(path)
    path = _resealed(samples, work, lambda m: None, reserved=b"\x01" + b"\x00" * 7)
    with pytest.raises(NpuflowError) as err:
        CompiledModel.load(path)
    assert "reserved" in err.value.message


def test_nan_and_deep_nesting_in_a_manifest_are_refused(samples, work):
    data = samples[sorted(samples)[0]]
    manifest = bf.manifest_of(data)
    manifest["notes"] = [float("nan")]
    deep = json.dumps(bf.manifest_of(data))[:-1] + ',"deep":' + "[" * 100000 + "]" * 100000 + "}"
    for body in (json.dumps(manifest).encode(), deep.encode()):
        path = work / "nan.npuf"
        path.write_bytes(bf.reseal_body(data, body))
        with pytest.raises(NpuflowError) as err:
            CompiledModel.load(path)
        assert err.value.code == "NPF_COMPILE_CORRUPT"


# --- configs -------------------------------------------------------------------------------------

_QUANT = QuantConfig().model_dump(mode="json")


@fuzz(400)
@given(rng=st.randoms(use_true_random=False))
def test_build_yaml_accepted_or_refused_with_a_code(rng, work):
    path = work / "build.yaml"
    path.write_text(yaml.safe_dump(bf.mutate_mapping(rng, bf.build_doc(work))))
    _accepted_or_coded(lambda: load_config(path))


@fuzz(400)
@given(rng=st.randoms(use_true_random=False), extra=JSON)
def test_quant_config_accepted_or_refused_with_a_code(rng, extra):
    doc = bf.mutate_mapping(rng, _QUANT)
    if isinstance(extra, dict):
        doc.update({f"x_{k}": v for k, v in extra.items()})
    _accepted_or_coded(lambda: QuantConfig.from_dict(doc))
