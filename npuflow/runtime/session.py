"""``Session``: load a compiled model and run it (the role of VART's graph runner / ``hrt``).

``Session(path_or_compiled, target=None, model=None)`` verifies the ``.npuf`` (coded errors,
nothing run on a damaged file), picks ``model`` from a packed file (``npuflow pack``), refuses a
model compiled for another fingerprint when a target is given, and prepares one executor per
subgraph.  ``run(inputs)`` validates names, dtypes and shapes,
then runs the subgraphs in order; it holds no per-call state on the session, so one session
may be shared by many threads and gives the same bytes as a single-threaded run.

Listeners (``add_listener``) receive one :class:`SubgraphEvent` per subgraph run (per group of
subgraphs where CPU tables between accelerator subgraphs were spliced into one integer program,
:mod:`.merge`), with ``time.perf_counter_ns()`` start/end stamps and the thread id, for
benchmarks and traces.
Dump mode (``run(..., dump_dir=DIR)``) writes every integer tensor as ``DIR/<name>.npy`` with
names as in ``quantized_model.onnx`` (``/`` and other unsafe characters become ``_``) and an
``index.json`` mapping tensor names to files, like Vitis AI's ``XLNX_ENABLE_DUMP``.
``run_op(name, inputs)`` runs one accelerator op on given integer inputs (layer-wise checks).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ..errors import NpuflowError
from ..model import write_atomic
from ..targets import Target, load_target, same_fingerprint
from ..compiler.compiled import CompiledModel, shape_sets_text
from . import joined, merge
from .coverage import CoverageCounter, InputCoverage
from .executors import IntegerExecutor, OnnxExecutor, return_freed_heap
from .fused import FusedRun
from .plugin_executor import PluginExecutor
from .runner import Runner, TensorInfo

#: How another input size is compiled, for ``NPF_RUNTIME_INPUT_SHAPE``'s / ``NPF_RUNTIME_SHAPE_TOO_LARGE``'s
#: hint (``npuflow.ort.InferenceSession``, which compiles the model itself, names its own argument).
RESIZE_ONE = "npuflow compile --input-shape NAME DIMS, in Python npuflow.compile(..., input_shapes={'NAME': DIMS})"
RESIZE_SETS = ("repeat --input-shape NAME DIMS in npuflow compile, one per shape set; in Python "
               "npuflow.compile(..., input_shapes=[{'NAME': DIMS}, ...]), a dict per shape set")


@dataclass(frozen=True)
class SubgraphEvent:
    """One subgraph execution, as seen by listeners; where ``run`` ran several subgraphs as one
    integer program (:mod:`.merge`), one event for them all: ``subgraphs`` lists them."""

    subgraph_id: int
    name: str
    device: str
    engine: str
    thread_id: int
    start_ns: int
    end_ns: int
    subgraphs: tuple[int, ...] = ()

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


Listener = Callable[[SubgraphEvent], None]


_BLAS_LOCK = threading.Lock()
_blas_limit: list = []


def set_blas_threads(n: int) -> None:
    """Limit the BLAS library numpy uses to ``n`` threads, for the whole process.

    The integer executor runs many small matrix products; a multi-threaded BLAS pays thread
    wake-ups on each one and collapses when the machine is busy (measured: 6x slower on a loaded
    2-core machine).  Throughput comes from running frames on several threads instead, like
    VART's one runner per thread.  ``Session(..., blas_threads=None)`` leaves BLAS alone.

    Where the environment already gives every BLAS library numpy may load ``n`` threads
    (:func:`blas_env_threads`) and no limit was set here before, nothing is done: importing and
    running ``threadpoolctl`` held 0.12 MiB for the process's life (issue 19, peak memory).
    """
    if not _blas_limit and blas_env_threads() == n:
        return
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK:
        _blas_limit[:] = [threadpool_limits(limits=n, user_api="blas")]


#: The variables a BLAS library numpy may load reads its thread count from, each before
#: ``OMP_NUM_THREADS`` (OpenBLAS: its own, then GotoBLAS's; MKL; BLIS).
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")


def blas_env_threads() -> int | None:
    """The BLAS thread count the environment gives every library of :data:`BLAS_THREAD_VARS` (each
    its own variable, else ``OMP_NUM_THREADS``), or None where they differ or one is unset.  The
    libraries read it when they load, so this is their count in a process started with it; one
    set inside the process after numpy's import is taken as theirs though no library read it
    (such a process limits BLAS itself: ``threadpoolctl.threadpool_limits``)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    said = {os.environ.get(var, omp) for var in BLAS_THREAD_VARS}
    value = said.pop() if len(said) == 1 else None
    return int(value) if value is not None and value.strip().isdigit() else None


