"""Fuzzing the readers of hostile input: ONNX models, ``.npuf`` files, build YAML, quantize config.

    python benchmarks/bench_fuzz.py [--cases N] [--cli N]   # writes benchmarks/results/fuzz.md

Every case must end in one of two ways: accepted, or refused with a coded ``NpuflowError``.  Any
other exception is a finding (counted by type, with an example).  The mutators live here and are
shared with ``tests/unit/test_fuzz_inputs.py``, which runs a few thousand cases of the same kinds in
the test suite; this script runs more, and also samples the CLI (a traceback there is a finding).

Mutations:

* ONNX (the bundled MNIST CNN through ``npuflow.check``): bit flips and truncation of the file,
  attribute values and types, input shapes (huge, zero, negative, symbolic), IR versions, opsets,
  duplicate node outputs and initializers, dangling inputs, external-data locations (absolute,
  ``..``, missing, inside the folder).
* ``.npuf`` (compiled MNIST CNN, power-of-two and float-scale targets, through ``Session`` and
  ``info``'s ``describe``): raw byte flips/truncation, and manifest mutations *re-sealed* with valid
  checksums (the way ``artifact.serialize`` writes them) so that they reach the manifest schema.
* build YAML and quantize config: values of the wrong type, out of range, NaN/Inf, huge.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

from npuflow.compiler import artifact  # noqa: E402
from npuflow.errors import NpuflowError  # noqa: E402

MNIST = REPO / "examples" / "mnist_cnn.onnx"
RESULTS = REPO / "benchmarks" / "results" / "fuzz.md"

# --- ONNX mutations ------------------------------------------------------------------------------

#: One mutated model: a label (the mutation class) and the files to write into an empty folder; the
#: model is ``model.onnx`` there (other files: external data the model names).
OnnxCase = tuple[str, dict[str, bytes]]

HUGE = [0, -1, -7, 1 << 20, 100000, 1 << 31, 1 << 40, (1 << 63) - 1]


def _model_case(label: str, proto: onnx.ModelProto, **files: bytes) -> OnnxCase:
    return label, {"model.onnx": proto.SerializeToString(), **files}


def _byte_case(rng: random.Random, data: bytes) -> OnnxCase:
    b = bytearray(data)
    if rng.random() < 0.3:
        return "truncate", {"model.onnx": bytes(b[:rng.randrange(len(b))])}
    # flips concentrated in the graph structure (the first and last kilobytes: header, nodes, names)
    for _ in range(rng.randint(1, 4)):
        zone = rng.choice([range(0, min(len(b), 2048)), range(max(0, len(b) - 4096), len(b)), range(len(b))])
        b[rng.choice(zone)] ^= 1 << rng.randrange(8)
    return "bit flip", {"model.onnx": bytes(b)}


def _attr_case(rng: random.Random, proto: onnx.ModelProto) -> OnnxCase:
    node = rng.choice([n for n in proto.graph.node if n.attribute])
    a = rng.choice(node.attribute)
    kind = rng.randrange(5)
    name = a.name
    node.attribute.remove(a)
    if kind == 0:  # a string where a number is expected (group="abc")
        node.attribute.append(helper.make_attribute(name, "abc"))
    elif kind == 1:  # extreme integers
        value = rng.choice(HUGE)
        node.attribute.append(helper.make_attribute(name, [value] * rng.randint(1, 4) if rng.random() < .5 else value))
    elif kind == 2:  # a float where an int is expected
        node.attribute.append(helper.make_attribute(name, rng.choice([0.5, float("nan"), float("inf"), 1e300])))
    elif kind == 3:  # an empty list / a tensor
        node.attribute.append(helper.make_attribute(name, onnx.numpy_helper.from_array(
            __import__("numpy").zeros([2], "float32"))) if rng.random() < .5 else
            onnx.AttributeProto(name=name, type=onnx.AttributeProto.INTS))
    # kind 4: the attribute is dropped
    return _model_case(f"attribute {['string', 'extreme int', 'float', 'tensor/empty', 'dropped'][kind]}", proto)


def _shape_case(rng: random.Random, proto: onnx.ModelProto) -> OnnxCase:
    vi = rng.choice([*proto.graph.input, *proto.graph.output])
    dims = vi.type.tensor_type.shape.dim
    k = rng.randrange(len(dims))
    if rng.random() < 0.2:
        dims[k].dim_param = "N"
    else:
        dims[k].dim_value = rng.choice(HUGE)
    if rng.random() < 0.4:  # several large dimensions at once (1x3x100000x100000)
        for d in dims[1:]:
            d.dim_value = rng.choice([100000, 1 << 20, 3])
    return _model_case("input/output shape", proto)


def _structure_case(rng: random.Random, proto: onnx.ModelProto) -> OnnxCase:
    g = proto.graph
    kind = rng.randrange(8)
    if kind == 0:
        proto.ir_version = rng.choice([0, -1, 1, 2, 99, 1 << 40])
        return _model_case("IR version", proto)
    if kind == 1:
        proto.opset_import[0].version = rng.choice([0, -3, 1, 7, 10, 99, 1 << 40])
        return _model_case("opset", proto)
    if kind == 2:  # two nodes write the same tensor
        a, b = rng.sample(list(g.node), 2)
        b.output[0] = a.output[0]
        return _model_case("duplicate node output", proto)
    if kind == 3:  # two initializers of the same name
        g.initializer.append(copy.deepcopy(rng.choice(list(g.initializer))))
        return _model_case("duplicate initializer", proto)
    if kind == 4:  # a node reads a tensor nobody makes
        n = rng.choice([n for n in g.node if n.input])
        n.input[rng.randrange(len(n.input))] = "no_such_tensor"
        return _model_case("dangling input", proto)
    if kind == 5:  # an unknown op / domain
        n = rng.choice(list(g.node))
        n.op_type, n.domain = rng.choice([("NoSuchOp", ""), ("Conv", "com.evil"), ("", "")])
        return _model_case("unknown op", proto)
    if kind == 6:  # raw data of the wrong length
        t = rng.choice([t for t in g.initializer if t.raw_data])
        t.raw_data = t.raw_data[:rng.randrange(len(t.raw_data))]
        return _model_case("truncated raw data", proto)
    # a graph output that nothing makes, or none at all
    if rng.random() < 0.5:
        g.output[0].name = "nowhere"
    else:
        del g.output[:]
    return _model_case("graph output", proto)


def _external_case(rng: random.Random, proto: onnx.ModelProto) -> OnnxCase:
    t = rng.choice([t for t in proto.graph.initializer if t.raw_data])
    raw = t.raw_data
    location = rng.choice(["/etc/passwd", "../../../../etc/passwd", "sub/../../outside.bin", "missing.bin",
                           "weights.bin", "weights.bin", "/dev/zero", "."])
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", "length": str(len(raw))}
    if rng.random() < 0.3:
        entries[rng.choice(["offset", "length"])] = rng.choice(["-5", "abc", str(1 << 50)])
    for k, v in entries.items():
        t.external_data.add(key=k, value=v)
    return _model_case(f"external data {'inside' if location == 'weights.bin' else 'outside/missing'}",
                       proto, **{"weights.bin": raw})


_MAKERS: list[Callable[[random.Random, onnx.ModelProto], OnnxCase]] = [
    _attr_case, _shape_case, _structure_case, _external_case]


def onnx_case(rng: random.Random, data: bytes, base: onnx.ModelProto) -> OnnxCase:
    """One mutation of a model (``data``: its file bytes, ``base``: it parsed)."""
    if rng.random() < 0.35:
        return _byte_case(rng, data)
    return rng.choice(_MAKERS)(rng, copy.deepcopy(base))


def onnx_cases(n: int, seed: int = 0, path: Path = MNIST) -> Iterator[OnnxCase]:
    """``n`` mutated versions of the model at ``path``, deterministic for a seed."""
    rng = random.Random(seed)
    data = path.read_bytes()
    base = onnx.load_from_string(data)
    for _ in range(n):
        yield onnx_case(rng, data, base)


def write_case(folder: Path, files: dict[str, bytes]) -> Path:
    """Write a case into ``folder`` (a fresh subfolder, so ``..`` leads to an empty parent)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder / "model.onnx"


