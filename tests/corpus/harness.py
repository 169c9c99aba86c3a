"""Run every stage of npuflow on one corpus model x target, as a user would, and check the invariants.

Each stage is one ``python -m npuflow ...`` subprocess.  A stage ends as:

* ``ok``: it did its job (exit status 0) and its invariants hold;
* ``refused``: a coded ``ERROR [NPF_...]`` refusal (the code is recorded);
* ``traceback``: "Traceback" in its output (a crash a user would see);
* ``wrong``: an invariant failed (an uncoded failure, a compiled model that does not run, integer
  tensors that differ from ONNX Runtime, a silent quantization collapse, ...);
* ``timeout``: it ran past the stage time limit;
* ``skipped``: a stage it needs did not succeed (not a result of its own).

The invariants are listed in ``docs/corpus.md``.  ``run_cell`` returns a :class:`Cell` (JSON-able).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from npuflow import ort_kernels, ort_session
from tests.corpus.registry import calibration_for
from tests.corpus.spec import CorpusModel

REPO = Path(__file__).resolve().parents[2]
STAGES = ("check", "quantize", "bad_calib", "compile", "run", "exact", "info", "perf", "bench", "analyze")
FAILURES = ("traceback", "wrong", "timeout")
OPTIONAL = ("bad_calib", "bench", "analyze")
CODE = re.compile(r"ERROR \[(NPF_[A-Z0-9_]+)\]")
#: quantized-vs-FP32 output cosine under which `quantize` must have warned.
COLLAPSE_COSINE = 0.95
#: largest accepted |compiled - ONNX Runtime| in integer steps, by the target's scale type.
LSB_TOLERANCE = {"power_of_two": 0, "float": 1}
#: the .npuf's outputs against ONNX Runtime on the quantized model: anything below is a broken
#: CPU part or output conversion (integer tensors are held to LSB_TOLERANCE instead).
OUTPUT_AGREEMENT = 0.99
#: share of the analyze stage's timeout given to ``analyze sensitivity --time-budget`` (the layer
#: scoring); the rest is for the quantization that precedes it and for loading.
ANALYZE_BUDGET_SHARE = 0.4


@dataclass
class Stage:
    status: str
    code: str = ""          # NPF_ code of a refusal
    detail: str = ""        # what failed, or the last line of the output
    seconds: float = 0.0


@dataclass
class Cell:
    model: str
    target: str
    stages: dict[str, Stage] = field(default_factory=dict)
    quant_cosine: float | None = None      # quantized ONNX (ORT) vs FP32 (ORT), calibration samples
    output_cosine: float | None = None     # compiled .npuf vs FP32 (ORT), first sample
    ort_cosine: float | None = None        # compiled .npuf vs the quantized ONNX (ORT), first sample
    max_lsb: int | None = None             # max |.npuf - ORT| over accelerator integer tensors
    scale_type: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    def failures(self) -> list[tuple[str, Stage]]:
        return [(name, s) for name, s in self.stages.items() if s.status in FAILURES]


@dataclass
class Options:
    n_calib: int = 32
    cosine_samples: int = 8          # calibration samples the quantize cosine is measured on
    stage_timeout: float = 600.0
    bench_frames: int = 3
    analyze_samples: int = 2
    analyze_timeout: float = 300.0


# --------------------------------------------------------------------------------------------
# running the CLI


def _tail(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def cli(args: list[str], timeout: float) -> tuple[Stage, str]:
    """Run ``python -m npuflow ARGS``; classify the outcome (ok/refused/traceback/wrong/timeout)."""
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    try:
        proc = subprocess.run([sys.executable, "-m", "npuflow", *map(str, args)], capture_output=True, text=True,
                              cwd=REPO, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return Stage("timeout", detail=f"over {timeout:.0f} s", seconds=time.monotonic() - start), ""
    seconds = time.monotonic() - start
    out = proc.stdout + proc.stderr
    if "Traceback" in out:
        at = out.index("Traceback")
        return Stage("traceback", detail=_tail(out[at:]), seconds=seconds), out
    codes = CODE.findall(out)
    if proc.returncode == 0:
        return Stage("ok", detail=_tail(proc.stdout), seconds=seconds), out
    if codes:
        line = next(ln for ln in out.splitlines() if CODE.search(ln))
        return Stage("refused", code=codes[0], detail=line.strip()[:300], seconds=seconds), out
    return Stage("wrong", detail=f"exit {proc.returncode} without an NPF_ code: {_tail(out)}", seconds=seconds), out


def _shape_flags(entry: CorpusModel, style: str) -> list[str]:
    """``--input-shape`` flags: ``pair`` (check: NAME DIMS) or ``eq`` (others: NAME=DIMS)."""
    flags = []
    for name, dims in entry.input_shapes.items():
        text = "x".join(map(str, dims))
        flags += ["--input-shape", name, text] if style == "pair" else ["--input-shape", f"{name}={text}"]
    return flags


# --------------------------------------------------------------------------------------------
# numbers the invariants need


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0 or not (np.isfinite(na) and np.isfinite(nb)):
        return 0.0
    return float(a @ b / (na * nb))


def ort_outputs(model_path: Path, samples: list[dict[str, np.ndarray]], level: str = "all") -> list[list[np.ndarray]]:
    """Every output of ``model_path`` under ONNX Runtime (one thread), per sample, at graph
    optimisation ``level`` ("all", ORT's default, or "disable")."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                     "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}[level]
    model = ort_kernels.exact_weights(onnx.load(str(model_path)))  # integer kernels: this CPU's exact form
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=ort_session.disabled(model) or None)  # float layers stay float
    names = {i.name for i in sess.get_inputs()}
    return [sess.run(None, {k: v for k, v in s.items() if k in names}) for s in samples]