def padded(a: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``a`` with zeros appended at the end of every dimension smaller than ``shape``: how a model
    compiled for several shape sets runs an input smaller than the program :meth:`Session.select`
    picks (``compare`` feeds the float model the same values)."""
    return a if a.shape == tuple(shape) else np.pad(a, [(0, w - g) for g, w in zip(a.shape, shape)])


#: Longest dump file stem: file systems refuse names over 255 bytes, and TensorFlow exports name
#: tensors by their whole op path (basic-pitch's ``nmp.onnx``: 378 characters, an ``OSError``).
MAX_DUMP_STEM = 160


def _safe_name(name: str) -> str:
    """The dump file stem of a tensor: its name in portable characters, a long one cut and told
    apart by a hash of the whole name."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"
    if len(stem) <= MAX_DUMP_STEM:
        return stem
    return f"{stem[:MAX_DUMP_STEM - 17]}_{hashlib.sha256(name.encode()).hexdigest()[:16]}"


class _Program:
    """The executors of one compiled shape set (a ``.npuf`` holds one, or several)."""

    def __init__(self, manifest: dict, blob: Callable[[str], np.ndarray | bytes], threads: int,
                 cpu_threads: int | None, fuse: bool, release: Callable[[], object] = return_freed_heap) -> None:
        """``release`` gives back what a build read and freed, after the CPU subgraphs' sessions,
        before each fused run's ONNX Runtime session is created and after each integer program's
        build, so that neither that creation nor the next build grows beside it:
        ``Session``'s drops the mapped file's pages the blobs were read from (PP-OCRv4 rec's CTC
        head: 3.2 MB) and the C heap's free pages."""
        self.subgraphs = manifest["subgraphs"]
        self._tensors, self._blob, self._threads, self._fuse = manifest["tensors"], blob, threads, fuse
        self._release = release
        self._lock = threading.Lock()
        #: while the load joins steps (:mod:`.joined`): stored fused runs are opened once it is known
        #: which run alone (a run that joins another graph never opens its own session)
        self._defer = fuse
        #: per subgraph; an integer subgraph's executor is built when it first runs alone
        self._executors: list[IntegerExecutor | OnnxExecutor | PluginExecutor | None] = []
        for sg in self.subgraphs:
            if sg["engine"] == "integer":
                self._executors.append(None)
            elif sg["engine"] == "plugin":
                self._executors.append(PluginExecutor(sg, blob))
            else:
                self._executors.append(OnnxExecutor(sg, lambda sg=sg: blob(sg["onnx"]),
                                                    threads if cpu_threads is None else cpu_threads, lookup=fuse,
                                                    release=release))
        release()  # the CPU subgraphs' parses and blobs, before the integer programs' builds
        outputs = {o["name"] for o in manifest["outputs"]}
        #: what ``run`` executes in turn: with ``fuse``, CPU tables between integer programs are
        #: spliced into them (:mod:`.merge`)
        self.steps = (merge.steps(self.subgraphs, self.executor, self._tensors, blob, outputs, threads, release,
                                  defer=True) if fuse
                      else [merge.Step(self.executor(k), (k,), tuple(sg["inputs"]))
                            for k, sg in enumerate(self.subgraphs)])
        if fuse:  # consecutive steps of one ONNX Runtime graph each as one session (:mod:`.joined`)
            self.steps = joined.steps(self.steps, self.subgraphs, outputs, threads, release)
            for step in self.steps:
                if isinstance(step.executor, IntegerExecutor):
                    step.executor.open()
            self._defer = False
        #: per step, the tensors no later step reads and no caller gets as a model output: ``run``
        #: drops them once that step has run, as ONNX Runtime frees a model's dead tensors, so
        #: that a frame's boundary tensors are not all resident at its last step
        self.frees = _last_reads(self.steps, outputs)
        self.outputs = outputs
        self.inputs = {i["name"]: tuple(i["shape"]) for i in manifest["inputs"]}
        self.elements = sum(int(np.prod(s)) for s in self.inputs.values())
        self.input_infos = [TensorInfo(i["name"], tuple(i["shape"]), i["dtype"], i.get("quant")) for i in manifest["inputs"]]
        self.output_infos = [TensorInfo(o["name"], tuple(o["shape"]), o["dtype"], o.get("quant"))
                             for o in manifest["outputs"]]

    def executor(self, k: int) -> IntegerExecutor | OnnxExecutor | PluginExecutor:
        """Subgraph ``k``'s own executor (runners, ``run_subgraph``, ``run_op``)."""
        if self._executors[k] is None:
            with self._lock:
                if self._executors[k] is None:
                    self._executors[k] = IntegerExecutor(self.subgraphs[k], self._tensors, self._blob,
                                                         threads=self._threads, fuse=self._fuse,
                                                         release=self._release, defer=self._defer)
                    self._release()  # the build's graph, bounds and blobs, before the next one's
        return self._executors[k]


class _OneRun:
    """A model whose frame is one ONNX Runtime run: one program, one step, one fused run that takes
    the model's inputs and makes its outputs in order (MNIST, on both targets).

    ``Session.run`` calls it first when no listener, dump or output selection asks for the general
    path: it checks each input as ``_validate`` does (a dict of exactly the model's inputs, each a
    ``numpy.ndarray`` of the compiled dtype and shape) and feeds the arrays to the fused run's
    session as they come, without the step loop, the executor's and the fused run's dictionaries
    or the output selection of a general frame.  A strided view goes as it is: ONNX Runtime reads
    a non-contiguous array through a contiguous copy of its own, what the general path's
    ``np.ascontiguousarray`` makes.  Anything else it does not accept (a missing or unknown name,
    another dtype or shape, a list, a ``Mapping`` that is not a dict) goes to the general path,
    which pads or refuses it with its coded error.

    The checks touch as little of numpy as they can: on a frame after an idle (a request to a
    server, the benchmark's protocol) each C function a frame calls for the first time in a while
    costs cache misses, and numpy's dtype comparison and ``flags`` object were measured at 3-4 µs
    each there (``docs/runtime-measurements.md``, "Per-frame overhead after an idle").  A dtype is
    compared by identity first (numpy's built-in dtypes are single objects), by value only where
    that fails.
    """

    def __init__(self, run: FusedRun, inputs: list["TensorInfo"], output_names: list[str]) -> None:
        self.run = run
        self.output_names = output_names
        feed = dict(zip(run.inputs, run.feed_names))
        #: per model input: its name, the fused run's feed name for it, the dtype and shape it must have
        self.checks = tuple((t.name, feed[t.name], np.dtype(t.dtype), tuple(t.shape)) for t in inputs)
        #: ``frame(inputs)``: the frame's outputs, or None where ``inputs`` need the general path
        self.frame = _frame(run, self.checks, tuple(output_names))

    @classmethod
    def of(cls, program: "_Program", output_names: list[str]) -> "_OneRun | None":
        """The program's one run, or None where a frame is more than one fused run of the model's inputs."""
        executor = program.steps[0].executor if len(program.steps) == 1 else None
        run = executor.single if isinstance(executor, IntegerExecutor | joined.Joined) else None
        names = {t.name for t in program.input_infos}
        if run is None or list(run.outputs) != output_names or not set(run.inputs) == names == set(program.inputs):
            return None
        return cls(run, program.input_infos, output_names)


def _frame(run: FusedRun | joined.Joined, checks: tuple, outputs: tuple[str, ...]) -> Callable[[object], dict | None]:
    """:class:`_OneRun`'s frame as a function whose checks and names are its own variables: a
    method reading them from its instance measured 8 µs slower on a frame after an idle (class
    docstring); ``run.run_fed`` is looked up on each call, so the run's own method runs."""
    count, ndarray = len(checks), np.ndarray

    def frame(inputs: object) -> dict[str, np.ndarray] | None:
        if type(inputs) is not dict or len(inputs) != count:
            return None
        feeds = {}
        for name, feed, dtype, shape in checks:
            a = inputs.get(name)
            if type(a) is not ndarray or (a.dtype is not dtype and a.dtype != dtype) or a.shape != shape:
                return None
            feeds[feed] = a
        return dict(zip(outputs, run.run_fed(feeds)))

    return frame


def _last_reads(steps: Sequence[merge.Step], outputs: set[str]) -> list[tuple[str, ...]]:
    """Per step, the inputs it is the last step to read, model outputs left out."""
    last = {name: k for k, step in enumerate(steps) for name in step.inputs}
    frees: list[list[str]] = [[] for _ in steps]
    for name, k in last.items():
        if name not in outputs:
            frees[k].append(name)
    return [tuple(names) for names in frees]


#: The target the runtime serves when ``Session`` is given none (a board's DPU, a CI runner's target).
TARGET_ENV = "NPUFLOW_TARGET"


def check_sha256(model: str | os.PathLike | CompiledModel, expected: str) -> None:
    """Refuse a ``.npuf`` whose bytes do not hash to ``expected`` (hex sha256, any case)."""
    path = model.source if isinstance(model, CompiledModel) else Path(model)
    want = expected.strip().lower()
    if path is None or len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise NpuflowError("NPF_RUNTIME_HASH_MISMATCH", path=str(path), expected=expected,
                           got="(no file)" if path is None else "(not a sha256: 64 hex digits)")
    got = file_sha256(Path(path))
    if got != want:
        raise NpuflowError("NPF_RUNTIME_HASH_MISMATCH", path=str(path), expected=want, got=got)


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks (coded errors for a missing or unreadable file)."""
    if not path.is_file():
        raise NpuflowError("NPF_COMPILE_FILE_NOT_FOUND", path=str(path))
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise NpuflowError("NPF_COMPILE_CORRUPT", path=str(path), reason=exc.strerror or str(exc)) from None
    return digest.hexdigest()


def _reopened(compiled: Path | CompiledModel, options: dict) -> "Session":
    """A pickled :class:`Session` opened again (module level: pickle finds it by name)."""
    return Session(compiled, **options)


class Session:
    """Runs a compiled model: integer executor for accelerator subgraphs, ONNX Runtime for CPU."""

    def __init__(self, path: str | os.PathLike | CompiledModel, /, target: str | Target | None = None,
                 *, threads: int = 1, cpu_threads: int | None = None, blas_threads: int | None = 1,
                 fuse: bool = True, expected_sha256: str | None = None, model: str | None = None) -> None:
        """``path``: a ``.npuf`` file or what :func:`npuflow.compile` returns.
        ``threads``: ONNX Runtime intra-op threads of the fused integer runs and of the CPU
        subgraphs (``cpu_threads`` overrides the latter); ``blas_threads``: numpy's BLAS threads
        for the whole process (:func:`set_blas_threads`; None leaves them); ``fuse=False`` runs every accelerator op
        as its kernel and every CPU subgraph in ONNX Runtime (the reference the fused runs and the
        CPU subgraphs' tables equal bit for bit).

        ``target`` is the accelerator this runtime serves (default ``$NPUFLOW_TARGET``, the way a
        board's runtime knows its DPU): a file compiled for another fingerprint is refused, as
        VART refuses one.  ``expected_sha256`` pins the file's content (a deployment manifest's
        hash): any other bytes are refused before the file is parsed.  ``model`` picks one
        model of a packed file (required when it holds several, as VART's graph runner takes a
        subgraph and ``hrt_model_exec --model_name`` a packed model)."""
        if not isinstance(path, str | os.PathLike | CompiledModel):  # a QuantizedModel, an onnx.ModelProto
            raise NpuflowError("NPF_COMPILE_NOT_NPUF", path=f"a {type(path).__name__}", reason="a Session runs a .npuf "
                               "path or what npuflow.compile returns: npuflow.Session(npuflow.compile(quantized, target))")
        for option, value in (("threads", threads), ("cpu_threads", cpu_threads), ("blas_threads", blas_threads)):
            unset = value is None and option != "threads"  # "2", 0, -1: a TypeError in fused.py, or passed on
            if not unset and (type(value) is bool or not isinstance(value, int | np.integer) or value < 1):
                raise NpuflowError("NPF_RUNTIME_BAD_THREADS", option=option, value=value)
        if blas_threads is not None:
            set_blas_threads(blas_threads)
        if expected_sha256 is not None:
            check_sha256(path, expected_sha256)
        # ops parsed when read: a load whose fused plans are stored reads none (``compiler/lazy_ops.py``)
        self.compiled = path if isinstance(path, CompiledModel) else CompiledModel.load(path, model, lazy_ops=True)
        target = target if target is not None else os.environ.get(TARGET_ENV) or None
        if target is not None:
            tgt = target if isinstance(target, Target) else load_target(target)
            if not same_fingerprint(tgt.fingerprint, self.compiled.fingerprint):
                raise NpuflowError("NPF_RUNTIME_TARGET_MISMATCH", compiled=self.compiled.target_name,
                                   compiled_fp=self.compiled.fingerprint, target=tgt.name,
                                   target_fp=tgt.fingerprint)
        self._programs = [_Program(p, self.compiled.blob, threads, cpu_threads, fuse, self._release_read)
                          for p in self.compiled.programs]
        first = self._programs[0]
        # the first program is the one runners(), run_op() and the description refer to
        self._subgraphs = first.subgraphs
        self._inputs, self._outputs = first.input_infos, first.output_infos
        self._output_names = [t.name for t in self._outputs]
        #: per input, the dimensions every program shares (the others select a program)
        self._fixed_dims = {t.name: [k for k in range(len(t.shape))
                                     if len({p.inputs[t.name][k] for p in self._programs}) == 1] for t in self._inputs}
        #: per input, its numpy dtype, built once: ``run`` checks every frame against it
        self._dtypes = {t.name: np.dtype(t.dtype) for t in self._inputs}
        #: a frame that is one ONNX Runtime run, called without the general path (:class:`_OneRun`)
        self._one_run = _OneRun.of(first, self._output_names) if fuse and len(self._programs) == 1 else None
        self._frame = self._one_run.frame if self._one_run is not None else None
        #: the values each run's quantized float inputs lose to clipping (:mod:`.coverage`); None: no such input
        self._coverage = CoverageCounter(self.compiled.manifest["inputs"]) or None
        self._listeners: list[Listener] = []
        self._listener_lock = threading.Lock()
        #: what a pickled Session reopens with (:meth:`__reduce__`)
        self._options = dict(target=target, threads=threads, cpu_threads=cpu_threads, blas_threads=blas_threads,
                             fuse=fuse, model=model)
        self._release_read()

    def _release_read(self) -> None:
        """Give back what the load read and freed: the mapped file's pages, the C heap's free pages."""
        self.compiled.release_pages()
        return_freed_heap()

    @property
    def _executors(self) -> list:
        """The executors ``run`` uses for the first program, in order (a merged integer program
        stands for the subgraphs it covers; a joined step, :mod:`.joined`, for its parts' executors)."""
        steps = self._live()[0].steps
        return [part.executor for step in steps
                for part in (step.executor.parts if isinstance(step.executor, joined.Joined) else [step])]

    # --- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Free the ONNX Runtime sessions and integer programs now, not when the garbage collector
        finds them (a server swapping models, a notebook loading many); the description
        (``get_inputs``, ``compiled``) stays.  Closing twice is fine; running a closed session is
        ``NPF_RUNTIME_CLOSED``."""
        programs, self._programs, self._one_run, self._frame = self._programs, [], None, None
        for program in programs:  # the steps hold bound methods of their program: break the cycle
            program.steps, program._executors = [], []
        return_freed_heap()

    def __reduce__(self) -> tuple:
        """Pickle as the ``.npuf`` path (or the in-memory compiled model) and the options, opened
        again on the other side (a ``multiprocessing`` worker; ONNX Runtime's sessions do not
        pickle, nor a memory-mapped file's reader); listeners stay here."""
        options = self._options
        if self.compiled.source is not None and self.compiled.packed:
            options = {**options, "model": self.compiled.name}  # the packed file's entry this Session runs
        return _reopened, (self.compiled.source or self.compiled, options)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _live(self) -> list["_Program"]:
        """The programs, or ``NPF_RUNTIME_CLOSED`` after :meth:`close`."""
        if not self._programs:
            raise NpuflowError("NPF_RUNTIME_CLOSED", path=str(self.compiled.source or self.compiled.name))
        return self._programs

    # --- description ------------------------------------------------------------------------

    def get_inputs(self) -> list[TensorInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorInfo]:
        return list(self._outputs)

    def runners(self) -> list[Runner]:
        """One VART-style runner per subgraph, in execution order."""
        return [Runner(self, k) for k in range(len(self._subgraphs))]

    # --- listeners --------------------------------------------------------------------------

    def add_listener(self, fn: Listener) -> None:
        with self._listener_lock:
            self._listeners = [*self._listeners, fn]

    def remove_listener(self, fn: Listener) -> None:
        with self._listener_lock:
            self._listeners = [f for f in self._listeners if f is not fn]

    # --- running ----------------------------------------------------------------------------

    @property
    def input_shapes(self) -> list[dict[str, list[int]]]:
        """The compiled shape sets (one per program; several for a ``.npuf`` compiled with
        repeated ``--input-shape``)."""
        return self.compiled.input_shapes

    def select(self, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """The program :meth:`run` uses for inputs of these shapes: the one with the fewest input
        elements among those at least as large in every dimension; dimensions that all programs
        share must match exactly.  ``NPF_RUNTIME_INPUT_SHAPE`` / ``NPF_RUNTIME_SHAPE_TOO_LARGE``."""
        for t in self._inputs:
            got = tuple(shapes[t.name])
            fixed = self._fixed_dims[t.name]
            if len(got) != len(t.shape) or any(got[k] != t.shape[k] for k in fixed):
                expected = "x".join("?" if k not in fixed else str(d) for k, d in enumerate(t.shape))
                raise NpuflowError("NPF_RUNTIME_INPUT_SHAPE", name=t.name, got=list(got), resize=RESIZE_ONE,
                                   expected=expected if len(self._programs) > 1 else list(t.shape))
        if len(self._programs) == 1:  # every dimension is fixed, and matched above
            return 0
        fits = [k for k, p in enumerate(self._programs)
                if all(g <= d for name, shape in shapes.items() for g, d in zip(shape, p.inputs[name]))]
        if not fits:
            raise NpuflowError("NPF_RUNTIME_SHAPE_TOO_LARGE", got=shape_sets_text([dict(shapes)]),
                               shapes=shape_sets_text(self.input_shapes), resize=RESIZE_SETS)
        return min(fits, key=lambda k: (self._programs[k].elements, k))

    def _validate(self, inputs: Mapping[str, np.ndarray]) -> tuple["_Program", dict[str, np.ndarray]]:
        """The program to run and its feeds: inputs checked, and padded with zeros at the end of
        every dimension that is smaller than the program's (several compiled shapes only).

        Called once per frame, so the common case (arrays of the compiled dtypes and shapes, one
        program) costs a dictionary walk: the expected dtypes are built at load, and ``select``
        runs only when a shape differs from the first program's."""
        dtypes = self._dtypes
        if type(inputs) is not dict and not isinstance(inputs, Mapping):  # a list of arrays: no names to check
            raise NpuflowError("NPF_RUNTIME_BAD_FEED", got=type(inputs).__name__, inputs=", ".join(dtypes))
        for name in inputs:
            if name not in dtypes:
                raise NpuflowError("NPF_RUNTIME_UNKNOWN_INPUT", name=name, inputs=", ".join(dtypes))
        shapes = self._live()[0].inputs
        same = True
        for name, dtype in dtypes.items():
            if name not in inputs:
                raise NpuflowError("NPF_RUNTIME_MISSING_INPUT", name=name, inputs=", ".join(dtypes))
            a = inputs[name]
            if not isinstance(a, np.ndarray) or a.dtype != dtype:
                got = str(a.dtype) if isinstance(a, np.ndarray) else \
                    f"{type(a).__module__.split('.')[0]}.{type(a).__name__}, not a numpy array (x.numpy(), np.asarray(x))"
                raise NpuflowError("NPF_RUNTIME_INPUT_DTYPE", name=name, got=got, expected=str(dtype))
            same = same and a.shape == shapes[name]
        program = self._programs[0 if same else self.select({name: inputs[name].shape for name in dtypes})]
        feeds = {}
        for name, want in program.inputs.items():
            feeds[name] = np.ascontiguousarray(padded(inputs[name], want))
        return program, feeds

    def _run_subgraph(self, k: int, feeds: dict[str, np.ndarray], dump=None,
                      program: "_Program | None" = None) -> dict[str, np.ndarray]:
        program = program or self._live()[0]
        return self._run_step(merge.Step(program.executor(k), (k,), tuple(program.subgraphs[k]["inputs"])),
                              feeds, dump, program)

    def _run_step(self, step: merge.Step, feeds: dict[str, np.ndarray], dump, program: "_Program",
                  every: bool = False) -> dict[str, np.ndarray]:
        """Run one step; listeners get one event for it (subgraphs run as one program: the first
        one's id, their names joined by ``+``, ``subgraphs`` listing them).  A joined step
        (:mod:`.joined`) runs its parts with listeners, dump or ``every`` (each tensor a part makes)."""
        listeners = self._listeners
        if isinstance(step.executor, joined.Joined) and (listeners or dump is not None or every):
            env = dict(feeds)  # the parts, each its own event and tensors
            for part in step.executor.parts:
                env.update(self._run_step(part, {i: env[i] for i in part.inputs}, dump, program))
            return env
        if not listeners:
            return step.executor.run(feeds, dump)
        start = time.perf_counter_ns()
        result = step.executor.run(feeds, dump)
        end = time.perf_counter_ns()
        sgs = [program.subgraphs[k] for k in step.indices]
        event = SubgraphEvent(step.indices[0], "+".join(sg["name"] for sg in sgs), sgs[0]["device"],
                              sgs[0]["engine"], threading.get_ident(), start, end, step.indices)
        for fn in listeners:
            fn(event)
        return result

    def run_subgraph(self, k: int, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        """Run subgraph ``k`` of the first program alone on its inputs (manifest order); its outputs
        in order.  For hosts that schedule the subgraphs themselves (:mod:`npuflow.ort_export`)."""
        sg = self._subgraphs[k]
        if len(inputs) != len(sg["inputs"]):
            tensors = self.compiled.manifest["tensors"]
            raise NpuflowError("NPF_RUNTIME_BAD_BUFFERS", runner=sg["name"], expected=len(sg["inputs"]), kind="input",
                               shapes=[(tensors[t]["shape"], tensors[t]["dtype"]) for t in sg["inputs"]],
                               got=len(inputs))
        result = self._run_subgraph(k, {name: np.ascontiguousarray(a) for name, a in zip(sg["inputs"], inputs)})
        return tuple(result[name] for name in sg["outputs"])

    def run(self, inputs: Mapping[str, np.ndarray], output_names: str | Sequence[str] | None = None,
            *, dump_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
        """Run the model; returns ``{output name: array}`` (all outputs unless ``output_names``).

        ``inputs``: ``{input name: numpy array}`` of each input's dtype and compiled shape
        (:meth:`get_inputs`); ``output_names``: one name or a list; ``dump_dir``: write every
        integer tensor there (dump mode, in the module docstring), for layer-by-layer comparison.

        A model compiled for several shape sets runs the smallest that fits the inputs
        (:meth:`select`) on the inputs padded with zeros at the end of each smaller dimension, and
        returns that program's outputs whole: where an output dimension follows a padded input
        dimension (an OCR line's time steps), its last positions are computed from the padding.
        """
        if self._coverage is not None:
            self._coverage.observe(inputs)
        frame = self._frame
        if frame is not None and output_names is None and dump_dir is None and not self._listeners:
            outputs = frame(inputs)
            if outputs is not None:
                return outputs
        program, env = self._validate(inputs)
        if output_names is not None:
            output_names = self._check_output_names(output_names, program)
        # a boundary tensor asked for by name: every tensor kept to the end, joined steps run as their parts
        keep_all = output_names is not None and not program.outputs.issuperset(output_names)
        if dump_dir is None and not self._listeners and not keep_all:  # the common frame: executors called directly
            for step, dead in zip(program.steps, program.frees):
                env.update(step.executor.run({i: env[i] for i in step.inputs}))
                for name in dead:
                    del env[name]
            return {n: env[n] for n in output_names or self._output_names}
        dumped: dict[str, str] = {}
        dump = None
        if dump_dir is not None:
            out_dir = Path(dump_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            used: set[str] = set()

            def dump(name: str, value: np.ndarray) -> None:
                base = _safe_name(name)
                fname, k = base, 1
                while fname in used:
                    k += 1
                    fname = f"{base}.{k}"
                used.add(fname)
                np.save(out_dir / f"{fname}.npy", np.ascontiguousarray(value))
                dumped[name] = f"{fname}.npy"

        for step in program.steps:
            env.update(self._run_step(step, {i: env[i] for i in step.inputs}, dump, program, keep_all))
        if dump_dir is not None:
            write_atomic(Path(dump_dir) / "index.json", json.dumps(dumped, indent=1, sort_keys=True))
        return {n: env[n] for n in output_names or self._output_names}

    def input_coverage(self) -> list[InputCoverage]:
        """Per quantized float input, the values :meth:`run` was fed and how many of them lay outside
        the range the input's quantize step represents (clipped: inputs wider than the calibration
        samples); ``.warning()`` is the ``NPF_RUNTIME_INPUT_SATURATED`` to show, or None."""
        return [] if self._coverage is None else self._coverage.report()

    def _check_output_names(self, output_names: str | Sequence[str], program: "_Program") -> list[str]:
        """``output_names`` as a list: a single name may be given as a string (iterating it would
        ask for one output per character).  A model output or a tensor between two subgraphs (the
        boundary tensors a debugger asks for) is known; any other name is
        ``NPF_RUNTIME_UNKNOWN_OUTPUT`` before anything runs (it was a ``KeyError`` after the run)."""
        names = [output_names] if isinstance(output_names, str) else list(output_names)
        known = set(self._output_names).union(*({*sg["inputs"], *sg["outputs"]} for sg in program.subgraphs))
        for name in names:
            if name not in known:
                raise NpuflowError("NPF_RUNTIME_UNKNOWN_OUTPUT", name=name, outputs=", ".join(self._output_names))
        return names

    def run_op(self, name: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one accelerator op (named by its core ONNX node) on given integer inputs.

        Returns ``{output tensor: array}``.  This is the layer-wise mode of rknn-toolkit2's
        accuracy analysis and of Vitis AI's per-layer dump comparison: fed the inputs a reference
        (ONNX Runtime on the quantized ONNX) computed for it, an op's outputs show its own
        arithmetic error, not the error it inherits from the ops before it.
        """
        executor, op = self._find_op(name)
        return executor.run_op(name, self._validate_op_inputs(op, inputs))

    def _find_op(self, name: str) -> tuple[IntegerExecutor, dict]:
        program = self._live()[0]
        executors = [program.executor(k) for k in range(len(self._subgraphs))]
        for sg, ex in zip(self._subgraphs, executors):
            if isinstance(ex, IntegerExecutor) and name in ex.op_index:
                return ex, sg["ops"][ex.op_index[name]]
        ops = [n for ex in executors if isinstance(ex, IntegerExecutor) for n in ex.op_index]
        raise NpuflowError("NPF_RUNTIME_UNKNOWN_OP", name=name, count=len(ops), some=", ".join(ops[:5]))

    def _validate_op_inputs(self, op: dict, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The op's inputs, checked against the compiled tensors (the same codes as :meth:`run`)."""
        tensors = self.compiled.manifest["tensors"]
        feeds = {}
        for t in op["inputs"]:
            if t not in inputs:
                raise NpuflowError("NPF_RUNTIME_MISSING_INPUT", name=t, inputs=", ".join(op["inputs"]))
            a, info = inputs[t], tensors[t]
            dtype = getattr(a, "dtype", None)
            if not isinstance(a, np.ndarray) or dtype != np.dtype(info["dtype"]):
                raise NpuflowError("NPF_RUNTIME_INPUT_DTYPE", name=t, expected=info["dtype"],
                                   got=str(dtype) if dtype is not None else type(a).__name__)
            if tuple(a.shape) != tuple(info["shape"]):
                raise NpuflowError("NPF_RUNTIME_INPUT_SHAPE", name=t, got=list(a.shape), expected=list(info["shape"]),
                                   resize=RESIZE_ONE)
            feeds[t] = np.ascontiguousarray(a)
        return feeds