# --- .npuf mutations -----------------------------------------------------------------------------

def reseal(data: bytes, manifest: dict) -> bytes:
    """``data`` (a valid ``.npuf``) with its manifest replaced and every checksum recomputed, the
    way :func:`npuflow.compiler.artifact.serialize` writes them (blob bytes unchanged)."""
    return reseal_body(data, artifact._dumps(manifest))


def reseal_body(data: bytes, body: bytes) -> bytes:
    """:func:`reseal` with the manifest's bytes as given (JSON the writer would never produce)."""
    head = artifact._HEADER.unpack_from(data, 0)
    doff, dlen = head[6], head[7]
    blob_data = data[doff:doff + dlen]
    new_doff = artifact.HEADER_SIZE + len(body) + artifact._pad(artifact.HEADER_SIZE + len(body))
    file_len = new_doff + len(blob_data) + artifact.TRAILER_SIZE
    header = artifact._HEADER.pack(artifact.MAGIC, head[1], head[2], artifact.HEADER_SIZE, artifact.HEADER_SIZE,
                                   len(body), new_doff, len(blob_data), file_len, hashlib.sha256(body).digest(),
                                   head[10])
    content = header + body + b"\x00" * (new_doff - artifact.HEADER_SIZE - len(body)) + blob_data
    return content + hashlib.sha256(content).digest()