def output_cosine(got: list[list[np.ndarray]], ref: list[list[np.ndarray]]) -> float:
    """The worst output's cosine, each output concatenated over the samples."""
    worst = 1.0
    for k in range(len(ref[0])):
        a = np.concatenate([np.ravel(g[k]) for g in got])
        b = np.concatenate([np.ravel(r[k]) for r in ref])
        worst = min(worst, cosine(a, b))
    return worst


def _file_stem(name: str) -> str:
    """The file name ``npuflow run --output-dir`` gives an output (characters other than
    letters, digits and ``._-`` become ``_``)."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def _warned_collapse(text: str) -> bool:
    return any("WARNING" in ln.upper() and "cosine" in ln.lower() for ln in text.splitlines())


# --------------------------------------------------------------------------------------------
# the cell


class _CellRun:
    """State of one model x target run: paths, stage results, and the invariant checks."""

    def __init__(self, entry: CorpusModel, target: str, work: Path, opts: Options, cache: Path) -> None:
        self.entry, self.target, self.work, self.opts = entry, target, work, opts
        self.cell = Cell(entry.name, target)
        self.model = entry.make(cache)
        self.samples = calibration_for(entry, self.model, opts.n_calib)
        self.calib = self._write_calib(work / "calib", self.samples)
        self.inputs = self._write_inputs(work / "inputs", self.samples[0])
        self.quantized = self.model if entry.quantized else work / "q" / "quantized_model.onnx"
        self.npuf = work / "model.npuf"

    # ---- files

    @staticmethod
    def _write_calib(root: Path, samples: list[dict[str, np.ndarray]]) -> Path:
        multi = len(samples[0]) > 1
        for i, sample in enumerate(samples):
            for name, arr in sample.items():
                folder = root / name if multi else root
                folder.mkdir(parents=True, exist_ok=True)
                np.save(folder / f"{i:04d}.npy", arr)
        return root

    @staticmethod
    def _write_inputs(root: Path, sample: dict[str, np.ndarray]) -> dict[str, Path]:
        root.mkdir(parents=True, exist_ok=True)
        paths = {}
        for i, (name, arr) in enumerate(sample.items()):
            paths[name] = root / f"input{i}.npy"
            np.save(paths[name], arr)
        return paths

    def _bad_calib(self) -> tuple[Path, str]:
        """A copy of the calibration folder whose first file has one dimension too many."""
        bad = self.work / "calib_bad"
        shutil.copytree(self.calib, bad, dirs_exist_ok=True)
        first = sorted(p for p in bad.rglob("*.npy"))[0]
        np.save(first, np.load(first)[None])
        return bad, first.name

    # ---- stages

    def record(self, name: str, stage: Stage) -> Stage:
        self.cell.stages[name] = stage
        return stage

    def skip(self, *names: str, because: str) -> None:
        for n in names:
            self.cell.stages.setdefault(n, Stage("skipped", detail=f"{because} did not succeed"))

    def check(self) -> dict | None:
        out = self.work / "inspect"
        stage, _ = cli(["check", self.model, "-t", self.target, "-o", out, "-v", "0",
                        *_shape_flags(self.entry, "pair")], self.opts.stage_timeout)
        self.record("check", stage)
        report = out / f"inspect_{self.target}.json"
        if stage.status == "ok" and report.exists():
            return json.loads(report.read_text())
        return None

    def quantize(self, bad_calib: bool = True) -> bool:
        if self.entry.quantized:
            self.record("quantize", Stage("skipped", detail="already quantized"))
            self.record("bad_calib", Stage("skipped", detail="already quantized"))
            return True
        stage, out = cli(["quantize", self.model, "-t", self.target, "--calib", self.calib, "-o", self.work / "q",
                          "--no-nodes", *_shape_flags(self.entry, "eq")], self.opts.stage_timeout)
        self.record("quantize", stage)
        if stage.status != "ok":
            self.skip("bad_calib", because="quantize")
            return False
        if bad_calib:
            self._check_bad_calib()
        try:
            few = self.samples[: self.opts.cosine_samples]
            self.cell.quant_cosine = output_cosine(ort_outputs(self.quantized, few), ort_outputs(self.model, few))
        except Exception as exc:  # noqa: BLE001  (ORT refusing the exported model is a finding)
            return self._wrong("quantize", f"ONNX Runtime cannot run quantized_model.onnx: {exc}"[:300])
        if self.cell.quant_cosine < COLLAPSE_COSINE and not _warned_collapse(out) and not self._on_the_grid():
            return self._wrong("quantize", f"silent collapse: output cosine {self.cell.quant_cosine:.4f} "
                                           f"< {COLLAPSE_COSINE} and no WARNING line naming the cosine")
        return True

    def _on_the_grid(self) -> bool:
        """Whether the accuracy check found every low output within one quantization step of FP32
        (``within_one_step`` of quant_report.json: a probability that never fires on the data)."""
        path = self.work / "q" / "quant_report.json"
        if not path.exists():
            return False
        report = json.loads(path.read_text())
        low = [o for o, c in report.get("calibration_outputs", {}).items() if c < COLLAPSE_COSINE]
        return bool(low) and set(low) <= set(report.get("within_one_step", []))

    def _check_bad_calib(self) -> None:
        bad, filename = self._bad_calib()
        stage, out = cli(["quantize", self.model, "-t", self.target, "--calib", bad, "-o", self.work / "q_bad",
                          "--no-nodes", *_shape_flags(self.entry, "eq")], self.opts.stage_timeout)
        if stage.status == "ok":
            stage = Stage("wrong", detail=f"a sample of the wrong shape ({filename}) was accepted",
                          seconds=stage.seconds)
        elif stage.status == "refused" and filename not in out:
            stage = Stage("wrong", code=stage.code, seconds=stage.seconds,
                          detail=f"refused with {stage.code} but the message does not name {filename}: {stage.detail}")
        self.record("bad_calib", stage)

    def _wrong(self, name: str, detail: str) -> bool:
        old = self.cell.stages[name]
        self.record(name, Stage("wrong", code=old.code, detail=detail, seconds=old.seconds))
        return False

    def compile(self, report: dict | None) -> bool:
        # a model quantized elsewhere keeps its dynamic dims: freeze them as a user would
        shapes = _shape_flags(self.entry, "pair") if self.entry.quantized else []
        stage, _ = cli(["compile", self.quantized, "-t", self.target, "-o", self.npuf, *shapes], self.opts.stage_timeout)
        self.record("compile", stage)
        if stage.status != "ok":
            return False
        if report is not None:
            lost = self._npu_nodes_on_cpu(report)
            if lost:
                return self._wrong("compile", f"{len(lost)} node(s) check places on the accelerator run on "
                                              f"the CPU after compile: {'; '.join(lost[:3])}")
        return True

    def _npu_nodes_on_cpu(self, report: dict) -> list[str]:
        """Nodes ``check`` put on the accelerator that ``compile`` left in a CPU subgraph (with its note)."""
        from npuflow.compiler import CompiledModel

        manifest = CompiledModel.load(self.npuf).manifest
        on_cpu = {n for sg in manifest["subgraphs"] if sg.get("engine") == "onnx" for n in sg.get("nodes", [])}
        notes = {note.split(" ", 1)[0]: note for note in manifest.get("notes", [])}
        # the float passes rename a few nodes (an inlined If branch's Squeeze takes the If's name);
        # the tensor a node writes keeps its name, so a node is found by its outputs too
        writer = {o: n.name for n in onnx.load(self.quantized).graph.node for o in n.output if o}
        lost = []
        for n in report["nodes"]:
            if n["device"] != "NPU" or n["op_type"] in ("QuantizeLinear", "DequantizeLinear"):
                continue
            names = {n["name"], *(writer[o] for o in n.get("outputs", []) if o in writer)}
            cpu = sorted(names & on_cpu)
            if cpu:
                lost.append(notes.get(cpu[0], f"{n['name']} ({n['op_type']})"))
        return lost

    def run(self) -> bool:
        args = ["run", self.npuf, "--output-dir", self.work / "out", "--dump", self.work / "dump", "--target", self.target]
        for name, path in self.inputs.items():
            args += ["--input", f"{name}={path}"]
        stage, _ = cli(args, self.opts.stage_timeout)
        if stage.status == "refused":
            stage = Stage("wrong", code=stage.code, seconds=stage.seconds,
                          detail=f"compiled, but run refused: {stage.detail}")
        self.record("run", stage)
        if stage.status != "ok":
            return False
        got = [[np.load(self.work / "out" / f"{_file_stem(n)}.npy") for n in self._output_names()]]
        if not self.entry.quantized:
            self.cell.output_cosine = output_cosine(got, ort_outputs(self.model, self.samples[:1]))
        # ONNX Runtime runs a QDQ model two ways that need not agree: "disable" in float32 (the
        # reference the integer tensors are held to), "all" with Q/DQ groups fused into its QLinear
        # kernels (layout_cdla on DPUCAHX8L_ISA0: the two differ at cosine 0.907 and the .npuf equals
        # "disable" bit for bit); a broken CPU part or output conversion agrees with neither
        self.cell.ort_cosine = max(output_cosine(got, ort_outputs(self.quantized, self.samples[:1], level))
                                   for level in ("disable", "all"))
        return True

    def _output_names(self) -> list[str]:
        return [o.name for o in onnx.load(str(self.model), load_external_data=False).graph.output]

    def exact(self) -> None:
        """The run against ONNX Runtime on the quantized model: every accelerator integer tensor of
        the dump (within ``LSB_TOLERANCE``) and the outputs (cosine >= ``OUTPUT_AGREEMENT``)."""
        from npuflow.compiler import CompiledModel
        from tests.compile_check import integer_tensors

        start = time.monotonic()
        compiled = CompiledModel.load(self.npuf)
        self.cell.scale_type = compiled.manifest["target"]["scale_type"]
        names = integer_tensors(compiled)
        try:
            problems = self._integer_differences(names) if names else []
        except Exception as exc:  # noqa: BLE001  (ORT refusing the quantized model is a finding)
            problems = [f"comparison with ONNX Runtime failed: {type(exc).__name__}: {exc}"[:300]]
        if self.cell.ort_cosine is not None and self.cell.ort_cosine < OUTPUT_AGREEMENT:
            problems.append(f"outputs differ from ONNX Runtime on the quantized model: cosine "
                            f"{self.cell.ort_cosine:.4f} (integer tensors: max {self.cell.max_lsb} LSB)")
        seconds = time.monotonic() - start
        if problems:
            self.record("exact", Stage("wrong", detail="; ".join(problems[:3]), seconds=seconds))
        else:
            self.record("exact", Stage("ok", detail=f"max {self.cell.max_lsb} LSB over {len(names)} integer "
                                                    f"tensors, output cosine {self.cell.ort_cosine:.6f}",
                                       seconds=seconds))

    def _integer_differences(self, names: list[str]) -> list[str]:
        """Compare with ORT (``tests/compile_check.py``); sets ``max_lsb``; returns what breaks the invariant.

        Power-of-two targets: the run's dump, end to end (ORT's float execution equals the integer
        program bit for bit).  Float-scale targets: each accelerator op fed ORT's own inputs
        (``compare_layerwise_with_ort``, ORT at both optimisation levels), so that one LSB of
        rounding carried through a steep LUT (sigmoid) is not counted as that op's error.
        """
        from npuflow.model import load
        from tests.compile_check import compare_layerwise_with_ort, reference_values

        model = onnx.load(str(self.quantized))
        if self.entry.quantized and self.entry.input_shapes:  # frozen as compile froze it
            model = load(model, self.entry.input_shapes)
        feeds = {k: v for k, v in self.samples[0].items() if k in {i.name for i in model.graph.input}}
        if self.cell.scale_type != "power_of_two":
            diffs = compare_layerwise_with_ort(model, feeds, self.target)
        else:
            index = json.loads((self.work / "dump" / "index.json").read_text())
            ref = reference_values(model, feeds, names, self.target, "disable")
            diffs = {n: int(np.abs(np.load(self.work / "dump" / index[n]).astype(np.int64)
                                   - ref[n].astype(np.int64)).max(initial=0)) for n in names}
        where = max(diffs, key=diffs.get, default="")
        self.cell.max_lsb = diffs.get(where, 0)
        tol = LSB_TOLERANCE[self.cell.scale_type]
        if self.cell.max_lsb > tol:
            return [f"{self.cell.max_lsb} LSB at {where} (allowed {tol}; {len(diffs)} tensors)"]
        return []

    def info(self) -> None:
        stage, out = cli(["info", self.npuf, "--json"], self.opts.stage_timeout)
        if stage.status == "ok":
            try:
                doc = json.loads(out[out.index("{"):])
                if not doc.get("subgraphs"):
                    stage = Stage("wrong", detail="info --json lists no subgraph", seconds=stage.seconds)
            except ValueError as exc:
                stage = Stage("wrong", detail=f"info --json is not JSON: {exc}", seconds=stage.seconds)
        self.record("info", stage)

    def perf(self) -> None:
        stage, _ = cli(["perf", self.npuf, "-t", self.target, "-o", self.work / "perf"], self.opts.stage_timeout)
        if stage.status == "ok":  # a report of 0 ms, or with a part it could not time, is no estimate
            problems = []
            for path in sorted((self.work / "perf").rglob("*.json")):
                doc = json.loads(path.read_text())
                if not doc.get("latency_ms"):
                    problems.append(f"{path.name}: latency {doc.get('latency_ms')} ms")
                problems += [f"{path.name}: {n}" for n in doc.get("notes", []) if "could not be timed" in n]
            if problems:
                stage = Stage("wrong", detail="; ".join(problems), seconds=stage.seconds)
        self.record("perf", stage)

    def bench(self) -> None:
        stage, _ = cli(["bench", self.npuf, "--frame-count", str(self.opts.bench_frames), "--thread-num", "1"],
                       self.opts.stage_timeout)
        self.record("bench", stage)

    def analyze(self) -> None:
        if self.entry.quantized:
            self.record("analyze", Stage("skipped", detail="already quantized"))
            return
        # the command's own --time-budget (default 300 s) bounds only the layer scoring, after a full
        # quantization: left at its default it outlasts the stage's timeout on any model big enough
        budget = f"{self.opts.analyze_timeout * ANALYZE_BUDGET_SHARE:.0f}"
        stage, _ = cli(["analyze", "sensitivity", self.model, "-t", self.target, "--calib", self.calib,
                        "--samples", str(self.opts.analyze_samples), "--json", self.work / "sensitivity.json",
                        "--time-budget", budget, *_shape_flags(self.entry, "eq")], self.opts.analyze_timeout)
        self.record("analyze", stage)


def run_cell(entry: CorpusModel, target: str, work: Path, opts: Options | None = None,
             cache: Path | None = None, skip: tuple[str, ...] = ()) -> Cell:
    """Run every stage of ``entry`` on ``target`` in the empty folder ``work``; return the cell.

    ``skip`` may name the stages nothing else depends on (``OPTIONAL``), to save time on big models.
    """
    from tests.fixture_models import CACHE

    unknown = set(skip) - set(OPTIONAL)
    if unknown:
        raise ValueError(f"only {OPTIONAL} can be skipped, not {sorted(unknown)}")
    opts = opts or Options()
    work.mkdir(parents=True, exist_ok=True)
    r = _CellRun(entry, target, work, opts, cache or CACHE)
    report = r.check()
    if not r.quantize(bad_calib="bad_calib" not in skip):
        r.skip("compile", "run", "exact", "info", "perf", "bench", because="quantize")
    elif not r.compile(report) and r.cell.stages["compile"].status != "wrong":
        r.skip("run", "exact", "info", "perf", "bench", because="compile")
    else:
        r.info()
        if r.run():
            r.exact()
        else:
            r.skip("exact", because="run")
        r.perf()
        if "bench" not in skip:
            r.bench()
    if "analyze" not in skip:
        r.analyze()
    for name in skip:
        r.record(name, Stage("skipped", detail="not run (--skip)"))
    r.cell.stages = {s: r.cell.stages[s] for s in STAGES if s in r.cell.stages}
    return r.cell