def manifest_of(data: bytes) -> dict:
    """The manifest of a valid ``.npuf`` (without the blob checks of opening it)."""
    length = artifact._HEADER.unpack_from(data, 0)[5]
    return json.loads(data[artifact.HEADER_SIZE:artifact.HEADER_SIZE + length])


def _paths(value, prefix=()) -> Iterator[tuple]:
    """Every path (tuple of keys/indices) to a value inside a JSON document."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replacements(rng: random.Random, old, manifest: dict) -> list:
    names = list(manifest["tensors"]) + list(manifest["blobs"])
    pool = [None, True, -1, 0, 1, 2, 7, 31, 63, 64, 200, -200, 1 << 31, 10 ** 12, -(10 ** 12), 1 << 70, 0.5, -0.0,
            1e308, "", "x", "int8", "float64", "object", "../../etc/passwd", [], {}, [0], [1, 2], [10 ** 6] * 4,
            rng.choice(names)]
    if isinstance(old, (int, float)) and not isinstance(old, bool):
        pool += [old + 1, old - 1, old * 2, -old, old * 1000]
    if isinstance(old, list) and old:
        pool += [old[:-1], old + old[-1:], old[::-1]]
    return pool


def _pick(rng: random.Random, doc) -> tuple[tuple, object]:
    """A random non-empty path into ``doc`` and the container holding its last key."""
    path = rng.choice([p for p in _paths(doc) if p])
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    return path, parent


def mutate_manifest(rng: random.Random, manifest: dict) -> tuple[str, dict]:
    """A copy of ``manifest`` with one value replaced, a key dropped, or a key added."""
    m = copy.deepcopy(manifest)
    path, parent = _pick(rng, m)
    key = path[-1]
    r = rng.random()
    label = "/".join(str(p) if not isinstance(p, int) else "#" for p in path[:6] if not str(p).startswith("/"))
    if r < 0.12 and isinstance(parent, dict):
        del parent[key]
        return f"drop {label}", m
    if r < 0.18 and isinstance(parent, dict):
        parent["unexpected_" + str(rng.randrange(3))] = 1
        return f"add key {label}", m
    if r < 0.24 and isinstance(parent, list) and len(parent) > 1:  # reorder (ops, subgraphs, dims)
        parent.reverse()
        return f"reorder {label}", m
    parent[key] = rng.choice(_replacements(rng, parent[key], m))
    return f"value {label}", m


def npuf_raw_case(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if rng.random() < 0.3:
        return bytes(b[:rng.randrange(len(b))])
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def compiled_samples(folder: Path) -> dict[str, bytes]:
    """``.npuf`` bytes of the bundled MNIST CNN and of the test suite's small conv net (concat,
    add, global pooling, flatten, fc) for a power-of-two and a float-scale target."""
    import numpy as np

    import npuflow
    from tests.unit.quant_nets import conv_net, samples

    rng = np.random.default_rng(0)
    models = {"mnist": (str(MNIST), [rng.random((1, 1, 28, 28), dtype=np.float32) for _ in range(4)]),
              "conv_net": (conv_net(), samples([1, 3, 8, 8]))}
    out = {}
    for name, (model, calib) in models.items():
        for target in ("DPUCZDX8G_ISA1_B4096", "cpu-int8"):
            q = npuflow.quantize(model, calib, target=target, warn=False)
            path = npuflow.compile(q.model, target).save(folder / f"{name}_{target}.npuf")
            out[f"{name} {target}"] = path.read_bytes()
    return out


def open_npuf(path: Path, run: bool = True) -> None:
    """What a user does with a file: a Session, ``npuflow info``'s description, and (``run``) one
    run on zeros of the declared inputs."""
    import numpy as np

    from npuflow.cli.info_cmd import describe  # imported lazily: the CLI is heavy
    from npuflow.compiler import CompiledModel
    from npuflow.runtime import Session

    session = Session(path)
    describe(CompiledModel.load(path))
    if run:
        session.run({t.name: np.zeros(t.shape, t.dtype) for t in session.get_inputs()})


# --- configs -------------------------------------------------------------------------------------

BAD_VALUES = [None, True, -1, 0, 1e12, -1e12, float("nan"), float("inf"), "", "x" * 5000, [], {}, [1, "a"],
              {"a": None}, "../../etc/passwd", "/etc/passwd", 1 << 70, -0.0, "1e400", "nan"]


def mutate_mapping(rng: random.Random, doc: dict) -> dict:
    """A copy of a config document with one value replaced (nested sections included)."""
    d = copy.deepcopy(doc)
    path, parent = _pick(rng, d)
    if rng.random() < 0.1 and isinstance(parent, dict):
        parent["unknown_" + str(rng.randrange(3))] = rng.choice(BAD_VALUES)
    else:
        parent[path[-1]] = rng.choice(BAD_VALUES)
    return d


# --- running -------------------------------------------------------------------------------------

class Tally:
    """Counts of accepted / coded / uncaught outcomes, with uncaught examples by exception type."""

    def __init__(self) -> None:
        self.accepted = 0
        self.accepted_labels: Counter[str] = Counter()
        self.coded: Counter[str] = Counter()
        self.uncaught: Counter[str] = Counter()
        self.examples: dict[str, str] = {}

    def run(self, label: str, fn: Callable[[], object]) -> None:
        try:
            fn()
        except NpuflowError as exc:
            self.coded[exc.code] += 1
        except Exception as exc:  # noqa: BLE001  (counting what escapes is the point)
            key = type(exc).__name__
            self.uncaught[key] += 1
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            self.examples.setdefault(key, f"{label} ({where}): {str(exc).splitlines()[0][:160] if str(exc) else ''}")
        else:
            self.accepted += 1
            self.accepted_labels[label] += 1

    @property
    def total(self) -> int:
        return self.accepted + sum(self.coded.values()) + sum(self.uncaught.values())

    def row(self, name: str) -> str:
        unc = sum(self.uncaught.values())
        return f"| {name} | {self.total} | {self.accepted} | {sum(self.coded.values())} | {unc} |"


def run_onnx(n: int, work: Path, seed: int = 0) -> Tally:
    import npuflow

    tally = Tally()
    for k, (label, files) in enumerate(onnx_cases(n, seed)):
        path = write_case(work / f"onnx{k}" / "a" / "b", files)
        tally.run(label, lambda: npuflow.check(str(path), "DPUCZDX8G_ISA1_B4096"))
    return tally


def run_npuf(n_raw: int, n_sealed: int, work: Path, samples: dict[str, bytes], seed: int = 0) -> tuple[Tally, Tally]:
    rng = random.Random(seed)
    raw, sealed = Tally(), Tally()
    path = work / "case.npuf"
    names = sorted(samples)
    for k in range(n_raw):
        path.write_bytes(npuf_raw_case(rng, samples[names[k % len(names)]]))
        raw.run("raw", lambda: open_npuf(path))
    for k in range(n_sealed):
        data = samples[names[k % len(names)]]
        label, m = mutate_manifest(rng, manifest_of(data))
        path.write_bytes(reseal(data, m))
        sealed.run(label, lambda: open_npuf(path))
    return raw, sealed


def run_cli(n: int, work: Path, seed: int = 1) -> Counter[str]:
    """``npuflow check`` on mutated models through the CLI: how many print a traceback."""
    out: Counter[str] = Counter()
    for k, (label, files) in enumerate(onnx_cases(n, seed)):
        path = write_case(work / f"cli{k}" / "a" / "b", files)
        p = subprocess.run([sys.executable, "-m", "npuflow", "check", str(path), "--target", "DPUCZDX8G_ISA1_B4096"],
                           capture_output=True, text=True, timeout=300, cwd=work)
        out["traceback" if "Traceback" in p.stderr + p.stdout else "exit 0" if p.returncode == 0 else "coded"] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=1000, help="cases per reader (ONNX, raw .npuf, re-sealed .npuf)")
    ap.add_argument("--cli", type=int, default=100, help="CLI samples of mutated ONNX models")
    args = ap.parse_args(argv)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        onnx_t = run_onnx(args.cases, work)
        samples = compiled_samples(work)
        raw, sealed = run_npuf(args.cases, args.cases, work, samples)
        configs = run_configs(args.cases, work)
        cli = run_cli(args.cli, work)
    lines = ["# Fuzzing results (`python benchmarks/bench_fuzz.py`)", "",
             f"{args.cases} cases per reader, seed 0, {time.time() - started:.0f} s on a shared 2-core machine.",
             "", "| reader | cases | accepted | coded refusals | uncaught exceptions |", "| --- | --- | --- | --- | --- |",
             onnx_t.row("ONNX loader (`npuflow.check`)"), raw.row("`.npuf` raw byte mutations (Session, info, one run)"),
             sealed.row("`.npuf` re-sealed manifest mutations (Session, info, one run)"),
             *[t.row(name) for name, t in configs.items()], "",
             f"CLI `npuflow check` on {args.cli} mutated models: " + ", ".join(f"{v} {k}" for k, v in sorted(cli.items())),
             ""]
    for name, t in [("ONNX", onnx_t), ("npuf raw", raw), ("npuf sealed", sealed), *configs.items()]:
        for key, count in t.uncaught.most_common():
            lines.append(f"- {name}: {count} x `{key}`, e.g. {t.examples[key]}")
        lines.append(f"- {name}: codes " + ", ".join(f"{c} {v}" for c, v in t.coded.most_common()))
    lines.append("- npuf sealed, accepted mutations by place (they load and run; most change only descriptive "
                 "fields, some change results within valid ranges): "
                 + ", ".join(f"{k} {v}" for k, v in sealed.accepted_labels.most_common(12)))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def run_configs(n: int, work: Path, seed: int = 2) -> dict[str, Tally]:
    """Mutated build YAML (``load_config``) and quantize configs (``QuantConfig`` from a mapping)."""
    import yaml

    from npuflow.build import load_config
    from npuflow.quant.config import QuantConfig

    rng = random.Random(seed)
    base = build_doc(work)
    quant_doc = QuantConfig().model_dump(mode="json")
    tallies = {"build YAML (`load_config`)": Tally(), "quantize config (`QuantConfig`)": Tally()}
    cfg = work / "build.yaml"
    for _ in range(n):
        cfg.write_text(yaml.safe_dump(mutate_mapping(rng, base)))
        tallies["build YAML (`load_config`)"].run("build", lambda: load_config(cfg))
        qdoc = mutate_mapping(rng, quant_doc)
        tallies["quantize config (`QuantConfig`)"].run("quant", lambda: QuantConfig.from_dict(qdoc))
    return tallies


def build_doc(work: Path) -> dict:
    """The bundled example's build YAML with absolute paths (so a copy anywhere still resolves)
    and its working folder inside ``work``."""
    import yaml

    doc = yaml.safe_load((REPO / "examples" / "mnist_dpu.yaml").read_text())
    doc["model_parameters"]["onnx_model"] = str(MNIST)
    doc["model_parameters"]["working_dir"] = str(work / "build_out")
    doc["calibration_parameters"]["cal_data_dir"] = str(REPO / "examples" / "mnist" / "calibration")
    return doc


if __name__ == "__main__":
    raise SystemExit(main())
